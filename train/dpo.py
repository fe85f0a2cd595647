"""Direct preference optimisation of a LoRA adapter with TRL's DPOTrainer. One linear run.

The tokenizer carries core's template, so TRL renders prompt and answers exactly as the server does; the
reference model is the base with the adapter switched off (no second copy in memory).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from loradock.core.settings import Settings
from loradock.core.template import encode
from loradock.train import common
from loradock.train.config import TrainConfig
from loradock.train.publish import check_name_free, publish_adapter, training_metrics

log = logging.getLogger(__name__)


def check_same_template(trainer: Any, tokenizer: Any, rows: list) -> None:
    """Guard against template drift: TRL's tokenized prompt must be core's encode() of the same prompt."""
    first = trainer.train_dataset[0]
    expected = encode(tokenizer, rows[0].data["prompt"], add_generation_prompt=True)
    if list(first["prompt_ids"]) != expected:
        raise RuntimeError("DPO tokenization differs from loradock's template; refusing to train a drifting adapter")


def run_dpo(cfg: TrainConfig, settings: Settings | None = None) -> Path:
    """Train on preference pairs, keep the best checkpoint, publish it; return the adapter folder."""
    from datasets import Dataset
    from transformers import set_seed
    from trl import DPOConfig, DPOTrainer

    ctx = common.resolve(cfg, settings)
    check_name_free(ctx)
    resume_from = common.prepare_output_dir(ctx)
    set_seed(cfg.seed)

    # --- tokenizer and data: checked, split; TRL renders with the installed core template
    tokenizer = common.load_tokenizer(ctx.base.path)
    data = common.prepare_data(ctx, tokenizer)
    train_ds = Dataset.from_list([r.data for r in data.train])
    val_ds = Dataset.from_list([r.data for r in data.val]) if data.val else None

    # --- model: the frozen base (float or NF4); DPOTrainer wraps it with the LoRA config
    model = common.load_model(ctx.base.path, cfg.quantization)

    # --- trainer: eval on a schedule, early stopping, best checkpoint kept
    args = DPOConfig(**common.trainer_kwargs(ctx, len(train_ds), val_ds is not None), beta=cfg.beta)
    trainer = DPOTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=val_ds,
        processing_class=tokenizer,
        peft_config=common.lora_config(cfg),
        callbacks=common.callbacks(cfg, val_ds is not None),
    )
    check_same_template(trainer, tokenizer, data.train)
    common.log_trainable(trainer.model)

    # --- train (optionally resuming) and evaluate the kept model
    trainer.train(resume_from_checkpoint=resume_from)
    history = list(trainer.state.log_history)
    final_eval = trainer.evaluate() if val_ds is not None else {}

    # --- publish
    metrics = training_metrics(trainer, history, final_eval, common.total_steps(cfg, len(train_ds)))
    return publish_adapter(ctx, trainer.model, data, metrics)
