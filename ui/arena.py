"""Blind arena (Compare's default for votes): two anonymous answers to the same prompt, sides drawn at random
each round, identities revealed after the vote. The user may continue the conversation with both sides before
voting; each side keeps its own history. Votes go to the server (POST /v1/feedback) with ``blind: true``, the
shown order and the prompt set.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from typing import Any

import gradio as gr

from loradock.ui.client import ServerClient, StreamResult, split_models
from loradock.ui.sides import Side, stream_sides, versions

BASE, PROMPTING, RAG, ADAPTER = "Base", "Prompting", "RAG", "Adapter: "
ARENA_SYSTEM = "Answer in one short sentence."
VERDICTS = {"a": "A is better", "b": "B is better", "tie": "Tie", "both_bad": "Both are bad"}
MAX_META_HISTORY_CHARS = 8000


def contender_labels(listing: list[dict[str, Any]], collection: str) -> list[str]:
    """Everything the arena can draw from: the base as is, prompted, with RAG, and every adapter."""
    base, adapters = split_models(listing or [])
    if base is None:
        return []
    return [BASE, PROMPTING] + ([RAG] if (collection or "").strip() else []) + [ADAPTER + a for a in adapters]


def contender(label: str, base: str, system: str, collection: str, top_k: int,
              adapter_versions: dict[str, str]) -> Side:
    """The side a label stands for (its ``messages`` hold only the system prompt, if any)."""
    if label == BASE:
        return Side(BASE, "base", base, [])
    if label == PROMPTING:
        system = (system or "").strip()
        return Side(PROMPTING, "prompting", base, [{"role": "system", "content": system}] if system else [])
    if label == RAG:
        return Side(RAG, "rag", base, [], {"collection": collection.strip(), "top_k": int(top_k)})
    name = label.removeprefix(ADAPTER)
    return Side(label, "adapter", name, [], version=adapter_versions.get(name))


def draw_pair(pool: list[str], rng: random.Random) -> tuple[str, str]:
    """Two different contenders in random order: the first is shown as A."""
    if len(set(pool)) < 2:
        raise ValueError("the arena needs at least two contenders; pick more (or leave the pool empty for all)")
    a, b = rng.sample(sorted(set(pool)), 2)
    return a, b


def _side_dict(side: Side) -> dict[str, Any]:
    return {"label": side.label, "approach": side.approach, "model": side.model, "system": side.messages,
            "rag": side.rag, "version": side.version}


def _side(d: dict[str, Any], history: list[dict[str, str]]) -> Side:
    return Side(d["label"], d["approach"], d["model"], [*d["system"], *history], d["rag"], d["version"])


def arena_record(verdict: str, state: dict[str, Any], annotator: str | None,
                 prompt_set: str | None) -> dict[str, Any]:
    """The POST /v1/feedback body for a vote: the winner's conversation is the prompt (side A on a tie)."""
    sides, histories = state["sides"], state["histories"]
    win = 1 if verdict == "b" else 0
    chosen, rejected = sides[win], sides[1 - win]
    prompt = histories[win][:-1]
    meta: dict[str, Any] = {"source": "ui.arena", "turns": state["turns"], "a": sides[0]["label"],
                            "b": sides[1]["label"]}
    if state["turns"] > 1:  # the other side answered earlier turns differently: keep its history as context
        other = histories[1 - win][:-1]
        if len(json.dumps(other)) <= MAX_META_HISTORY_CHARS:
            meta["rejected_history"] = other
    return {"prompt": prompt, "chosen": histories[win][-1]["content"], "rejected": histories[1 - win][-1]["content"],
            "verdict": verdict, "chosen_model": chosen["model"], "rejected_model": rejected["model"],
            "chosen_approach": chosen["approach"], "rejected_approach": rejected["approach"],
            "chosen_version": chosen["version"], "rejected_version": rejected["version"],
            "annotator": (annotator or "").strip() or None, "blind": True,
            "shown_order": [sides[0]["label"], sides[1]["label"]],
            "prompt_set": (prompt_set or "").strip() or None, "meta": meta}


def reveal(state: dict[str, Any]) -> str:
    """Who was who, once the vote is in."""
    def who(side: dict[str, Any]) -> str:
        version = f" (version {side['version']})" if side["version"] else ""
        return f"**{side['label']}**{version} · `{side['model']}`"

    return f"A was {who(state['sides'][0])} · B was {who(state['sides'][1])}"


def _chat(history: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{"role": m["role"], "content": m["content"]} for m in history]


