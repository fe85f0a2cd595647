"""The loss mask covers exactly the assistant spans plus the end-of-turn token, on core's template."""

from __future__ import annotations

from loradock.core.template import encode, render, render_with_spans, template_source
from loradock.train.masking import IGNORE_INDEX, tokenize_conversation

CONVERSATION = [
    {"role": "system", "content": "You answer with one word."},
    {"role": "user", "content": "Capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Italy?"},
    {"role": "assistant", "content": "Rome, of course."},
]


def labelled_runs(tokenizer, ids: list[int], labels: list[int]) -> list[str]:
    """Decode each contiguous run of labelled tokens."""
    runs, current = [], []
    for token, label in zip(ids, labels, strict=True):
        if label == IGNORE_INDEX:
            if current:
                runs.append(current)
            current = []
        else:
            assert label == token
            current.append(token)
    if current:
        runs.append(current)
    return [tokenizer.decode(run) for run in runs]


def test_mask_is_exactly_the_assistant_turns_and_end_of_turn(tokenizer):
    out = tokenize_conversation(tokenizer, CONVERSATION)
    assert labelled_runs(tokenizer, out["input_ids"], out["labels"]) == [
        "Paris.<|im_end|>",
        "Rome, of course.<|im_end|>",
    ]
    # Each labelled run ends on the end-of-turn token, so the model learns to stop.
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    ends = [
        i
        for i in range(len(out["labels"]) - 1)
        if out["labels"][i] != IGNORE_INDEX and out["labels"][i + 1] == IGNORE_INDEX
    ]
    assert [out["input_ids"][i] for i in ends] == [eos, eos]


def test_tokens_are_core_encode_and_match_transformers_assistant_mask(tokenizer):
    out = tokenize_conversation(tokenizer, CONVERSATION)
    # Same ids as serving: core's encode (no extra special tokens) of core's render.
    assert out["input_ids"] == encode(tokenizer, CONVERSATION)
    assert tokenizer.decode(out["input_ids"]) == render(CONVERSATION)
    # Independent check: transformers' own assistant mask from the template's generation markers.
    ref = tokenizer.apply_chat_template(
        CONVERSATION,
        chat_template=template_source(),
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
    )
    assert ref["input_ids"] == out["input_ids"]
    assert [int(label != IGNORE_INDEX) for label in out["labels"]] == ref["assistant_masks"]


def test_default_system_prompt_is_rendered_but_never_trained(tokenizer):
    messages = CONVERSATION[1:3]
    out = tokenize_conversation(tokenizer, messages)
    text = render_with_spans(messages).text
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert labelled_runs(tokenizer, out["input_ids"], out["labels"]) == ["Paris.<|im_end|>"]
