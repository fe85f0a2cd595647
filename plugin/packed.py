"""The fast path for a whole LoRA linear layer: every slice's weights packed once per adapter load.

:func:`lora_linear` uses weights packed by :func:`pack`: zero slices and unused rank columns are dropped, so
a q_proj/v_proj adapter costs nothing in o_proj or the MLP, and a rank-8 adapter in a rank-16 engine costs
rank 8. Packed weights are float32 whatever the engine's dtype: on CPU a float32 matmul of these thin shapes
is faster than a bfloat16 one (measured 1.5-3x per layer for decode-sized batches; bf16 ``bmm`` has a large
fixed cost), and one copy instead of two keeps the memory of ``max_loras`` slots down.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from loradock.plugin.ops import gather_in, gather_out, matmul, slots_view
from loradock.plugin.plan import SegmentPlan


@dataclass(frozen=True)
class PackedLoRA:
    """All slices of one LoRA layer packed per slot: ``y[:, :width] += (x @ a_t[s]) @ b_t[s]``."""

    a_t: torch.Tensor  # (slots, in, cols) float32: the used rank columns of every slice side by side
    b_t: torch.Tensor  # (slots, cols, width) float32: one block of rows per slice, at the slice's output offset
    live: tuple[bool, ...]  # slot holds a non-zero delta for this layer
    width: int
    ranks: tuple[int, ...]  # rank columns each slice got in the packed layout


def _used_rank(a: torch.Tensor, b: torch.Tensor) -> int:
    """1 + the highest rank column any slot uses in this slice (0 when every slot is zero here)."""
    used = (a.ne(0).any(dim=-1) & b.ne(0).any(dim=-2)).any(dim=0)
    nz = used.nonzero()
    return int(nz.max()) + 1 if nz.numel() else 0


def _live(a_t: torch.Tensor, b_t: torch.Tensor) -> list[bool]:
    return (a_t.flatten(1).ne(0).any(dim=1) & b_t.flatten(1).ne(0).any(dim=1)).tolist()


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
            a_t[idx, :, col : col + rank] = a[:, :rank].transpose(1, 2).float()
            b_t[idx, col : col + rank, offset : offset + size] = b[:, :, :rank].transpose(1, 2).float()
            col += rank
        offset += size


def pack(lora_a: tuple[torch.Tensor, ...], lora_b: tuple[torch.Tensor, ...],
         output_slices: tuple[int, ...]) -> PackedLoRA:
    """Pack vLLM's stacked (slots, 1, r, in) / (slots, 1, out, r) slices of one layer, every slot."""
    a0 = slots_view(lora_a[0])
    slots, in_dim, width = a0.shape[0], a0.shape[-1], sum(output_slices)
    parts = [(slots_view(a), slots_view(b)[:, :size]) for a, b, size in zip(lora_a, lora_b, output_slices, strict=True)]
    ranks = tuple(_used_rank(a, b) for a, b in parts)
    a_t = torch.zeros(slots, in_dim, sum(ranks), dtype=torch.float32)
    b_t = torch.zeros(slots, sum(ranks), width, dtype=torch.float32)
    _fill(a_t, b_t, slice(None), parts, output_slices, ranks)
    return PackedLoRA(a_t, b_t, tuple(_live(a_t, b_t)), width, ranks)


def repack_slots(
    packed: PackedLoRA,
    lora_a: tuple[torch.Tensor, ...],
    lora_b: tuple[torch.Tensor, ...],
    output_slices: tuple[int, ...],
    slots: list[int],
) -> PackedLoRA | None:
    """Update only ``slots`` of a packed layer in place; None when they need a wider layout (full repack)."""
    idx = torch.tensor(slots, dtype=torch.long)
    parts = [
        (slots_view(a)[idx], slots_view(b)[idx][:, :size])
        for a, b, size in zip(lora_a, lora_b, output_slices, strict=True)
    ]
    if any(_used_rank(a, b) > rank for (a, b), rank in zip(parts, packed.ranks, strict=True)):
        return None
    a_t, b_t = packed.a_t, packed.b_t
    a_t[idx] = 0
    b_t[idx] = 0
    _fill(a_t, b_t, idx, parts, output_slices, packed.ranks)
    live = list(packed.live)
    for slot, is_live in zip(slots, _live(a_t[idx], b_t[idx]), strict=True):
        live[slot] = is_live
    return PackedLoRA(a_t, b_t, tuple(live), packed.width, packed.ranks)


def lora_linear(y: torch.Tensor, x: torch.Tensor, packed: PackedLoRA, scale: float, plan: SegmentPlan) -> None:
    """``y[i, slice] += scale * x[i] @ A.T @ B.T`` for every slice, with the adapter of row i's slot.

    ``y`` is (rows, sum(output_slices)) and ``x`` is (rows, in); both follow ``plan``'s rows.
    """
    if not any(packed.live[slot] for slot in plan.slots):
        return
    h = matmul(gather_in(x, plan, torch.float32), packed.a_t, plan)
    if scale != 1.0:
        h.mul_(scale)
    y[:, : packed.width] += gather_out(matmul(h, packed.b_t, plan), plan)
