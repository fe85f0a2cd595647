"""The weights of an adapter against the base: every tensor's name, shape and dtype, read from the header.

The safetensors header is parsed here (8-byte length, then JSON), never by a library that maps the file, so
a corrupt or hostile file is refused with a code. Each LoRA tensor must name a module the base has, at a
layer the base has, with ``lora_A`` of shape ``[r, in]`` and ``lora_B`` of shape ``[out, r]``.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from typing import Any

from loradock.core.base_model import BaseModelInfo
from loradock.core.manifest import EMBEDDING_MODULES
from loradock.core.validate_files import AdapterInvalid, open_regular, parse_json_object

HEADER_MAX_BYTES = 16 << 20
MAX_TENSORS = 8192
DTYPE_BYTES = {"F32": 4, "F16": 2, "BF16": 2}
PEFT_PREFIX = "base_model.model."
# PEFT's names: <module>.lora_A.weight / .lora_B.weight, and lora_embedding_A / _B for embeddings.
_PARTS = {"lora_A.weight": "A", "lora_B.weight": "B", "lora_embedding_A": "A", "lora_embedding_B": "B"}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]


def _pread_exact(fd: int, size: int, offset: int, what: str) -> bytes:
    data = os.pread(fd, size, offset)
    if len(data) != size:
        raise AdapterInvalid("corrupt_weights", f"{what} is truncated")
    return data


def _check_layout(entries: dict[str, Any], data_bytes: int, name: str) -> list[TensorInfo]:
    tensors, spans = [], []
    for key, meta in entries.items():
        if not isinstance(meta, dict) or not isinstance(meta.get("dtype"), str):
            raise AdapterInvalid("corrupt_weights", f"{name}: tensor {key!r} has no dtype in the header")
        dtype, shape, offsets = meta["dtype"], meta.get("shape"), meta.get("data_offsets")
        if not (isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                for d in shape)):
            raise AdapterInvalid("corrupt_weights", f"{name}: tensor {key!r} has an invalid shape {shape!r}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise AdapterInvalid("corrupt_weights", f"{name}: tensor {key!r} has invalid data_offsets")
        if dtype not in DTYPE_BYTES:
            raise AdapterInvalid("bad_dtype", f"{name}: tensor {key} is {dtype}; adapters must be F32, F16 or "
                                              "BF16 (save the adapter in one of those dtypes)")
        begin, end = offsets
        if not 0 <= begin <= end <= data_bytes or end - begin != math.prod(shape) * DTYPE_BYTES[dtype]:
            raise AdapterInvalid("corrupt_weights", f"{name}: tensor {key!r} does not fit its data span")
        spans.append((begin, end))
        tensors.append(TensorInfo(key, dtype, tuple(shape)))
    pos = 0
    for begin, end in sorted(spans):
        if begin != pos:
            raise AdapterInvalid("corrupt_weights", f"{name}: tensor data overlaps or leaves gaps")
        pos = end
    if pos != data_bytes:
        raise AdapterInvalid("corrupt_weights", f"{name}: {data_bytes - pos} bytes after the last tensor")
    return tensors


def read_header(dir_fd: int, name: str, cap: int) -> list[TensorInfo]:
    """The tensors a safetensors file declares, with its layout checked against the file size."""
    with open_regular(dir_fd, name, cap) as (fd, size):
        try:
            if size < 8:
                raise AdapterInvalid("corrupt_weights", f"{name} is not a readable safetensors file (too short)")
            (length,) = struct.unpack("<Q", _pread_exact(fd, 8, 0, name))
            if length > min(HEADER_MAX_BYTES, size - 8):
                raise AdapterInvalid("corrupt_weights", f"{name} is not a readable safetensors file "
                                                        f"(header length {length} for a {size}-byte file)")
            header = _pread_exact(fd, length, 8, name)
        except OSError as e:
            raise AdapterInvalid("unreadable", f"{name} cannot be read ({e.strerror or e})") from e
    try:
        entries = parse_json_object(header, f"{name} header")
    except AdapterInvalid as e:
        raise AdapterInvalid("corrupt_weights", f"{name} is not a readable safetensors file: {e.message}") from e
    entries.pop("__metadata__", None)
    if not entries:
        raise AdapterInvalid("corrupt_weights", f"{name} holds no tensors")
    if len(entries) > MAX_TENSORS:
        raise AdapterInvalid("corrupt_weights", f"{name} declares more than {MAX_TENSORS} tensors")
    return _check_layout(entries, size - 8 - length, name)


def _split(key: str) -> tuple[str, str] | None:
    """``(module path, "A"|"B")`` for a PEFT LoRA tensor name, else None."""
    for suffix, part in _PARTS.items():
        if key.endswith("." + suffix):
            module = key[: -len(suffix) - 1]
            return module.removeprefix(PEFT_PREFIX), part
    return None


def check_tensors(tensors: list[TensorInfo], base: BaseModelInfo, targets: set[str],
                  rank_of: dict[str, int], max_rank: int, name: str) -> None:
    """Each tensor names a targeted module of the base; A is [r, in] and B is [out, r] for its shape."""
    pairs: dict[str, dict[str, TensorInfo]] = {}
    for t in tensors:
        if any(f".{m}." in f".{t.name}" for m in EMBEDDING_MODULES) and "lora_" not in t.name:
            raise AdapterInvalid(
                "resized_embeddings",
                f"{name} carries full embedding weights ({t.name}); resized or trained embeddings cannot be "
                "hot-swapped on a shared base. Retrain without modules_to_save/new tokens")
        split = _split(t.name)
        if split is None:
            raise AdapterInvalid("unexpected_tensor", f"{name}: tensor {t.name} is not a LoRA A/B weight; the "
                                                      "server serves plain LoRA adapters (no DoRA, bias or extra "
                                                      f"modules)")
        module, part = split
        if module not in base.weight_shapes:
            raise AdapterInvalid("unknown_module", f"{name}: tensor {t.name} targets {module}, which base "
                                                   f"{base.name} does not have (wrong base or layer index?)")
        if module.rsplit(".", 1)[-1] not in targets:
            raise AdapterInvalid("unexpected_tensor", f"{name}: tensor {t.name} is for a module that "
                                                      "adapter_config.json's target_modules does not list")
        if part in pairs.setdefault(module, {}):
            raise AdapterInvalid("corrupt_weights", f"{name}: two lora_{part} tensors for {module}")
        pairs[module][part] = t
    for module, ab in sorted(pairs.items()):
        if set(ab) != {"A", "B"}:
            raise AdapterInvalid("corrupt_weights", f"{name}: {module} has lora_{''.join(ab)} without its pair")
        _check_pair(module, ab["A"], ab["B"], base.weight_shapes[module], rank_of.get(module), max_rank, name)


def _check_pair(module: str, a: TensorInfo, b: TensorInfo, base_shape: tuple[int, ...], rank: int | None,
                max_rank: int, name: str) -> None:
    if len(base_shape) != 2:
        raise AdapterInvalid("unknown_target_modules", f"{name}: {module} is not a linear layer of the base")
    out_f, in_f = base_shape
    if a.name.endswith("lora_embedding_A"):  # PEFT's embedding LoRA: A is [r, rows], B is [dim, r]
        in_f, out_f = out_f, in_f
    if len(a.shape) != 2 or len(b.shape) != 2 or a.shape[1] != in_f or b.shape[0] != out_f or a.shape[0] != b.shape[1]:
        raise AdapterInvalid("shape_mismatch", f"{name}: {module} has lora_A {list(a.shape)} and lora_B "
                                               f"{list(b.shape)}; base {module} is [{out_f}, {in_f}], so they "
                                               "must be [r, in] and [out, r] (trained on another base?)")
    r = a.shape[0]
    if r > max_rank:
        raise AdapterInvalid("rank_too_high", f"{a.name} has rank {r}; this server accepts rank <= {max_rank} "
                                              "(retrain with a smaller --lora-r or raise LORADOCK_MAX_LORA_RANK)")
    if rank is not None and r != rank:
        raise AdapterInvalid("shape_mismatch", f"{name}: {module} has rank {r} but adapter_config.json says "
                                               f"{rank}; the served scaling would be wrong")
