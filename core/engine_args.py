"""The one builder of vLLM engine arguments, for loradock's server and every vLLM baseline it is compared with.

Keys are :class:`vllm.engine.arg_utils.AsyncEngineArgs` field names; :func:`cli_flags` spells the same
arguments for ``python -m vllm.entrypoints.openai.api_server``, so the two can never drift apart.
"""

from __future__ import annotations

from typing import Any

from loradock.core.settings import Settings


def engine_kwargs(settings: Settings, *, enable_lora: bool = True, **overrides: Any) -> dict[str, Any]:
    """vLLM engine arguments for ``settings``; ``overrides`` replace single keys (e.g. ``dtype="auto"``)."""
    s = settings
    kwargs: dict[str, Any] = {
        "model": str(s.base_model),
        "served_model_name": [s.served_base_name],
        "dtype": s.dtype,
        "gpu_memory_utilization": s.gpu_memory_utilization,
        "max_model_len": s.max_model_len,
        "max_num_seqs": s.max_num_seqs,
        "tensor_parallel_size": s.tensor_parallel_size,
        "pipeline_parallel_size": s.pipeline_parallel_size,
        "enforce_eager": s.enforce_eager,
        "disable_log_stats": True,
    }
    if enable_lora:
        kwargs.update(enable_lora=True, max_loras=s.max_loras, max_cpu_loras=max(s.max_cpu_loras, s.max_loras),
                      max_lora_rank=s.max_lora_rank)
    kwargs.update(overrides)
    return kwargs


def cli_flags(kwargs: dict[str, Any]) -> list[str]:
    """The same arguments as vLLM's command-line flags (``True`` is a bare flag, ``False`` is left out)."""
    flags: list[str] = []
    for key, value in kwargs.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif value is False or value is None:
            continue
        elif isinstance(value, (list, tuple)):
            flags += [flag, *map(str, value)]
        else:
            flags += [flag, str(value)]
    return flags


def async_engine_args(settings: Settings, **overrides: Any) -> Any:
    """:func:`engine_kwargs` as vLLM's ``AsyncEngineArgs`` (vLLM is imported here, not at module level)."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    return AsyncEngineArgs(**engine_kwargs(settings, **overrides))
