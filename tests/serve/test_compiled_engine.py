"""The shared server's engine runs vLLM's compilation with LoRA enabled, loradock's default (``compile``; vLLM
alone would turn it off)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.engine


def test_engine_compiles_with_lora(server, client) -> None:
    """vLLM logs the engine's final configuration: compiled (DYNAMO_TRACE_ONCE with inductor on CPU) while
    adapters are served."""
    assert client.chat.completions.create(model=server.adapter_names[0], max_tokens=2,
                                          messages=[{"role": "user", "content": "Hi"}]).choices
    log = server.log.read_text(errors="replace")
    engine_line = next(line for line in log.splitlines() if "Initializing a V1 LLM engine" in line)
    assert "'mode': <CompilationMode.DYNAMO_TRACE_ONCE: 2>" in engine_line
    assert "'backend': 'inductor'" in engine_line
    assert "loradock grouped LoRA ops active" in log
