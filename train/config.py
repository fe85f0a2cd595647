"""Training recipes: one flat dataclass, loaded from YAML and overridden from the command line.

Every field is a recipe key and a ``--flag`` of the same name (``lora_r`` <-> ``--lora-r``); the help text of
each flag is the field's one-line doc. Checks live in ``__post_init__`` and name the flag to change, as in
litgpt's ``args.py``. Only configuration lives here; the trainers hold the behaviour.
"""

from __future__ import annotations

import dataclasses
import types
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from loradock.core.manifest import EMBEDDING_MODULES, check_name

Method = Literal["sft", "dpo"]
Quantization = Literal["none", "nf4"]
Scheduler = Literal["linear", "cosine", "constant", "constant_with_warmup"]
# TRL DPOTrainer's preference losses; its 'sft' term is added with rpo_alpha, not chosen here.
DpoLoss = Literal[
    "sigmoid",
    "ipo",
    "hinge",
    "robust",
    "exo_pair",
    "nca_pair",
    "bco_pair",
    "sppo_hard",
    "aot",
    "aot_unpaired",
    "apo_zero",
    "apo_down",
    "discopop",
    "sigmoid_norm",
]
METHODS: tuple[str, ...] = get_args(Method)


class RecipeError(ValueError):
    """A recipe or flag value that cannot be used; the message names the key/flag to change."""


def _key(default: Any, doc: str, **kw: Any) -> Any:
    """A recipe key with its one-line doc (shown as the flag's help)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"doc": doc, **kw})
    return field(default=default, metadata={"doc": doc, **kw})


@dataclass
class TrainConfig:
    """A resolved training recipe. Defaults follow the lesson: r 8, alpha 2r, LR 2e-4, 3 epochs."""

    method: Method = _key("sft", "Training method: sft or dpo (set by the command).", cli=False)
    data: str | None = _key(None, "Training data: JSONL, CSV, or a saved HF dataset folder.")
    eval_data: str | None = _key(None, "Validation data (default: split --val-fraction off --data).")
    name: str | None = _key(None, "Adapter name in the store (default: the recipe's file name).")
    description: str = _key("", "One line on what the adapter does (goes into the manifest).")
    base_model: str | None = _key(None, "Local HF base model folder (default: LORADOCK_BASE_MODEL).")
    adapters_dir: str | None = _key(None, "Adapter store to publish into (default: LORADOCK_ADAPTERS_DIR).")
    output_dir: str | None = _key(None, "Checkpoint folder (default: var/train/<name>).")
    lora_r: int = _key(8, "LoRA rank; 8-16 is plenty, and the server accepts at most LORADOCK_MAX_LORA_RANK.")
    lora_alpha: float | None = _key(None, "LoRA scaling alpha (default: 2 x --lora-r).")
    lora_dropout: float = _key(0.05, "Dropout on the LoRA input during training.")
    target_modules: list[str] = _key(["q_proj", "v_proj"], "Base modules that get LoRA matrices, comma separated.")
    quantization: Quantization = _key("none", "Base weights while training: none (float) or nf4 (QLoRA, bitsandbytes).")
    learning_rate: float = _key(2e-4, "Peak learning rate (2e-4 nudges a LoRA; larger shoves and forgets).")
    epochs: float = _key(3.0, "Passes over the training data (1-3; more mostly memorises).")
    max_steps: int = _key(-1, "Stop after this many optimizer steps; overrides --epochs when > 0.")
    batch_size: int = _key(8, "Rows per device per step.")
    grad_accum: int = _key(1, "Steps to accumulate before each optimizer update.")
    max_length: int = _key(256, "Longest row in tokens; `data check` flags longer rows instead of truncating.")
    lr_scheduler: Scheduler = _key("linear", "Learning-rate schedule: linear, cosine, constant, constant_with_warmup.")
    warmup_steps: int = _key(0, "Optimizer steps of linear warm-up.")
    weight_decay: float = _key(0.0, "AdamW weight decay.")
    val_fraction: float = _key(0.1, "Share of --data held out for validation when no --eval-data is given.")
    eval_steps: int = _key(0, "Evaluate (and checkpoint) every N steps; 0 picks about 8 evaluations per run.")
    early_stopping_patience: int = _key(3, "Stop after N evaluations without a better val loss; 0 disables.")
    logging_steps: int = _key(5, "Log the training loss every N steps.")
    seed: int = _key(42, "Seed for the split, the LoRA init and the data order (runs are reproducible).")
    beta: float = _key(0.1, "DPO only: how far the policy may move from the reference (higher = closer).")
    loss_type: DpoLoss = _key("sigmoid", "DPO only: TRL preference loss: sigmoid (DPO), ipo, hinge, apo_zero, ...")
    rpo_alpha: float = _key(0.0, "DPO only: weight of an SFT loss on the chosen answers added to it (RPO); 0 = off.")
    gradient_checkpointing: bool = _key(False, "Recompute activations to save memory (slower).")
    drop_invalid: bool = _key(False, "Drop rows that fail `data check` (and report counts) instead of refusing.")
    resume: bool = _key(False, "Continue from the last checkpoint in --output-dir.")
    overwrite: bool = _key(False, "Replace an adapter of the same name in the store.")
    progress_file: str | None = _key(None, "Append progress (step, loss) as JSON lines to this file (UI jobs).")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, _coerce(f.name, getattr(self, f.name), key_types()[f.name]))
        self._check()

    def _check(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise RecipeError(message)

        if self.name is not None:
            try:
                check_name(self.name)
            except ValueError as e:
                raise RecipeError(f"--name: {e}") from e
        need(self.lora_r > 0, "--lora-r must be positive")
        if self.lora_alpha is None:
            self.lora_alpha = float(2 * self.lora_r)
        need(self.lora_alpha > 0, "--lora-alpha must be positive")
        need(0 <= self.lora_dropout < 1, "--lora-dropout must be in [0, 1)")
        need(bool(self.target_modules), "--target-modules must name at least one module, e.g. q_proj,v_proj")
        bad = sorted(set(self.target_modules) & set(EMBEDDING_MODULES))
        need(
            not bad,
            f"--target-modules must not include {bad}: LoRA on embeddings saves full embedding copies that "
            "cannot be hot-swapped on a shared base; use attention/MLP projections such as q_proj,v_proj",
        )
        need(self.learning_rate > 0, "--learning-rate must be positive")
        need(self.epochs > 0, "--epochs must be positive")
        need(self.max_steps == -1 or self.max_steps > 0, "--max-steps must be positive (or -1 to use --epochs)")
        need(self.batch_size > 0, "--batch-size must be positive")
        need(self.grad_accum > 0, "--grad-accum must be positive")
        need(self.max_length >= 16, "--max-length must be at least 16 tokens")
        need(self.warmup_steps >= 0, "--warmup-steps must be >= 0")
        need(self.weight_decay >= 0, "--weight-decay must be >= 0")
        need(0 <= self.val_fraction <= 0.5, "--val-fraction must be in [0, 0.5]")
        need(self.eval_steps >= 0, "--eval-steps must be >= 0 (0 = automatic)")
        need(self.early_stopping_patience >= 0, "--early-stopping-patience must be >= 0 (0 disables it)")
        need(self.logging_steps > 0, "--logging-steps must be positive")
        need(self.beta > 0, "--beta must be positive")
        need(self.rpo_alpha >= 0, "--rpo-alpha must be >= 0 (0 = no SFT term)")

    def resolved(self) -> dict[str, Any]:
        """The recipe as plain data, every default filled in (what the manifest records)."""
        return dataclasses.asdict(self)


def flag(name: str) -> str:
    """The command-line flag of a recipe key."""
    return "--" + name.replace("_", "-")


def key_types() -> dict[str, Any]:
    """Resolved type of every recipe key (the annotations are strings under postponed evaluation)."""
    return get_type_hints(TrainConfig)


def base_type(tp: Any) -> tuple[Any, bool]:
    """(inner type, optional?) of ``X | None``."""
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def _coerce(name: str, value: Any, tp: Any) -> Any:
    """Turn YAML/CLI values into the field's type; YAML reads `2e-4` as a string, the CLI gives strings."""
    inner, optional = base_type(tp)
    if value is None:
        if optional:
            return None
        raise RecipeError(f"{flag(name)} needs a value")
    if get_origin(inner) is Literal:
        choices = get_args(inner)
        if value not in choices:
            raise RecipeError(f"{flag(name)} must be one of {', '.join(choices)}, got {value!r}")
        return value
    try:
        if get_origin(inner) is list:
            items = value.split(",") if isinstance(value, str) else list(value)
            return [str(v).strip() for v in items if str(v).strip()]
        if inner is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if inner is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        return inner(value)
    except (TypeError, ValueError) as e:
        raise RecipeError(f"{flag(name)}: expected {getattr(inner, '__name__', inner)}, got {value!r}") from e


