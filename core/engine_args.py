"""The one builder of vLLM engine arguments, for loradock's server and every vLLM baseline it is compared with.

Keys are :class:`vllm.engine.arg_utils.AsyncEngineArgs` field names; :func:`cli_flags` spells the same
arguments for ``python -m vllm.entrypoints.openai.api_server``, so the two can never drift apart.
:func:`engine_env` gives the environment the engine process needs (read when it starts).

On a CPU the defaults differ from vLLM's own (each measured on the 2-core dev machine, docs/performance.md):

- dtype ``auto`` is bfloat16 where the CPU has AVX-512 BF16 or AMX, else float32 (logged);
- the model runs inside the engine-core process (vLLM's uni-process executor) with ``cpu_threads`` torch
  threads, instead of a third worker process: one process less (~0.9 GB RSS) and no busy-waiting scheduler;
- compilation stays on with LoRA (vLLM turns it off whenever LoRA is enabled; ``compile``, on by default,
  keeps it with loradock's LoRA ops in the graph, ``loradock.plugin.compiled``), and the LoRA-disabled
  comparison engine compiles the same way; without a C++ compiler both run eagerly (logged). vLLM's C++ CPU
  kernels are on (``custom_ops: all``);
- the KV cache is sized from ``max_num_seqs x kv_tokens_per_seq`` rather than a fixed 1 GiB.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import MutableMapping
from functools import cache
from pathlib import Path
from typing import Any

from loradock.core.settings import Settings

log = logging.getLogger(__name__)

# The executor that runs the model in the engine-core process. Named by its qualified name: vLLM's CPU platform
# rewrites the short name "uni" to its multiprocess executor, and the CLI accepts the qualified name too.
INPROC_EXECUTOR = "vllm.v1.executor.uniproc_executor.UniProcExecutor"
_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
_KV_BLOCK = 128  # vLLM's CPU block size, in tokens
_SHARE_CORES_UP_TO = 2  # up to this many cores the engine uses them all (measured on 2; see cpu_threads)


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU feature flags (empty where /proc/cpuinfo is not readable)."""
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@cache
def on_gpu() -> bool:
    """Whether a CUDA device is visible (then vLLM's GPU defaults apply and none of the CPU sizing)."""
    import torch

    return bool(torch.cuda.is_available())


def resolve_dtype(requested: str, flags: frozenset[str] | None = None, gpu: bool | None = None) -> str:
    """The engine dtype for ``requested``: ``auto`` is vLLM's choice on a GPU, bfloat16 on a CPU with AVX-512
    BF16 or AMX, and float32 on other CPUs (logged, with the setting that overrides it)."""
    if requested != "auto":
        return requested
    if on_gpu() if gpu is None else gpu:
        return "auto"
    if (cpu_flags() if flags is None else flags) & _BF16_FLAGS:
        return "bfloat16"
    log.warning("this CPU has neither AVX-512 BF16 nor AMX: serving in float32, which is slower "
                "(LORADOCK_DTYPE=bfloat16 forces bfloat16)")
    return "float32"


def kv_bytes_per_token(base_model: Path, dtype: str) -> int:
    """KV cache bytes one token takes in this base (keys and values of every layer)."""
    cfg = json.loads((Path(base_model) / "config.json").read_text())
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    kv_heads = cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    return 2 * cfg["num_hidden_layers"] * kv_heads * head_dim * _DTYPE_BYTES.get(dtype, 4)


