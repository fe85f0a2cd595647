"""LoRA slot memory that costs only what adapters actually write.

vLLM allocates every LoRA layer's stacked weights for ``max_loras`` slots with ``torch.zeros``, which writes
(and so makes resident) all of it: ~10 MB per slot for this 135M base in bfloat16, every module of every
layer, whatever the adapters target. Here those tensors are swapped, right after vLLM creates them, for
tensors over anonymous memory maps: zero pages that take no memory until written. vLLM then writes a slot
only where an adapter has weights (a q/v adapter touches the qkv layers), and ``reset_lora`` of a slot
nothing has written since its last reset is skipped (:mod:`loradock.plugin.register`), so it does not
touch those pages either. Readers of the stacked tensors must keep to written slots too (reading a zero
page maps it): the grouped kernels read only the slots that vLLM's ``set_lora`` marked.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import math
import mmap
import warnings
from typing import Any

import torch

log = logging.getLogger("vllm.loradock_lora_ops")

STACKED = ("lora_a_stacked", "lora_b_stacked")


def lazy_zeros(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A CPU zero tensor over an anonymous memory map: no memory until written (reading maps the zero page)."""
    nbytes = math.prod(shape) * torch.empty(0, dtype=dtype).element_size()
    if nbytes == 0:
        return torch.zeros(shape, dtype=dtype)
    buffer = mmap.mmap(-1, nbytes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # frombuffer warns about buffers it cannot resize
        return torch.frombuffer(buffer, dtype=dtype).view(shape)  # keeps ``buffer`` alive


def lazy_zeros_like(t: torch.Tensor) -> torch.Tensor:
    """A zero tensor of ``t``'s shape and dtype, lazily allocated on CPU (see :func:`lazy_zeros`)."""
    if t.device.type != "cpu":
        return torch.zeros_like(t)
    return lazy_zeros(tuple(t.shape), t.dtype)


def release_freed_memory() -> None:
    """Hand memory freed back to the allocator on to the OS (glibc keeps freed heap pages otherwise)."""
    name = ctypes.util.find_library("c")
    if name:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(name).malloc_trim(0)


def make_lazy(layer: Any) -> None:
    """Swap a LoRA layer's stacked weights (and views of them it keeps, like the embedding's 2-D one) for
    lazily allocated zeros; the originals are freed when this returns (see :func:`release_freed_memory`)."""
    swapped: dict[int, torch.Tensor] = {}  # storage address of an original -> its replacement
    for name in STACKED:
        value = getattr(layer, name, None)
        if isinstance(value, torch.Tensor):
            new = lazy_zeros_like(value)
            swapped[value.untyped_storage().data_ptr()] = new
            setattr(layer, name, new)
        elif isinstance(value, tuple) and all(isinstance(t, torch.Tensor) for t in value):
            fresh = tuple(lazy_zeros_like(t) for t in value)
            swapped.update({t.untyped_storage().data_ptr(): n for t, n in zip(value, fresh, strict=True)})
            setattr(layer, name, fresh)
    if not swapped:
        return
    for name, value in list(vars(layer).items()):
        if name in STACKED or not isinstance(value, torch.Tensor):
            continue
        base = swapped.get(value.untyped_storage().data_ptr())
        if base is not None:
            setattr(layer, name, base.as_strided(value.size(), value.stride(), value.storage_offset()))
