"""Leaderboard tab: Bradley-Terry ratings with 95% intervals and head-to-head win rates, from the server."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gradio as gr
import pandas as pd

from loradock.ui.client import ServerClient

LEVELS = {"Approaches": "approach", "Adapters": "adapter", "Adapter versions": "version"}
RATING_COLUMNS = ["rank", "name", "rating", "95% interval", "votes"]
PAIR_COLUMNS = ["A", "B", "votes", "A wins", "B wins", "ties", "A win rate", "95% interval"]


def clean_filters(annotator: str | None, prompt_set: str | None, since: str | None, until: str | None,
                  blind_only: bool) -> dict[str, Any]:
    """Query parameters for the server (empty fields left out)."""
    values = {"annotator": annotator, "prompt_set": prompt_set, "since": since, "until": until}
    out: dict[str, Any] = {k: v.strip() for k, v in values.items() if v and v.strip()}
    if blind_only:
        out["blind"] = "true"
    return out


def ratings_frame(board: dict[str, Any]) -> pd.DataFrame:
    """One row per competitor, best first."""
    rows = [[i, r["name"], r["rating"], f"{r['lower']:.0f} - {r['upper']:.0f}" if r["lower"] is not None else "",
             r["votes"]] for i, r in enumerate(board.get("ratings", []), 1)]
    return pd.DataFrame(rows, columns=RATING_COLUMNS)


def pairs_frame(board: dict[str, Any]) -> pd.DataFrame:
    """Votes per pair with the first one's win rate (ties count half) and its Wilson 95% interval."""
    rows = [[p["a"], p["b"], p["votes"], p["a_wins"], p["b_wins"], p["ties"], f"{p['a_win_rate']:.0%}",
             f"{p['lower']:.0%} - {p['upper']:.0%}"] for p in board.get("pairs", [])]
    return pd.DataFrame(rows, columns=PAIR_COLUMNS)


def ratings_plot(board: dict[str, Any]) -> Any:
    """Ratings with their intervals as horizontal error bars (matplotlib, no pyplot state)."""
    from matplotlib.figure import Figure

    rated = [r for r in board.get("ratings", []) if r["rating"] is not None][::-1]
    fig = Figure(figsize=(7, 0.5 + 0.45 * max(1, len(rated))), dpi=100)
    ax = fig.add_subplot()
    if rated:
        ys = range(len(rated))
        ax.errorbar([r["rating"] for r in rated], list(ys), fmt="o", capsize=4,
                    xerr=[[r["rating"] - r["lower"] for r in rated], [r["upper"] - r["rating"] for r in rated]])
        ax.set_yticks(list(ys), [r["name"] for r in rated])
    ax.set_xlabel("Bradley-Terry rating (95% interval)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def build_leaderboard_tab(client: ServerClient) -> tuple[Callable[..., Any], list[Any], list[Any]]:
    """Lay out the tab; returns (load function, its inputs, its outputs) so the app reloads it when opened."""
    with gr.Row():
        level = gr.Radio(list(LEVELS), value="Adapters", label="Rank", elem_id="board-level")
        blind_only = gr.Checkbox(value=True, label="Blind votes only", elem_id="board-blind")
    with gr.Row():
        annotator = gr.Textbox(label="Annotator")
        prompt_set = gr.Textbox(label="Prompt set")
        since = gr.Textbox(label="Since (YYYY-MM-DD)")
        until = gr.Textbox(label="Until (YYYY-MM-DD)")
    refresh = gr.Button("Refresh", elem_id="board-refresh")
    summary = gr.Markdown(elem_id="board-summary")
    ratings = gr.Dataframe(headers=RATING_COLUMNS, interactive=False, elem_id="board-ratings",
                           label="Ratings (Bradley-Terry, arena-rank)")
    plot = gr.Plot(label="Ratings with 95% intervals")
    pairs = gr.Dataframe(headers=PAIR_COLUMNS, interactive=False, elem_id="board-pairs",
                         label="Head to head (ties count half; Wilson 95% intervals)")
    inputs = [level, annotator, prompt_set, since, until, blind_only]

    def load(lv: str, who: str, tag: str, start: str, end: str, blind: bool) -> tuple[Any, ...]:
        try:
            board = client.leaderboard(clean_filters(who, tag, start, end, blind), LEVELS.get(lv, "adapter"))
        except RuntimeError as e:
            return f"**Cannot load the leaderboard:** {e}", gr.update(), gr.update(), gr.update()
        line = (f"**{board['votes']} votes** · {len(board['ratings'])} ranked · {board['method']}"
                if board["votes"] else "No votes match these filters yet: vote in Compare's blind arena.")
        return line, ratings_frame(board), ratings_plot(board), pairs_frame(board)

    outputs = [summary, ratings, plot, pairs]
    refresh.click(load, inputs, outputs)
    level.change(load, inputs, outputs)
    blind_only.change(load, inputs, outputs)
    return load, inputs, outputs
