"""The fast path for a whole LoRA linear layer: every slice's weights packed once per adapter load.

:func:`lora_linear` uses weights packed by :func:`pack`: zero slices and unused rank columns are dropped, so
a q_proj/v_proj adapter costs nothing in o_proj or the MLP, and a rank-8 adapter in a rank-16 engine costs
rank 8. Slot ``s`` always has packed row ``s + 1``, so the rows of the slots a step uses are a view of the
packed tensors whenever those slots are consecutive (no copy per layer and step); the packed tensors sit on
lazily allocated zero pages (:func:`loradock.plugin.slots.lazy_zeros`), so a slot's row costs memory only
once an adapter with a delta in this layer is written there. Packed weights are float32 whatever the
engine's dtype: on CPU a float32 matmul of these thin shapes is faster than a bfloat16 one (measured here
6 vs 40 us for one row: bf16 matmuls have a large fixed cost), and one copy instead of two keeps the memory
down.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from loradock.plugin.ops import gather_in, gather_out, matmul, select_slots, slots_view
from loradock.plugin.plan import SegmentPlan
from loradock.plugin.slots import lazy_zeros


@dataclass(frozen=True)
class PackedLoRA:
    """All slices of one LoRA layer packed per slot: ``y[:, :width] += (x @ a_t[s + 1]) @ b_t[s + 1]`` for
    slot ``s``; ``row_of[s]`` is ``s + 1`` where the slot has a delta in this layer, else 0 (row 0 is zero)."""

    a_t: torch.Tensor  # (slots + 1, in, cols) float32: the used rank columns of every slice side by side
    b_t: torch.Tensor  # (slots + 1, cols, width) float32: one block of rows per slice, at the slice's offset
    row_of: tuple[int, ...]  # packed row of each slot with a delta here (0: none)
    width: int
    ranks: tuple[int, ...]  # rank columns each slice got in the packed layout

    @property
    def live(self) -> tuple[bool, ...]:
        """Slot holds a non-zero delta for this layer."""
        return tuple(r > 0 for r in self.row_of)

    def weights_for(self, plan: SegmentPlan) -> tuple[torch.Tensor | list[torch.Tensor],
                                                      torch.Tensor | list[torch.Tensor]]:
        """(a_t, b_t) rows of the plan's slots, in the plan's order: views when the slots are consecutive, one
        view per slot for a per-segment plan, a gathered copy only for a batched plan over scattered slots."""
        a_t, b_t = self.a_t[1:], self.b_t[1:]
        if plan.batched or plan.slot_select is None:
            return select_slots(a_t, plan), select_slots(b_t, plan)
        return [a_t[slot] for slot in plan.slots], [b_t[slot] for slot in plan.slots]


def _parts(lora_a: tuple[torch.Tensor, ...], lora_b: tuple[torch.Tensor, ...], output_slices: tuple[int, ...],
           slots: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each slice's (a, b) weights of ``slots`` only (reading no other slot; views when the slots are
    consecutive, as one reloaded slot is)."""
    if slots == list(range(slots[0], slots[0] + len(slots))):
        rows = slice(slots[0], slots[0] + len(slots))
        return [(slots_view(a)[rows], slots_view(b)[rows, :size])
                for a, b, size in zip(lora_a, lora_b, output_slices, strict=True)]
    idx = torch.tensor(slots, dtype=torch.long)
    return [(slots_view(a).index_select(0, idx), slots_view(b).index_select(0, idx)[:, :size])
            for a, b, size in zip(lora_a, lora_b, output_slices, strict=True)]


