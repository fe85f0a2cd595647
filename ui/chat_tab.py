"""Chat tab: multi-turn streaming chat with the base or any adapter."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gradio as gr

from loradock.ui.client import ServerClient, split_models

DEFAULT_SYSTEM = "You are a helpful assistant. Answer briefly."


def _messages(system: str | None, history: list[dict[str, Any]], user: str) -> list[dict[str, str]]:
    system = (system or "").strip()
    msgs = [{"role": "system", "content": system}] if system else []
    msgs += [{"role": m["role"], "content": _text(m["content"])} for m in history
             if m["role"] in ("user", "assistant")]
    return [*msgs, {"role": "user", "content": user}]


def _text(content: Any) -> str:
    """Chatbot content may come back as a string or a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
    return str(content)


def build_chat_tab(client: ServerClient, models: gr.State) -> None:
    """Lay out the Chat tab inside the current Blocks; ``models`` holds the /v1/models listing."""
    with gr.Row():
        model = gr.Dropdown(label="Model (base or adapter)", choices=[], interactive=True, scale=3,
                            elem_id="chat-model")
        rag = gr.Textbox(label="RAG collection (optional)", placeholder="e.g. faq", scale=1)
    system = gr.Textbox(label="System prompt", value=DEFAULT_SYSTEM, lines=2)
    with gr.Row():
        temperature = gr.Slider(0.0, 2.0, value=0.7, step=0.05, label="temperature")
        top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="top_p")
        max_tokens = gr.Slider(8, 1024, value=256, step=8, label="max_tokens", elem_id="chat-max-tokens")
    chatbot = gr.Chatbot(label="Conversation", height=380, elem_id="chat-history")
    stats = gr.Markdown(elem_id="chat-stats")
    with gr.Row():
        user = gr.Textbox(label="Message", placeholder="Ask something and press Enter", scale=5,
                          elem_id="chat-input")
        send = gr.Button("Send", variant="primary", scale=1, elem_id="chat-send")
        clear = gr.Button("Clear", scale=1)

    def respond(message: str, history: list[dict[str, Any]] | None, model_id: str | None, system_prompt: str,
                collection: str, temp: float, p: float, max_new: float) -> Iterator[tuple[Any, ...]]:
        history, message, collection = list(history or []), message or "", (collection or "").strip()
        if not message.strip():
            yield history, "", "Type a message first."
            return
        if not model_id:
            yield history, message, "No model selected: is the server running? Press Refresh models."
            return
        msgs = _messages(system_prompt, history, message)
        history += [{"role": "user", "content": message}, {"role": "assistant", "content": ""}]
        rag_spec = {"collection": collection, "top_k": 4} if collection else None
        for result in client.stream_chat(model_id, msgs, temperature=temp, top_p=p, max_tokens=int(max_new),
                                         rag=rag_spec):
            history[-1] = {"role": "assistant", "content": result.text or ("..." if not result.done else "")}
            line = result.stats_line()
            if result.passages:
                line += " · passages: " + ", ".join(f"{x['source']}#{x['chunk']}" for x in result.passages)
            yield history, "", line
        if result.error and not result.text:
            history = history[:-2]
            yield history, message, result.stats_line()

    inputs = [user, chatbot, model, system, rag, temperature, top_p, max_tokens]
    send.click(respond, inputs, [chatbot, user, stats])
    user.submit(respond, inputs, [chatbot, user, stats])
    clear.click(lambda: ([], ""), None, [chatbot, stats])
    def on_models(listing: list[dict[str, Any]], current: str | None) -> Any:
        base, adapters = split_models(listing or [])
        choices = ([base] if base else []) + adapters
        return gr.Dropdown(choices=choices, value=current if current in choices else base)

    models.change(on_models, [models, model], model)
