"""The fast path for a whole LoRA linear layer: every slice's weights packed once per adapter load.

:func:`lora_linear` uses weights packed by :func:`pack_lora`: zero slices and unused rank columns are
dropped, so a q_proj/v_proj adapter costs nothing in o_proj or the MLP, and a rank-8 adapter in a rank-16
engine costs rank 8.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from loradock.plugin.ops import gather_in, gather_out, matmul, slots_view
from loradock.plugin.plan import SegmentPlan

_PACK_ATTR = "_loradock_packed"
_DIRTY_ATTR = "_loradock_dirty"
# Up to this many rows (decode steps) float32 matmuls run faster than bfloat16 ones on CPU (measured 1.5-3x
# per layer: bf16 bmm has a large fixed cost); larger (prefill) batches use the model's dtype.
_FP32_MAX_POSITIONS = 64


@dataclass(frozen=True)
class PackedLoRA:
    """All slices of one LoRA layer packed per slot: ``y[:, :width] += (x @ a_t[s]) @ b_t[s]``."""

    key: tuple[int, ...]
    a_t: torch.Tensor  # (slots, in, cols): the used rank columns of every slice side by side
    b_t: torch.Tensor  # (slots, cols, width): one block of rows per slice, at the slice's output offset
    live: tuple[bool, ...]  # slot holds a non-zero delta for this layer
    width: int
    f32: tuple[torch.Tensor, torch.Tensor]  # a_t, b_t in float32
    ranks: tuple[int, ...] = ()  # rank columns each slice got in the packed layout

    def weights(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        return self.f32 if dtype == torch.float32 else (self.a_t, self.b_t)


def _used_rank(a: torch.Tensor, b: torch.Tensor) -> int:
    """1 + the highest rank column any slot uses in this slice (0 when every slot is zero here)."""
    used = (a.ne(0).any(dim=-1) & b.ne(0).any(dim=-2)).any(dim=0)
    nz = used.nonzero()
    return int(nz.max()) + 1 if nz.numel() else 0


def _live(a_t: torch.Tensor, b_t: torch.Tensor) -> list[bool]:
    return (a_t.flatten(1).ne(0).any(dim=1) & b_t.flatten(1).ne(0).any(dim=1)).tolist()


def mark_dirty(lora_a_stacked: Any, index: int) -> None:
    """Record that vLLM rewrote slot ``index`` of a layer (its ``set_lora`` / ``reset_lora``), so
    :func:`pack_lora` repacks that slot only instead of every slot."""
    if isinstance(lora_a_stacked, (tuple, list)) and lora_a_stacked and isinstance(lora_a_stacked[0], torch.Tensor):
        dirty = getattr(lora_a_stacked[0], _DIRTY_ATTR, None)
        if dirty is None:
            dirty = set()
            setattr(lora_a_stacked[0], _DIRTY_ATTR, dirty)
        dirty.add(int(index))


def _fill(
    a_t: torch.Tensor,
    b_t: torch.Tensor,
    idx: torch.Tensor | slice,
    parts: list[tuple[torch.Tensor, torch.Tensor]],
    output_slices: tuple[int, ...],
    ranks: tuple[int, ...],
) -> None:
    """Write the slices' (a, b) weights of slots ``idx`` into the packed layout: each slice's first ``rank``
    columns side by side in ``a_t``, and its block of ``b_t`` rows at the slice's output offset."""
    col = offset = 0
    for (a, b), size, rank in zip(parts, output_slices, ranks, strict=True):
        if rank:
            a_t[idx, :, col : col + rank] = a[:, :rank].transpose(1, 2)
            b_t[idx, col : col + rank, offset : offset + size] = b[:, :, :rank].transpose(1, 2)
            col += rank
        offset += size


