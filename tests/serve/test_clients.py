"""Real third-party clients, unchanged, against the real server: LangChain's ChatOpenAI (chat, streaming,
structured output) and LiteLLM's completion with ``openai/<adapter>``."""

from __future__ import annotations

import os

import pytest
from pydantic import BaseModel, Field

pytestmark = pytest.mark.engine
QUESTION = "What is the capital of France?"

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # offline: LiteLLM's bundled cost map


class Capital(BaseModel):
    city: str = Field(max_length=24)
    country: str = Field(max_length=24)


@pytest.fixture(scope="module")
def chat_openai(server):
    from langchain_openai import ChatOpenAI

    def make(model: str, max_tokens: int = 40, **kw):
        return ChatOpenAI(model=model, base_url=server.v1, api_key=server.api_key, temperature=0,
                          max_tokens=max_tokens, max_retries=0, timeout=120, **kw)

    return make


def test_langchain_chat_and_streaming(chat_openai, server):
    llm = chat_openai(server.base)
    answer = llm.invoke(QUESTION)
    assert "Paris" in answer.content and answer.usage_metadata["output_tokens"] > 0
    streamed = "".join(chunk.content for chunk in chat_openai(server.base, stream_usage=True).stream(QUESTION))
    assert streamed == answer.content


@pytest.mark.parametrize("model", ["base", "json-answer"])
def test_langchain_structured_output(chat_openai, server, model):
    llm = chat_openai(server.base if model == "base" else model, max_tokens=80)
    capital = llm.with_structured_output(Capital, method="json_schema", strict=True).invoke(QUESTION)
    assert isinstance(capital, Capital) and capital.city


def test_litellm_completion_with_an_adapter(server, client):
    import litellm

    expected = client.chat.completions.create(model="json-answer", messages=[{"role": "user", "content": QUESTION}],
                                              temperature=0, max_tokens=40).choices[0].message.content
    r = litellm.completion(model="openai/json-answer", api_base=server.v1, api_key=server.api_key,
                           messages=[{"role": "user", "content": QUESTION}], temperature=0, max_tokens=40)
    assert r.choices[0].message.content == expected and r.usage.completion_tokens > 0
    chunks = litellm.completion(model="openai/json-answer", api_base=server.v1, api_key=server.api_key,
                                messages=[{"role": "user", "content": QUESTION}], temperature=0, max_tokens=40,
                                stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
