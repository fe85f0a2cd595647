"""The one template: byte-identical to transformers' rendering, and spans cover exactly the assistant turns."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from loradock.core.template import (
    TemplateError,
    encode,
    render,
    render_with_spans,
    template_sha256,
    template_source,
)

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You answer in JSON."}, {"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
     {"role": "user", "content": "And  now\nmultiline?"}],
    [{"role": "system", "content": ""}, {"role": "user", "content": "ünïcödé ✓"},
     {"role": "assistant", "content": "ok"}],
]


@pytest.fixture(scope="module")
def tokenizer():
    from tests.conftest import BASE_MODEL

    return AutoTokenizer.from_pretrained(str(BASE_MODEL))


@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_render_matches_transformers(tokenizer, messages, add_generation_prompt):
    ours = render(messages, add_generation_prompt)
    theirs = tokenizer.apply_chat_template(messages, chat_template=template_source(), tokenize=False,
                                           add_generation_prompt=add_generation_prompt)
    assert ours == theirs
    expected_ids = tokenizer(theirs, add_special_tokens=False)["input_ids"]
    assert encode(tokenizer, messages, add_generation_prompt) == expected_ids


def test_generation_markers_change_no_byte():
    stripped = template_source().replace("{%- generation -%}", "").replace("{%- endgeneration -%}", "")
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    for messages in CONVERSATIONS:
        assert env.from_string(stripped).render(messages=messages, add_generation_prompt=True) == render(messages, True)


def test_default_system_prompt_policy():
    text = render([{"role": "user", "content": "Hi"}])
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    custom = render([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    assert "SmolLM" not in custom and custom.startswith("<|im_start|>system\nBe brief.<|im_end|>")


def test_spans_cover_assistant_content_and_end_of_turn():
    r = render_with_spans(CONVERSATIONS[2] + [{"role": "assistant", "content": "Sure."}])
    assert [r.text[a:b] for a, b in r.assistant_spans] == ["Hello!<|im_end|>", "Sure.<|im_end|>"]
    assert r.text == render(CONVERSATIONS[2] + [{"role": "assistant", "content": "Sure."}])


def test_hash_is_sha256_of_file():
    import hashlib

    assert template_sha256() == hashlib.sha256(template_source().encode()).hexdigest()


@pytest.mark.parametrize("bad, fragment", [
    ([], "at least one message"),
    ([{"role": "tool", "content": "x"}], "role must be one of"),
    ([{"role": "user", "content": 3}], "must be a string"),
    ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}], "only allowed first"),
])
def test_bad_conversations_say_what_to_fix(bad, fragment):
    with pytest.raises(TemplateError, match=fragment):
        render(bad)
