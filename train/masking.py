"""Tokenization for training, through core's one template, with loss on assistant tokens only.

The text comes from :func:`loradock.core.template.render_with_spans`, so it is byte-identical to what the
server renders; tokens come from the tokenizer with ``add_special_tokens=False``, exactly as
:func:`loradock.core.template.encode` does. A token gets a label when it overlaps an assistant span (the
content plus ``<|im_end|>``), so the model learns both the answer and when to stop.
"""

from __future__ import annotations

from typing import Any

from loradock.core.template import render_with_spans

IGNORE_INDEX = -100


def tokenize_conversation(tokenizer: Any, messages: list[dict[str, str]]) -> dict[str, list[int]]:
    """``input_ids`` and ``labels`` (-100 outside assistant spans) for one conversation."""
    rendered = render_with_spans(messages)
    enc = tokenizer(rendered.text, add_special_tokens=False, return_offsets_mapping=True)
    labels = []
    for token_id, (start, end) in zip(enc["input_ids"], enc["offset_mapping"], strict=True):
        inside = any(start < span_end and end > span_start for span_start, span_end in rendered.assistant_spans)
        labels.append(token_id if inside else IGNORE_INDEX)
    return {"input_ids": list(enc["input_ids"]), "labels": labels}


def count_tokens(tokenizer: Any) -> Any:
    """A function measuring a conversation's rendered length in tokens (for `data check`)."""

    def count(messages: list[dict[str, str]]) -> int:
        return len(tokenize_conversation(tokenizer, messages)["input_ids"])

    return count
