"""vLLM general plugin: faster CPU LoRA ops (work in progress; currently keeps vLLM's own ops)."""


def register() -> None:
    """Entry point named in pyproject (vllm.general_plugins); runs in every vLLM process."""
