"""Server-side matplotlib figures for the UI (no pyplot state): they render the same in any browser."""

from __future__ import annotations

from typing import Any


def loss_figure(curves: dict[str, list[list[float]]], title: str) -> Any:
    """Loss curves (``{"train": [[step, loss], ...], "validation": [...]}``) as one figure."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 2.8), dpi=100)
    ax = fig.add_subplot()
    for label, style in (("train", "-"), ("validation", "o-")):
        points = curves.get(label) or []
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