def kv_cache_bytes(settings: Settings, dtype: str) -> int:
    """CPU KV cache size: ``kv_cache_space_gib`` when set, else ``max_num_seqs`` sequences of
    ``kv_tokens_per_seq`` tokens (whole blocks), and never less than one ``max_model_len`` sequence."""
    if settings.kv_cache_space_gib is not None:
        return int(settings.kv_cache_space_gib * 2**30)
    blocks_per_seq = -(-settings.kv_tokens_per_seq // _KV_BLOCK)
    tokens = max(settings.max_num_seqs * blocks_per_seq * _KV_BLOCK, settings.max_model_len + _KV_BLOCK)
    return tokens * kv_bytes_per_token(settings.base_model, dtype)


def cpu_threads(settings: Settings, cores: int | None = None) -> int:
    """Torch threads for the CPU engine: ``cpu_threads``, else every core this process may use, but one above
    ``_SHARE_CORES_UP_TO`` cores (left to the API process, as vLLM's CPU guide advises for larger machines).

    On 2 cores the API process is idle 97% of a stream (docs/performance.md, per-token split), and `loradock
    bench` measured 2 threads against 1, alternated A/B/A: base 547 vs 460-478 tok/s at 32 streams, mixed 331 vs
    307-321, one adapter stream 47.3 vs 43.1-46.6."""
    cores = len(os.sched_getaffinity(0)) if cores is None else cores
    return settings.cpu_threads or (cores if cores <= _SHARE_CORES_UP_TO else cores - 1)


def cxx_compiler() -> str | None:
    """The C++ compiler inductor would build the CPU kernels with (``CXX``, else g++ / c++ / clang++)."""
    return os.environ.get("CXX") or next(filter(None, map(shutil.which, ("g++", "c++", "clang++"))), None)


def cpu_compilation(eager: bool) -> dict[str, Any]:
    """vLLM's ``compilation_config`` on CPU: mode 3 (vLLM turns it into one Dynamo trace compiled by inductor),
    or 0 (eager; also without a C++ compiler, logged). Inductor rounds to bfloat16 where the eager model does
    (``emulate_precision_casts``): without it the compiled engine keeps float32 between fused ops and its
    greedy tokens drift from PEFT's in bf16 from the first token on (tests/serve/test_parity.py)."""
    if not eager and cxx_compiler() is None:
        log.warning("no C++ compiler (g++, c++, clang++ or $CXX) for vLLM's CPU compilation: the model runs "
                    "eagerly (slower decoding); install g++ to compile it")
        eager = True
    if eager:
        return {"mode": 0, "custom_ops": ["all"]}
    return {"mode": 3, "custom_ops": ["all"], "inductor_compile_config": {"emulate_precision_casts": True}}


def engine_kwargs(settings: Settings, *, enable_lora: bool | None = None, **overrides: Any) -> dict[str, Any]:
    """vLLM engine arguments for ``settings``; ``overrides`` replace single keys (e.g. ``dtype="auto"``)."""
    s = settings
    dtype = resolve_dtype(s.dtype)
    kwargs: dict[str, Any] = {
        "model": str(s.base_model),
        "served_model_name": [s.served_base_name],
        "dtype": dtype,
        "gpu_memory_utilization": s.gpu_memory_utilization,
        "max_model_len": s.max_model_len,
        "max_num_seqs": s.max_num_seqs,
        "tensor_parallel_size": s.tensor_parallel_size,
        "pipeline_parallel_size": s.pipeline_parallel_size,
        "enforce_eager": s.enforce_eager,
        "disable_log_stats": True,
    }
    if not on_gpu():
        kwargs.update(
            kv_cache_memory_bytes=kv_cache_bytes(s, dtype if dtype != "auto" else "bfloat16"),
            compilation_config=cpu_compilation(s.enforce_eager or not s.compile),
        )
        if s.tensor_parallel_size * s.pipeline_parallel_size == 1:
            kwargs["distributed_executor_backend"] = INPROC_EXECUTOR
    if s.enable_lora if enable_lora is None else enable_lora:
        kwargs.update(enable_lora=True, max_loras=s.max_loras, max_cpu_loras=max(s.max_cpu_loras, s.max_loras),
                      max_lora_rank=s.max_lora_rank)
    kwargs.update(overrides)
    return {k: v for k, v in kwargs.items() if v is not None}


def engine_env(settings: Settings) -> dict[str, str]:
    """Environment the engine process reads at start (CPU: its torch threads and the size of oneDNN's
    primitive cache, see docs/operations.md); empty on a GPU."""
    if on_gpu():
        return {}
    return {"OMP_NUM_THREADS": str(cpu_threads(settings)),
            "ONEDNN_PRIMITIVE_CACHE_CAPACITY": str(settings.onednn_primitive_cache),
            # read by loradock's vLLM plugin: compilation stays on with LoRA only when loradock asked for it
            "LORADOCK_COMPILE": "true" if settings.compile else "false"}


def apply_engine_env(settings: Settings, environ: MutableMapping[str, str]) -> dict[str, str]:
    """Put :func:`engine_env` into ``environ`` (read by the engine process when it starts) where the key is not
    set yet: a value the user exported wins. Returns the values the engine will read."""
    return {key: environ.setdefault(key, value) for key, value in engine_env(settings).items()}


def cli_flags(kwargs: dict[str, Any]) -> list[str]:
    """The same arguments as vLLM's command-line flags (``True`` is a bare flag, ``False`` is left out)."""
    flags: list[str] = []
    for key, value in kwargs.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif value is False or value is None:
            continue
        elif isinstance(value, dict):
            flags += [flag, json.dumps(value)]
        elif isinstance(value, (list, tuple)):
            flags += [flag, *map(str, value)]
        else:
            flags += [flag, str(value)]
    return flags


def async_engine_args(settings: Settings, **overrides: Any) -> Any:
    """:func:`engine_kwargs` as vLLM's ``AsyncEngineArgs`` (vLLM is imported here, not at module level)."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    return AsyncEngineArgs(**engine_kwargs(settings, **overrides))