def _used_columns(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> list[list[list[bool]]]:
    """Per slice, per slot: which rank columns carry a delta (a non-zero row of a and column of b)."""
    return [(a.ne(0).any(dim=-1) & b.ne(0).any(dim=-2)).tolist() for a, b in parts]


def _rank(used: list[list[bool]]) -> int:
    """1 + the highest rank column any slot uses in this slice (0 when every slot is zero here)."""
    return max((j + 1 for per_slot in used for j, on in enumerate(per_slot) if on), default=0)


def _live(used: list[list[list[bool]]], ranks: tuple[int, ...]) -> list[bool]:
    """Per slot: a delta in some slice, within the packed ranks."""
    return [any(any(cols[:rank]) for cols, rank in zip(per_slice, ranks, strict=True))
            for per_slice in zip(*used, strict=True)]


def _layout(parts: list[tuple[torch.Tensor, torch.Tensor]], output_slices: tuple[int, ...],
            ranks: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """The slices' weights in the packed layout: each slice's first ``rank`` columns side by side in ``a_t``,
    and its block of ``b_t`` rows at the slice's output offset."""
    n, in_dim = parts[0][0].shape[0], parts[0][0].shape[-1]
    a_t = torch.zeros(n, in_dim, sum(ranks), dtype=torch.float32)
    b_t = torch.zeros(n, sum(ranks), sum(output_slices), dtype=torch.float32)
    col = offset = 0
    for (a, b), size, rank in zip(parts, output_slices, ranks, strict=True):
        if rank:
            a_t[:, :, col : col + rank] = a[:, :rank].transpose(1, 2).float()
            b_t[:, col : col + rank, offset : offset + size] = b[:, :, :rank].transpose(1, 2).float()
            col += rank
        offset += size
    return a_t, b_t


def pack(lora_a: tuple[torch.Tensor, ...], lora_b: tuple[torch.Tensor, ...], output_slices: tuple[int, ...],
         candidates: list[int] | None = None) -> PackedLoRA:
    """Pack vLLM's stacked (slots, 1, r, in) / (slots, 1, out, r) slices of one layer.

    ``candidates`` are the slots that may hold weights (the others are known to be zero and are not read);
    None reads every slot.
    """
    num_slots = slots_view(lora_a[0]).shape[0]
    slots = list(range(num_slots)) if candidates is None else sorted(candidates)
    in_dim, width = slots_view(lora_a[0]).shape[-1], sum(output_slices)
    row_of = [0] * num_slots
    if not slots:  # nothing written: zero rank columns, the same slots + 1 rows as any pack
        zeros = torch.zeros(num_slots + 1, in_dim, 0), torch.zeros(num_slots + 1, 0, width)
        return PackedLoRA(*zeros, tuple(row_of), width, (0,) * len(output_slices))
    parts = _parts(lora_a, lora_b, output_slices, slots)
    used = _used_columns(parts)
    ranks = tuple(_rank(u) for u in used)
    a_c, b_c = _layout(parts, output_slices, ranks)
    a_t = lazy_zeros((num_slots + 1, in_dim, sum(ranks)), torch.float32)
    b_t = lazy_zeros((num_slots + 1, sum(ranks), width), torch.float32)
    for i, is_live in enumerate(_live(used, ranks)):
        if is_live:
            row_of[slots[i]] = slots[i] + 1
            a_t[slots[i] + 1], b_t[slots[i] + 1] = a_c[i], b_c[i]
    return PackedLoRA(a_t, b_t, tuple(row_of), width, ranks)


def repack_slots(packed: PackedLoRA, lora_a: tuple[torch.Tensor, ...], lora_b: tuple[torch.Tensor, ...],
                 output_slices: tuple[int, ...], slots: list[int]) -> PackedLoRA | None:
    """Update only ``slots`` of a packed layer (in place where they have a row); None when they need a wider
    layout (then the caller packs from scratch)."""
    parts = _parts(lora_a, lora_b, output_slices, slots)
    used = _used_columns(parts)
    if any(_rank(u) > rank for u, rank in zip(used, packed.ranks, strict=True)):
        return None
    a_new, b_new = _layout(parts, output_slices, packed.ranks)
    a_t, b_t, row_of = packed.a_t, packed.b_t, list(packed.row_of)
    for i, (slot, is_live) in enumerate(zip(slots, _live(used, packed.ranks), strict=True)):
        if is_live:
            a_t[slot + 1], b_t[slot + 1] = a_new[i], b_new[i]
            row_of[slot] = slot + 1
        elif row_of[slot]:  # the slot was emptied: its row goes back to zero
            a_t[slot + 1], b_t[slot + 1] = 0, 0
            row_of[slot] = 0
    return PackedLoRA(a_t, b_t, tuple(row_of), packed.width, packed.ranks)


def lora_linear(y: torch.Tensor, x: torch.Tensor, packed: PackedLoRA, scale: float, plan: SegmentPlan) -> None:
    """``y[i, slice] += scale * x[i] @ A.T @ B.T`` for every slice, with the adapter of row i's slot.

    ``y`` is (rows, sum(output_slices)) and ``x`` is (rows, in); both follow ``plan``'s rows. The sums are
    added in place (``add_`` on a view: ``y[:, :w] += t`` would also write the view back into ``y``).
    """
    row_of = packed.row_of
    target = y if packed.width == y.shape[1] else y[:, : packed.width]
    if plan.single:  # every row uses the same adapter (one stream, or one adapter's batch)
        row = row_of[plan.slots[0]]
        if row:  # row 0: no delta in this layer (see ``live``)
            h = torch.mm(x.float(), packed.a_t[row])
            if scale != 1.0:
                h.mul_(scale)
            target.add_(torch.mm(h, packed.b_t[row]))
        return
    if not any(row_of[slot] for slot in plan.slots):
        return
    a_t, b_t = packed.weights_for(plan)
    h = matmul(gather_in(x, plan, torch.float32), a_t, plan)
    if scale != 1.0:
        h.mul_(scale)
    target.add_(gather_out(matmul(h, b_t, plan), plan))
