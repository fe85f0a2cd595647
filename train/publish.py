"""Publishing a trained adapter: PEFT files + manifest + loss-curve PNG into the store, atomically,
then the same validation the server runs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from loradock.core.manifest import BaseIdentity, Manifest, Provenance
from loradock.core.plots import loss_figure
from loradock.core.store import AdapterStore
from loradock.core.template import template_sha256
from loradock.core.validate import AdapterInvalid, ValidationLimits, validate_adapter
from loradock.train.common import Context, PreparedData, world

log = logging.getLogger(__name__)
PLOT_FILE = "loss_curve.png"


def loss_curves(log_history: list[dict[str, Any]]) -> dict[str, list[list[float]]]:
    """Train and validation loss as [step, loss] pairs from a Trainer's ``state.log_history``."""
    train = [[e["step"], round(float(e["loss"]), 5)] for e in log_history if "loss" in e and "step" in e]
    val = [[e["step"], round(float(e["eval_loss"]), 5)] for e in log_history if "eval_loss" in e and "step" in e]
    return {"train_loss": train, "val_loss": val}


def plot_losses(curves: dict[str, list[list[float]]], title: str, out: Path) -> None:
    """Write the loss curves as a PNG (matplotlib's Agg canvas, no pyplot global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = loss_figure(curves, title, size=(6, 3.5))
    FigureCanvasAgg(fig)
    fig.savefig(out)


def training_metrics(
    trainer: Any, history: list[dict[str, Any]], final_eval: dict[str, float], steps_planned: int
) -> dict[str, Any]:
    """What the manifest records: loss curves (``history`` = log_history before the final evaluation), best
    checkpoint, whether early stopping fired, and the final evaluation of the kept model."""
    state = trainer.state
    best_step = None
    if state.best_model_checkpoint:
        best_step = int(Path(state.best_model_checkpoint).name.split("-")[-1])
    return {
        **loss_curves(history),
        "steps": state.global_step,
        "steps_planned": steps_planned,
        "stopped_early": state.global_step < steps_planned,
        "epochs": round(float(state.epoch or 0), 3),
        "best_step": best_step,
        "best_val_loss": state.best_metric,
        "eval": {
            k: round(float(v), 5)
            for k, v in final_eval.items()
            if isinstance(v, int | float) and "runtime" not in k and "per_second" not in k
        },
    }


def publish_adapter(ctx: Context, model: Any, data: PreparedData, metrics: dict[str, Any]) -> Path:
    """Save the PEFT adapter (safetensors) with its manifest and plot, publish it, and validate it.

    With several training processes only rank 0 publishes; the others return the same folder.
    """
    cfg = ctx.cfg
    store = AdapterStore(ctx.adapters_dir)
    rank, world_size = world()
    if rank != 0:
        log.info("rank %d of %d: rank 0 publishes %s", rank, world_size, cfg.name)
        return store.path(cfg.name)
    manifest = Manifest(
        name=cfg.name,
        base=BaseIdentity(name=ctx.base.name, sha256=ctx.base.sha256),
        template_sha256=template_sha256(),
        rank=cfg.lora_r,
        alpha=float(cfg.lora_alpha),
        target_modules=list(cfg.target_modules),
        provenance=Provenance(
            method=cfg.method,
            recipe=cfg.resolved(),
            data_sha256=data.sha256,
            data_rows=len(data.train) + len(data.val),
            world_size=world_size,
        ),
        metrics={
            **metrics,
            "train_rows": len(data.train),
            "val_rows": len(data.val),
            "dropped_rows": data.dropped,
            "eval_data_sha256": data.eval_sha256,
        },
        description=cfg.description,
    )
    limits = ValidationLimits(max_rank=ctx.settings.max_lora_rank, max_bytes=ctx.settings.max_adapter_bytes)

    def validate(folder: Path, name: str) -> Manifest:
        return validate_adapter(folder, ctx.base, limits, name=name)

    with store.staging(cfg.name) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True, save_embedding_layers=False)
        (tmp / "README.md").unlink(missing_ok=True)  # PEFT's empty model card; the manifest says it all
        plot_losses(metrics, f"{cfg.name} ({cfg.method})", tmp / PLOT_FILE)
        try:  # a snapshot is validated first; a refused adapter is never visible in the store
            target = store.publish(tmp, manifest, overwrite=cfg.overwrite, limits=limits, validator=validate)
        except AdapterInvalid as e:
            raise AdapterInvalid(e.code, f"the trained adapter failed validation and was not published: "
                                         f"{e.message}") from e
    current = store.versions.current(cfg.name)
    log.info("adapter %s validated and published to %s (version %s)", cfg.name, target,
             current.number if current else "?")
    return target


def check_name_free(ctx: Context) -> None:
    """Fail before training, not after, when the adapter name is taken and --overwrite is not given."""
    store = AdapterStore(ctx.adapters_dir)
    if store.path(ctx.cfg.name).exists() and not ctx.cfg.overwrite:
        raise FileExistsError(
            f"adapter {ctx.cfg.name!r} already exists in {store.root}; pass --overwrite or pick a new --name"
        )