def _repack_slots(
    cached: PackedLoRA,
    lora_a: tuple[torch.Tensor, ...],
    lora_b: tuple[torch.Tensor, ...],
    output_slices: tuple[int, ...],
    slots: list[int],
    key: tuple[int, ...],
) -> PackedLoRA | None:
    """Update only ``slots`` of a packed layer in place; None when they need a wider layout (full repack)."""
    idx = torch.tensor(slots, dtype=torch.long)
    parts = [
        (slots_view(a)[idx], slots_view(b)[idx][:, :size])
        for a, b, size in zip(lora_a, lora_b, output_slices, strict=True)
    ]
    if any(_used_rank(a, b) > rank for (a, b), rank in zip(parts, cached.ranks, strict=True)):
        return None
    a_t, b_t = cached.a_t, cached.b_t
    _fill(a_t, b_t, idx, parts, output_slices, cached.ranks)
    if cached.f32[0] is not a_t:  # a bfloat16 layer keeps float32 copies for decode-sized batches
        cached.f32[0][idx] = a_t[idx].float()
        cached.f32[1][idx] = b_t[idx].float()
    live = list(cached.live)
    for slot, is_live in zip(slots, _live(a_t[idx], b_t[idx]), strict=True):
        live[slot] = is_live
    return PackedLoRA(key, a_t, b_t, tuple(live), cached.width, cached.f32, cached.ranks)


def pack_lora(
    lora_a: tuple[torch.Tensor, ...],
    lora_b: tuple[torch.Tensor, ...],
    output_slices: tuple[int, ...],
) -> PackedLoRA:
    """Pack vLLM's stacked (slots, 1, r, in) / (slots, 1, out, r) slices, cached until a slot is rewritten.

    vLLM writes adapter weights in place, which bumps the tensors' version counters; the cache is kept on
    ``lora_a[0]`` and keyed by those versions. When :func:`mark_dirty` says which slots were rewritten, only
    those are repacked (loading one adapter then costs one slot, not ``max_loras`` slots, in every layer).
    """
    key = tuple(t._version for t in (*lora_a, *lora_b))
    cached = getattr(lora_a[0], _PACK_ATTR, None)
    if cached is not None and cached.key == key:
        return cached
    dirty = getattr(lora_a[0], _DIRTY_ATTR, None)
    if cached is not None and dirty:
        packed = _repack_slots(cached, lora_a, lora_b, output_slices, sorted(dirty), key)
        if packed is not None:
            dirty.clear()
            setattr(lora_a[0], _PACK_ATTR, packed)
            return packed
    if dirty:
        dirty.clear()
    a0 = slots_view(lora_a[0])
    slots, in_dim, width = a0.shape[0], a0.shape[-1], sum(output_slices)
    parts = [(slots_view(a), slots_view(b)[:, :size]) for a, b, size in zip(lora_a, lora_b, output_slices, strict=True)]
    ranks = tuple(_used_rank(a, b) for a, b in parts)
    a_t = torch.zeros(slots, in_dim, sum(ranks), dtype=a0.dtype)
    b_t = torch.zeros(slots, sum(ranks), width, dtype=a0.dtype)
    _fill(a_t, b_t, slice(None), parts, output_slices, ranks)
    live = tuple(_live(a_t, b_t))
    packed = PackedLoRA(key, a_t, b_t, live, width, (a_t.float(), b_t.float()), ranks)
    setattr(lora_a[0], _PACK_ATTR, packed)
    return packed


def lora_linear(
    y: torch.Tensor,
    x: torch.Tensor,
    lora_a: tuple[torch.Tensor, ...],
    lora_b: tuple[torch.Tensor, ...],
    scale: float,
    output_slices: tuple[int, ...],
    plan: SegmentPlan,
) -> None:
    """``y[i, slice] += scale * x[i] @ A.T @ B.T`` for every slice, with the adapter of row i's slot.

    ``y`` is (rows, sum(output_slices)) and ``x`` is (rows, in); both follow ``plan``'s rows.
    """
    packed = pack_lora(lora_a, lora_b, output_slices)
    if not any(packed.live[slot] for slot, _, _ in plan.segments):
        return
    dtype = torch.float32 if plan.positions <= _FP32_MAX_POSITIONS else y.dtype
    a_t, b_t = packed.weights(dtype)
    h = matmul(gather_in(x, plan, dtype), a_t, plan)
    if scale != 1.0:
        h.mul_(scale)
    y[:, : packed.width] += gather_out(matmul(h, b_t, plan), plan)
