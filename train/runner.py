"""The start and the end every training run shares (SFT and DPO keep their own linear middle)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loradock.core.settings import Settings
from loradock.train import common
from loradock.train.config import TrainConfig
from loradock.train.publish import check_name_free, publish_adapter, training_metrics


def start_run(cfg: TrainConfig, settings: Settings | None = None) -> tuple[common.Context, str | None]:
    """Resolve the recipe against the settings and the base, refuse a taken name, seed everything.

    Returns the context and the checkpoint to resume from (None for a fresh run).
    """
    from transformers import set_seed

    ctx = common.resolve(cfg, settings)
    check_name_free(ctx)
    resume_from = common.prepare_output_dir(ctx)
    set_seed(cfg.seed)
    return ctx, resume_from


def train_and_publish(trainer: Any, ctx: common.Context, data: common.PreparedData, resume_from: str | None,
                      n_train: int) -> Path:
    """Train (optionally resuming), evaluate the kept model, publish it; return the adapter folder."""
    trainer.train(resume_from_checkpoint=resume_from)
    history = list(trainer.state.log_history)
    final_eval = trainer.evaluate() if trainer.eval_dataset is not None else {}
    metrics = training_metrics(trainer, history, final_eval, common.total_steps(ctx.cfg, n_train))
    return publish_adapter(ctx, trainer.model, data, metrics)
