"""Supervised fine-tuning of a LoRA adapter with TRL's SFTTrainer, on core's template, loss on assistant
tokens only. One linear run, as alignment-handbook's ``run_sft.py``."""

from __future__ import annotations

import logging
from pathlib import Path

from loradock.core.settings import Settings
from loradock.train import common
from loradock.train.config import TrainConfig
from loradock.train.masking import tokenize_conversation
from loradock.train.runner import start_run, train_and_publish

log = logging.getLogger(__name__)


def run_sft(cfg: TrainConfig, settings: Settings | None = None) -> Path:
    """Train, keep the best checkpoint, publish to the store; return the adapter folder."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    ctx, resume_from = start_run(cfg, settings)

    # --- tokenizer and data: checked, split, rendered through core's template, assistant-only labels
    tokenizer = common.load_tokenizer(ctx.base.path)
    data = common.prepare_data(ctx, tokenizer)

    def tokenized(rows: list) -> Dataset:
        return Dataset.from_list([tokenize_conversation(tokenizer, r.data["messages"]) for r in rows])

    train_ds, val_ds = tokenized(data.train), (tokenized(data.val) if data.val else None)

    # --- model: the frozen base (float or NF4); SFTTrainer wraps it with the LoRA config
    model = common.load_model(ctx.base.path, cfg.quantization)

    # --- trainer: eval on a schedule, early stopping, best checkpoint kept
    # The rows are pre-tokenized with labels, so TRL adds no template, EOS or masking of its own.
    args = SFTConfig(**common.trainer_kwargs(ctx, len(train_ds), val_ds is not None), packing=False)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=val_ds,
        processing_class=tokenizer,
        peft_config=common.lora_config(cfg),
        callbacks=common.callbacks(cfg, val_ds is not None),
    )
    common.log_trainable(trainer.model)

    # --- train (optionally resuming), evaluate the kept model, publish
    return train_and_publish(trainer, ctx, data, resume_from, len(train_ds))
