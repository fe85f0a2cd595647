"""What SFT and DPO share: settings, data loading and splitting, tokenizer, base model, LoRA config,
trainer arguments, and checkpoint handling."""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loradock.core.base_model import BaseModelInfo, load_base_info
from loradock.core.settings import Settings, load_settings
from loradock.core.template import template_source
from loradock.train.config import RecipeError, TrainConfig
from loradock.train.data import (
    DataError,
    DataReport,
    Row,
    check_rows,
    data_sha256,
    read_records,
    read_split,
    usable_rows,
)
from loradock.train.masking import count_tokens

log = logging.getLogger(__name__)
RECIPE_FILE = "loradock-recipe.json"
# What torchrun (accelerate launch) and the MPI launchers set in every process they start.
_RANK_VARS = ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "MV2_COMM_WORLD_RANK")
_SIZE_VARS = ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")


def world() -> tuple[int, int]:
    """(rank, world size) of this training process; (0, 1) unless a launcher started several processes.

    Read from the launcher's environment, so it is right before the process group exists.
    """

    def first(names: tuple[str, ...], default: int) -> int:
        return next((int(os.environ[n]) for n in names if os.environ.get(n, "").isdigit()), default)

    return first(_RANK_VARS, 0), first(_SIZE_VARS, 1)


def is_main_process() -> bool:
    """True in the process that writes shared files (the output folder, the store): rank 0."""
    return world()[0] == 0


@dataclass
class Context:
    """Everything a run resolves before training: config, settings, base identity, paths."""

    cfg: TrainConfig
    settings: Settings
    base: BaseModelInfo
    adapters_dir: Path
    output_dir: Path


@dataclass
class PreparedData:
    """Train/validation rows after the data check, plus what the manifest records about them."""

    train: list[Row]
    val: list[Row]
    sha256: str
    dropped: dict[str, int] = field(default_factory=dict)
    eval_sha256: str | None = None


def resolve(cfg: TrainConfig, settings: Settings | None = None) -> Context:
    """Fill in paths from settings and check the recipe against the base and the server's limits."""
    settings = settings or load_settings()
    if cfg.data is None:
        raise RecipeError("--data is required (here or as `data:` in the recipe)")
    if cfg.name is None:
        raise RecipeError("--name is required when no --recipe file names the adapter")
    base_path = Path(cfg.base_model) if cfg.base_model else settings.base_model
    base = load_base_info(base_path, None if cfg.base_model else settings.served_base_name)
    if cfg.lora_r > settings.max_lora_rank:
        raise RecipeError(
            f"--lora-r {cfg.lora_r} is above the server's max LoRA rank {settings.max_lora_rank}; "
            f"pick --lora-r <= {settings.max_lora_rank} (or raise LORADOCK_MAX_LORA_RANK on the server)"
        )
    unknown = base.unknown_modules(cfg.target_modules)
    if unknown:
        raise RecipeError(f"--target-modules {unknown} do not exist in base {base.name}; "
                          f"choose from {base.projections()}")
    adapters_dir = Path(cfg.adapters_dir) if cfg.adapters_dir else settings.adapters_dir
    output_dir = Path(cfg.output_dir) if cfg.output_dir else Path("var/train") / cfg.name
    return Context(cfg, settings, base, adapters_dir, output_dir)


def load_tokenizer(base_path: Path) -> Any:
    """The base tokenizer with loradock's template installed, so TRL renders exactly like core."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(base_path))
    tokenizer.chat_template = template_source()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def check_file(path: Path, method: str, tokenizer: Any, max_length: int) -> DataReport:
    """`data check` on one file with the training tokenizer."""
    return check_rows(read_records(path), method, count_tokens(tokenizer), max_length, path)


def prepare_data(ctx: Context, tokenizer: Any) -> PreparedData:
    """Check the data (refusing or dropping bad rows), then take or split off the validation set."""
    cfg = ctx.cfg
    report = check_file(Path(cfg.data), cfg.method, tokenizer, cfg.max_length)
    rows, counts = usable_rows(report, cfg.drop_invalid)
    dropped = {k: v for k, v in counts.items() if v}
    eval_sha = None
    if cfg.eval_data:
        eval_report = check_file(Path(cfg.eval_data), cfg.method, tokenizer, cfg.max_length)
        val, _ = usable_rows(eval_report, cfg.drop_invalid)
        eval_sha = data_sha256(Path(cfg.eval_data))
        train = rows
    elif (given := read_split(Path(cfg.data), "validation")) is not None:
        val_report = check_rows(given, cfg.method, count_tokens(tokenizer), cfg.max_length, Path(cfg.data))
        val, _ = usable_rows(val_report, cfg.drop_invalid)
        train = rows
    else:
        train, val = split(rows, cfg.val_fraction, cfg.seed)
    if not train:
        raise DataError(f"{cfg.data}: no rows left to train on")
    log.info("data: %d train rows, %d validation rows", len(train), len(val))
    return PreparedData(train, val, data_sha256(Path(cfg.data)), dropped, eval_sha)


def split(rows: list[Row], fraction: float, seed: int) -> tuple[list[Row], list[Row]]:
    """Seeded hold-out split; at least one validation row when fraction > 0 and there are 2+ rows."""
    if fraction <= 0 or len(rows) < 2:
        return list(rows), []
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_val = min(len(rows) - 1, max(1, round(len(rows) * fraction)))
    val_idx = set(order[:n_val])
    return [r for i, r in enumerate(rows) if i not in val_idx], [r for i, r in enumerate(rows) if i in val_idx]


def load_model(base_path: Path, quantization: str) -> Any:
    """The base model in float32 (CPU) / bfloat16 (GPU), or 4-bit NF4 for QLoRA."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    gpu = torch.cuda.is_available()
    dtype = torch.bfloat16 if gpu and torch.cuda.is_bf16_supported() else torch.float32
    kwargs: dict[str, Any] = {"dtype": dtype}
    if quantization == "nf4":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
    model = AutoModelForCausalLM.from_pretrained(str(base_path), **kwargs)
    if quantization == "nf4":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return model


