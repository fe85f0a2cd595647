"""Compare tab: the blind arena (the default for votes) and the named mode, one prompt in side-by-side streamed
columns (Prompting, RAG, adapters) for inspection, with named votes between any two columns."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from typing import Any

import gradio as gr

from loradock.ui.arena import build_arena
from loradock.ui.client import ServerClient, StreamResult, split_models
from loradock.ui.sides import Side, passages_markdown, stream_sides, versions

log = logging.getLogger(__name__)
MAX_ADAPTER_COLUMNS = 3
DEFAULT_SYSTEM = ("You are the support assistant for the Zephyr-9 robot vacuum. Answer the customer's "
                  "question in one or two sentences.")
VERDICTS = {"a": "A better", "b": "B better", "tie": "Tie", "both_bad": "Both bad"}
MODES = ("Blind arena (vote)", "Named (inspect)")
__all__ = ["passages_markdown", "plan_sides", "preference", "build_compare_tab"]


def plan_sides(prompt: str, system: str, base: str, adapters: list[str], collection: str,
               top_k: int) -> list[Side]:
    """The columns for a prompt: Prompting (base + system prompt), RAG (base + retrieval), then adapters."""
    user = [{"role": "user", "content": prompt}]
    system, collection = (system or "").strip(), (collection or "").strip()
    sides = [Side("Prompting", "prompting", base,
                  ([{"role": "system", "content": system}] if system else []) + user)]
    if collection:
        sides.append(Side("RAG", "rag", base, user, {"collection": collection, "top_k": int(top_k)}))
    sides += [Side(f"Adapter: {name}", "adapter", name, user) for name in adapters[:MAX_ADAPTER_COLUMNS]]
    return sides


def preference(verdict: str, a: dict[str, Any], b: dict[str, Any], prompt: str,
               annotator: str | None) -> dict[str, Any]:
    """The POST /v1/feedback body for a named vote between sides ``a`` and ``b``: the winner is ``chosen``
    (side A on a tie)."""
    chosen, rejected = (b, a) if verdict == "b" else (a, b)

    def context(side: dict[str, Any]) -> dict[str, Any]:
        return {k: side.get(k) for k in ("label", "system", "passages", "latency_s", "completion_tokens")}

    return {"prompt": [{"role": "user", "content": prompt}], "chosen": chosen["text"], "rejected": rejected["text"],
            "verdict": verdict, "chosen_model": chosen["model"], "rejected_model": rejected["model"],
            "chosen_approach": chosen["approach"], "rejected_approach": rejected["approach"],
            "chosen_version": chosen.get("version"), "rejected_version": rejected.get("version"),
            "annotator": (annotator or "").strip() or None, "blind": False, "shown_order": [a["label"], b["label"]],
            "meta": {"source": "ui.compare", "a": a["label"], "b": b["label"],
                     "chosen": context(chosen), "rejected": context(rejected)}}


def build_compare_tab(client: ServerClient, models: gr.State, collection_default: str = "faq") -> None:
    """Lay out the Compare tab inside the current Blocks: the blind arena first, the named mode beside it."""
    mode = gr.Radio(list(MODES), value=MODES[0], label="Mode", elem_id="compare-mode",
                    info="Blind: two anonymous answers, revealed after your vote. Named: inspect every approach.")
    with gr.Column(visible=True) as arena:
        build_arena(client, models, collection_default)
    with gr.Column(visible=False) as named:
        _build_named(client, models, collection_default)
    mode.change(lambda m: (gr.Column(visible=m == MODES[0]), gr.Column(visible=m != MODES[0])), mode,
                [arena, named])


def _build_named(client: ServerClient, models: gr.State, collection_default: str) -> None:
    prompt = gr.Textbox(label="Prompt", lines=2, placeholder="Ask one question; every column answers it",
                        elem_id="compare-prompt")
    with gr.Row():
        system = gr.Textbox(label="System prompt (Prompting column)", value=DEFAULT_SYSTEM, lines=2, scale=3)
        adapters = gr.Dropdown(label=f"Adapters (up to {MAX_ADAPTER_COLUMNS})", choices=[], multiselect=True,
                               max_choices=MAX_ADAPTER_COLUMNS, scale=2, elem_id="compare-adapters")
    with gr.Row():
        collection = gr.Textbox(label="RAG collection (empty: no RAG column)", value=collection_default)
        top_k = gr.Slider(1, 10, value=4, step=1, label="RAG top_k")
        temperature = gr.Slider(0.0, 2.0, value=0.0, step=0.05, label="temperature")
        max_tokens = gr.Slider(8, 512, value=128, step=8, label="max_tokens", elem_id="compare-max-tokens")
    run = gr.Button("Run", variant="primary", elem_id="compare-run")

    columns, headers, answers, stats = [], [], [], []
    with gr.Row(equal_height=False):
        for i in range(2 + MAX_ADAPTER_COLUMNS):
            with gr.Column(min_width=220, visible=i < 2) as col:
                headers.append(gr.Markdown(["### Prompting", "### RAG"][i] if i < 2 else "### Adapter"))
                answers.append(gr.Markdown(elem_id=f"compare-answer-{i}", elem_classes="compare-answer"))
                stats.append(gr.Markdown(elem_id=f"compare-stats-{i}"))
                if i == 1:
                    passages = gr.Markdown(elem_id="compare-passages")
            columns.append(col)

    gr.Markdown("#### Vote between two columns")
    with gr.Row():
        side_a = gr.Dropdown(label="Side A", choices=[], elem_id="vote-side-a")
        side_b = gr.Dropdown(label="Side B", choices=[], elem_id="vote-side-b")
        annotator = gr.Textbox(label="Annotator (optional)")
    with gr.Row():
        buttons = {v: gr.Button(label, elem_id=f"vote-{v}") for v, label in VERDICTS.items()}
    vote_status = gr.Markdown(elem_id="vote-status")
    last_run = gr.State({})

    def on_run(text: str, system_prompt: str, chosen_adapters: list[str] | None, rag_collection: str,
               k: float, temp: float, max_new: float, listing: list[dict[str, Any]]) -> Iterator[list[Any]]:
        base, _ = split_models(listing or [])
        text = (text or "").strip()
        problem = ("The server lists no models; is it running? Press Refresh models." if base is None
                   else "Type a prompt first." if not text else None)
        if problem:
            yield [gr.update()] * (len(columns) * 4 + 4) + [problem]
            return
        sides = plan_sides(text, system_prompt, base, list(chosen_adapters or []), rag_collection, int(k))
        ver = versions(listing or [])
        sides = [dataclasses.replace(s, version=ver.get(s.model)) if s.approach == "adapter" else s for s in sides]
        slots = _slots(sides)
        visible = [gr.Column(visible=slots[i] is not None) for i in range(len(columns))]
        titles = [f"### {sides[s].label}\n`{sides[s].model}`" if s is not None else gr.update()
                  for s in slots]
        results: list[StreamResult] = [StreamResult() for _ in sides]
        for results in stream_sides(client, sides, temp, int(max_new)):
            yield _paint(sides, slots, results, visible, titles, text, final=False)
        yield _paint(sides, slots, results, visible, titles, text, final=True)

    def on_vote(verdict: str, a: str | None, b: str | None, who: str | None,
                state: dict[str, Any]) -> tuple[str, Any]:
        sides = state.get("sides", {})
        if not sides:
            return "Run a prompt first, then vote.", gr.update()
        if a not in sides or b not in sides or a == b:
            return "Pick two different columns as Side A and Side B.", gr.update()
        pair = sorted([str(a), str(b)])
        if pair in state.get("voted", []):  # a double click must not count twice
            return f"Already voted on {a} vs {b} for this run; run again or pick another pair.", gr.update()
        try:
            ack = client.vote(preference(verdict, sides[a], sides[b], state["prompt"], who))
        except RuntimeError as e:
            return f"Not stored: {e}", gr.update()
        state = {**state, "voted": [*state.get("voted", []), pair]}
        return f"Stored `{ack['id']}`: **{VERDICTS[verdict]}** (A = {a}, B = {b}).", state

    outputs = [*columns, *headers, *answers, *stats, passages, last_run, side_a, side_b, vote_status]
    inputs = [prompt, system, adapters, collection, top_k, temperature, max_tokens, models]
    run.click(on_run, inputs, outputs)
    prompt.submit(on_run, inputs, outputs)
    for verdict, button in buttons.items():
        button.click(lambda a, b, who, state, v=verdict: on_vote(v, a, b, who, state),
                     [side_a, side_b, annotator, last_run], [vote_status, last_run])
    def on_models(listing: list[dict[str, Any]], current: list[str] | None) -> Any:
        names = split_models(listing or [])[1]
        return gr.Dropdown(choices=names, value=[c for c in current or [] if c in names])

    models.change(on_models, [models, adapters], adapters)


def _slots(sides: list[Side]) -> list[int | None]:
    """Which side each of the fixed columns shows: 0 Prompting, 1 RAG, then the adapters."""
    slots: list[int | None] = [None] * (2 + MAX_ADAPTER_COLUMNS)
    adapter_col = 2
    for i, side in enumerate(sides):
        if side.approach == "prompting":
            slots[0] = i
        elif side.approach == "rag":
            slots[1] = i
        else:
            slots[adapter_col] = i
            adapter_col += 1
    return slots


def _paint(sides: list[Side], slots: list[int | None], results: list[StreamResult], visible: list[Any],
           titles: list[Any], prompt: str, final: bool) -> list[Any]:
    answers = [(results[s].text or ("*(no answer)*" if results[s].done else "...")) if s is not None else ""
               for s in slots]
    stats = [results[s].stats_line() if s is not None else "" for s in slots]
    rag = slots[1]
    passages = passages_markdown(results[rag].passages) if rag is not None else ""
    if not final:
        return [*visible, *titles, *answers, *stats, passages, gr.update(), gr.update(), gr.update(),
                "Streaming..."]
    state = {"prompt": prompt, "sides": {
        s.label: {"label": s.label, "approach": s.approach, "model": s.model, "version": s.version, "text": r.text,
                  "system": next((m["content"] for m in s.messages if m["role"] == "system"), None),
                  "passages": r.passages, "latency_s": round(r.latency_s, 3),
                  "completion_tokens": r.completion_tokens}
        for s, r in zip(sides, results, strict=True) if not r.error}}
    labels = list(state["sides"])
    a = gr.Dropdown(choices=labels, value=labels[0] if labels else None)
    b = gr.Dropdown(choices=labels, value=labels[-1] if len(labels) > 1 else None)
    status = "Done. Pick Side A and Side B, then vote." if len(labels) > 1 else "Need two answers to vote."
    return [*visible, *titles, *answers, *stats, passages, state, a, b, status]