def keys() -> list[dataclasses.Field]:
    """Recipe keys that are also command-line flags."""
    return [f for f in dataclasses.fields(TrainConfig) if f.metadata.get("cli", True)]


def find_recipe(recipe: str | Path, method: str) -> Path:
    """A recipe path, or the name of a shipped recipe under train/recipes/<method>/."""
    path = Path(recipe)
    if path.is_file():
        return path
    shipped = resources.files("loradock.train").joinpath("recipes", method, f"{path.stem}.yaml")
    if path.suffix in ("", ".yaml") and len(path.parts) == 1 and shipped.is_file():
        return Path(str(shipped))
    raise RecipeError(f"--recipe {recipe}: no such file (nor a shipped {method} recipe of that name)")


def load_recipe(path: Path) -> dict[str, Any]:
    """Read a flat YAML recipe; unknown keys are refused (a typo must not be silently ignored)."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise RecipeError(f"recipe {path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise RecipeError(f"recipe {path} must be a flat mapping of key: value")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise RecipeError(f"recipe {path}: unknown key(s) {unknown}; known keys: {', '.join(sorted(known))}")
    return data


def build_config(method: str, recipe: str | Path | None, overrides: dict[str, Any]) -> TrainConfig:
    """Defaults < recipe file < command-line overrides (None means 'not given')."""
    values: dict[str, Any] = {}
    if recipe is not None:
        path = find_recipe(recipe, method)
        values = load_recipe(path)
        folder = path.parent.name
        declared = values.get("method") or (folder if folder in METHODS else method)
        if declared != method:
            raise RecipeError(f"recipe {path} is a {declared} recipe; run `loradock train {declared}`")
        values.setdefault("name", path.stem)
    values.update({k: v for k, v in overrides.items() if v is not None})
    values["method"] = method
    if "lora_r" in overrides and overrides["lora_r"] is not None and overrides.get("lora_alpha") is None:
        # alpha follows a changed rank unless the user set it too: keeps the 2r rule of thumb.
        values.pop("lora_alpha", None)
    return TrainConfig(**values)