def lora_config(cfg: TrainConfig) -> Any:
    """A plain LoRA config: no modules_to_save, no new tokens, so the server can hot-swap it."""
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )


def trainable_summary(model: Any) -> tuple[int, int, str]:
    """(trainable, all, PEFT's print_trainable_parameters line) for a PEFT model."""
    trainable, total = model.get_nb_trainable_parameters()
    percent = 100 * trainable / total
    line = f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {percent:.4f}"
    return trainable, total, line


def log_trainable(model: Any) -> None:
    """Log the trainable-parameter line (as PEFT prints it, but through logging)."""
    log.info(trainable_summary(model)[2])


def total_steps(cfg: TrainConfig, n_train: int) -> int:
    """Optimizer steps the run will take (before any early stop)."""
    if cfg.max_steps > 0:
        return cfg.max_steps
    # Each data-parallel rank takes its own batch_size rows per step.
    per_epoch = math.ceil(math.ceil(n_train / (cfg.batch_size * world()[1])) / cfg.grad_accum)
    return max(1, math.ceil(per_epoch * cfg.epochs))


def trainer_kwargs(ctx: Context, n_train: int, has_val: bool) -> dict[str, Any]:
    """TrainingArguments shared by SFTConfig and DPOConfig."""
    import torch

    cfg = ctx.cfg
    steps = total_steps(cfg, n_train)
    every = cfg.eval_steps or max(1, steps // 8)
    gpu = torch.cuda.is_available()
    return {
        "output_dir": str(ctx.output_dir),
        "per_device_train_batch_size": cfg.batch_size,
        "per_device_eval_batch_size": cfg.batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "learning_rate": cfg.learning_rate,
        "num_train_epochs": cfg.epochs,
        "max_steps": cfg.max_steps,
        "lr_scheduler_type": cfg.lr_scheduler,
        "warmup_steps": cfg.warmup_steps,
        "weight_decay": cfg.weight_decay,
        "max_length": cfg.max_length,
        "logging_steps": min(cfg.logging_steps, every),
        "logging_first_step": True,
        "eval_strategy": "steps" if has_val else "no",
        "eval_steps": every,
        "save_strategy": "steps",
        "save_steps": every,
        "save_total_limit": 2,
        "load_best_model_at_end": has_val,
        "metric_for_best_model": "eval_loss",
        "greater_is_better": False,
        "report_to": "none",
        "use_cpu": not gpu,
        "bf16": gpu and torch.cuda.is_bf16_supported(),
        "gradient_checkpointing": cfg.gradient_checkpointing,
        "seed": cfg.seed,
        "data_seed": cfg.seed,
        "dataloader_num_workers": 0,
        "disable_tqdm": False,
    }


def callbacks(cfg: TrainConfig, has_val: bool) -> list[Any]:
    """Early stopping on validation loss (needs a validation set); progress lines with --progress-file."""
    from transformers import EarlyStoppingCallback

    found: list[Any] = []
    if has_val and cfg.early_stopping_patience > 0:
        found.append(EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience))
    if cfg.progress_file:
        from loradock.train.progress import ProgressFile

        found.append(ProgressFile(cfg.progress_file))
    return found


def prepare_output_dir(ctx: Context) -> str | None:
    """With --resume: the last checkpoint to continue from. Without: a clean folder for a fresh run."""
    from transformers.trainer_utils import get_last_checkpoint

    out = ctx.output_dir
    recipe = ctx.cfg.resolved()
    comparable = {k: v for k, v in recipe.items() if k not in ("resume", "overwrite", "max_steps", "epochs")}
    if ctx.cfg.resume:
        last = get_last_checkpoint(str(out)) if out.is_dir() else None
        if last is None:
            log.warning("--resume: no checkpoint in %s; starting from scratch", out)
            return None
        saved = out / RECIPE_FILE
        if saved.is_file():
            before = json.loads(saved.read_text())
            changed = sorted(k for k, v in comparable.items() if before.get(k) != v)
            if changed:
                raise RecipeError(
                    f"--resume: {out} was trained with different {changed}; resume with the same recipe "
                    "or start fresh without --resume"
                )
        log.info("resuming from %s", last)
        return last
    if not is_main_process():  # rank 0 cleans and writes the folder; the trainer saves from rank 0 only
        return None
    if out.is_dir() and any(out.glob("checkpoint-*")):
        log.info("starting fresh: removing old checkpoints in %s (pass --resume to continue them)", out)
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / RECIPE_FILE).write_text(json.dumps(comparable, indent=2, default=str))
    return None
