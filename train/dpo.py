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
from loradock.train.runner import start_run, train_and_publish

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
    from trl import DPOConfig, DPOTrainer

    ctx, resume_from = start_run(cfg, settings)

    # --- tokenizer and data: checked, split; TRL renders with the installed core template
    tokenizer = common.load_tokenizer(ctx.base.path)
    data = common.prepare_data(ctx, tokenizer)
    train_ds = Dataset.from_list([r.data for r in data.train])
    val_ds = Dataset.from_list([r.data for r in data.val]) if data.val else None

    # --- model: the frozen base (float or NF4); DPOTrainer wraps it with the LoRA config
    model = common.load_model(ctx.base.path, cfg.quantization)

    # --- trainer: eval on a schedule, early stopping, best checkpoint kept
    # RPO: TRL's 'sft' term (mean NLL of the chosen tokens) weighted by rpo_alpha beside the preference loss
    losses, weights = [cfg.loss_type], [1.0]
    if cfg.rpo_alpha > 0:
        losses, weights = [*losses, "sft"], [*weights, cfg.rpo_alpha]
    args = DPOConfig(
        **common.trainer_kwargs(ctx, len(train_ds), val_ds is not None),
        beta=cfg.beta,
        loss_type=losses,
        loss_weights=weights,
    )
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

    # --- train (optionally resuming), evaluate the kept model, publish
    return train_and_publish(trainer, ctx, data, resume_from, len(train_ds))