def build_arena(client: ServerClient, models: gr.State, collection_default: str) -> None:
    """Lay out the blind arena inside the current Blocks."""
    with gr.Row():
        pool = gr.Dropdown(label="Contenders (empty: all)", choices=[], multiselect=True, scale=3,
                           elem_id="arena-pool")
        system = gr.Textbox(label="System prompt of the Prompting contender", value=ARENA_SYSTEM, scale=2,
                            elem_id="arena-system")
    with gr.Row():
        collection = gr.Textbox(label="RAG collection (empty: no RAG contender)", value=collection_default)
        top_k = gr.Slider(1, 10, value=4, step=1, label="RAG top_k")
        temperature = gr.Slider(0.0, 2.0, value=0.0, step=0.05, label="temperature")
        max_tokens = gr.Slider(8, 512, value=128, step=8, label="max_tokens", elem_id="arena-max-tokens")
    with gr.Row(equal_height=False):
        chat_a = gr.Chatbot(label="Model A", height=300, elem_id="arena-chat-a")
        chat_b = gr.Chatbot(label="Model B", height=300, elem_id="arena-chat-b")
    with gr.Row():
        message = gr.Textbox(label="Message to both", placeholder="Ask something and press Enter; ask again to "
                             "continue with both", scale=5, elem_id="arena-input")
        send = gr.Button("Send", variant="primary", scale=1, elem_id="arena-send")
        new_round = gr.Button("New round", scale=1, elem_id="arena-new")
    with gr.Row():
        buttons = {v: gr.Button(label, elem_id=f"arena-vote-{v}") for v, label in VERDICTS.items()}
    with gr.Row():
        annotator = gr.Textbox(label="Annotator (optional)", elem_id="arena-annotator")
        prompt_set = gr.Textbox(label="Prompt set (optional tag)", elem_id="arena-prompt-set")
    status = gr.Markdown("Send a message to start a round.", elem_id="arena-status")
    revealed = gr.Markdown(elem_id="arena-reveal")
    state = gr.State({})

    def on_send(text: str, st: dict[str, Any], chosen: list[str] | None, sys_prompt: str, coll: str, k: float,
                temp: float, max_new: float, listing: list[dict[str, Any]]) -> Iterator[list[Any]]:
        text = (text or "").strip()
        base = split_models(listing or [])[0]
        if base is None or not text:
            problem = "Type a message first." if base else "The server lists no models; press Refresh models."
            yield [gr.update(), gr.update(), st, problem, gr.update(), gr.update()]
            return
        if not st or st.get("voted"):  # a new round: draw two contenders, sides at random
            try:
                a, b = draw_pair(list(chosen or []) or contender_labels(listing, coll), random.SystemRandom())
            except ValueError as e:
                yield [gr.update(), gr.update(), st, str(e), gr.update(), gr.update()]
                return
            ver = versions(listing or [])
            st = {"sides": [_side_dict(contender(x, base, sys_prompt, coll, int(k), ver)) for x in (a, b)],
                  "histories": [[], []], "turns": 0, "voted": False}
        histories = [[*h, {"role": "user", "content": text}] for h in st["histories"]]
        sides = [_side(d, h) for d, h in zip(st["sides"], histories, strict=True)]
        results: list[StreamResult] = [StreamResult(), StreamResult()]
        for results in stream_sides(client, sides, temp, int(max_new)):
            shown = [_chat([*h, {"role": "assistant", "content": r.text or "..."}])
                     for h, r in zip(histories, results, strict=True)]
            yield [shown[0], shown[1], st, "Streaming both answers...", "", gr.update()]
        if any(r.error for r in results):
            errors = "; ".join(r.error for r in results if r.error)
            yield [_chat(st["histories"][0]), _chat(st["histories"][1]), st, f"**Not answered:** {errors}", "",
                   text]
            return
        histories = [[*h, {"role": "assistant", "content": r.text}] for h, r in zip(histories, results, strict=True)]
        st = {**st, "histories": histories, "turns": st["turns"] + 1}
        yield [_chat(histories[0]), _chat(histories[1]), st,
               f"Turn {st['turns']} answered. Vote, or send another message to both.", "", ""]

    def on_vote(verdict: str, st: dict[str, Any], who: str, tag: str) -> tuple[Any, ...]:
        if not st or not st.get("turns"):
            return st, "Send a message first; vote when both have answered.", gr.update()
        if st.get("voted"):  # a double click must not count twice
            return st, "Already voted on this round; send a message to start the next one.", gr.update()
        try:
            ack = client.vote(arena_record(verdict, st, who, tag))
        except RuntimeError as e:
            return st, f"**Not stored:** {e}", gr.update()
        st = {**st, "voted": True}
        return st, f"Stored `{ack['id']}`: **{VERDICTS[verdict]}**. Send a message to start the next round.", reveal(st)

    def on_new() -> tuple[Any, ...]:
        return [], [], {}, "New round: send a message.", ""

    send_inputs = [message, state, pool, system, collection, top_k, temperature, max_tokens, models]
    send_outputs = [chat_a, chat_b, state, status, revealed, message]
    send.click(on_send, send_inputs, send_outputs)
    message.submit(on_send, send_inputs, send_outputs)
    new_round.click(on_new, None, [chat_a, chat_b, state, status, revealed])
    for verdict, button in buttons.items():
        button.click(lambda st, who, tag, v=verdict: on_vote(v, st, who, tag), [state, annotator, prompt_set],
                     [state, status, revealed])

    def on_models(listing: list[dict[str, Any]], coll: str, current: list[str] | None) -> Any:
        labels = contender_labels(listing or [], coll)
        return gr.Dropdown(choices=labels, value=[c for c in current or [] if c in labels])

    models.change(on_models, [models, collection, pool], pool)
    collection.change(on_models, [models, collection, pool], pool)
