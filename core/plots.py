"""The loss-curve figure, drawn the same for the PNG a training run publishes and for the UI's plots."""

from __future__ import annotations

from typing import Any


def loss_figure(curves: dict[str, list[list[float]]], title: str, size: tuple[float, float] = (7, 2.8)) -> Any:
    """Train and validation loss (``{"train_loss": [[step, loss], ...], "val_loss": [...]}``, the manifest's
    keys) as one matplotlib figure, with no pyplot state."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=100)
    ax = fig.add_subplot()
    for key, label, style in (("train_loss", "train", "-"), ("val_loss", "validation", "o-")):
        points = curves.get(key) or []
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], style, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend()
    fig.tight_layout()
    return fig
