"""loradock: one base LLM, many hot-swappable LoRA adapters."""

__version__ = "0.1.0"
