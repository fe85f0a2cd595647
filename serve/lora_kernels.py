"""Segment-grouped LoRA kernels for CPU: rows grouped by adapter slot, one matmul per group.

vLLM's CPU ops (``vllm/lora/ops/torch_ops``) gather a per-row copy of the adapter weights
(``weights[indices]``) and run an einsum, in every LoRA layer of every step. Here the rows of a step are
grouped by slot once (:func:`plan_segments`); each layer then runs batched matmuls over the slots in use.

Two entry points:

- :func:`lora_linear`, the fast path for a whole LoRA linear layer (all its slices at once). It uses
  weights packed once per adapter load (:func:`pack_lora`): zero slices and unused rank columns are dropped,
  so a q_proj/v_proj adapter costs nothing in o_proj or the MLP, and a rank-8 adapter in a rank-16 engine
  costs rank 8.
- ``bgmv_*`` / ``sgmv_*`` with the signatures of vLLM's torch ops, for every other caller.

Rows without an adapter (index -1) get no delta. vLLM's torch ops index ``weights[-1]`` for them, which
applies the last slot's adapter to base-model rows in a mixed batch (vllm-project/vllm#48421).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

_PACK_ATTR = "_loradock_packed"
_PLAN_ATTR = "_loradock_plan"
_LIVE_ATTR = "_loradock_live"
_DIRTY_ATTR = "_loradock_dirty"
# Padding rows the batched path may compute per real row before the per-slot loop is cheaper.
_MAX_PAD_RATIO = 2.0
# Up to this many rows (decode steps) float32 matmuls run faster than bfloat16 ones on CPU (measured 1.5-3x
# per layer: bf16 bmm has a large fixed cost); larger (prefill) batches use the model's dtype.
_FP32_MAX_POSITIONS = 64


@dataclass(frozen=True)
class SegmentPlan:
    """The rows of one step grouped by adapter slot, and how to lay them out for the kernels.

    Kernels gather ``x[src_rows]`` into their own layout, compute, and bring results back with one gather,
    ``out[out_index]``, masking rows that use no adapter. A gather is cheap and parallel on CPU; an
    ``index_add_`` scatter was the slowest op of the whole engine step.
    """

    num_rows: int
    segments: tuple[tuple[int, int, int], ...]  # (slot, start, end) in the kernel layout
    batched: bool  # layout is (num_slots, max_len) padded per slot, for one bmm; else one matmul per segment
    first_slot: int  # batched: the slots in use are first_slot .. first_slot + num_slots - 1 ...
    num_slots: int
    slot_select: torch.Tensor | None  # ... or, when they are not contiguous, these slots
    max_len: int
    positions: int  # rows in the kernel layout (padding included)
    src_rows: torch.Tensor | None  # row of x at each kernel position (None: all rows, in order)
    out_index: torch.Tensor | None  # kernel position of each row (None: identity)
    no_adapter: torch.Tensor | None  # (num_rows, 1) bool, rows without an adapter (None: there are none)


def _make_plan(num_rows: int, rows: torch.Tensor, segments: list[tuple[int, int, int]]) -> SegmentPlan:
    """``rows`` lists the rows that use an adapter ordered by slot; ``segments`` index into it."""
    slot_ids = [slot for slot, _, _ in segments]  # distinct and ascending
    first, num_slots = (slot_ids[0], len(slot_ids)) if slot_ids else (0, 0)
    contiguous = slot_ids == list(range(first, first + num_slots))
    max_len = max((end - start for _, start, end in segments), default=0)
    batched = len(segments) > 1 and num_slots * max_len <= _MAX_PAD_RATIO * rows.numel()
    if batched:
        src = torch.zeros(num_slots * max_len, dtype=torch.long)
        layout = []
        for i, (slot, start, end) in enumerate(segments):
            at = i * max_len
            src[at : at + end - start] = rows[start:end]
            layout.append((slot, at, at + end - start))
        segments = layout
    else:
        src = rows
    where = torch.zeros(num_rows, dtype=torch.long)
    for _, start, end in segments:
        where[src[start:end]] = torch.arange(start, end)
    identity = src.numel() == num_rows and bool(torch.equal(src, torch.arange(num_rows)))
    no_adapter = torch.ones(num_rows, 1, dtype=torch.bool)
    no_adapter[rows] = False
    return SegmentPlan(
        num_rows=num_rows,
        segments=tuple(segments),
        batched=batched,
        first_slot=first,
        num_slots=num_slots,
        slot_select=None if contiguous else torch.tensor(slot_ids),
        max_len=max_len,
        positions=src.numel(),
        src_rows=None if identity else src,
        out_index=None if identity else where,
        no_adapter=no_adapter if rows.numel() < num_rows else None,
    )


def plan_segments(indices: torch.Tensor) -> SegmentPlan:
    """Group row numbers by the adapter slot in ``indices`` (one entry per row, -1 = no adapter)."""
    idx = indices.reshape(-1).to("cpu")
    order = torch.argsort(idx, stable=True)
    slots, counts = torch.unique_consecutive(idx[order], return_counts=True)
    segments, start, skipped = [], 0, 0
    for slot, count in zip(slots.tolist(), counts.tolist(), strict=True):
        if slot < 0:
            skipped = count  # -1 sorts first
        else:
            segments.append((slot, start - skipped, start - skipped + count))
        start += count
    return _make_plan(idx.numel(), order[skipped:], segments)


def plan_runs(seq_lens: torch.Tensor, slots: torch.Tensor) -> SegmentPlan:
    """A plan from vLLM's sgmv metadata: consecutive runs of rows that share a slot (a slot may repeat)."""
    ends = torch.cumsum(seq_lens, 0).tolist()
    by_slot: dict[int, list[torch.Tensor]] = {}
    for slot, start, end in zip(slots.tolist(), [0, *ends[:-1]], ends, strict=True):
        if slot >= 0:
            by_slot.setdefault(slot, []).append(torch.arange(start, end))
    parts, segments, pos = [], [], 0
    for slot in sorted(by_slot):
        rows = torch.cat(by_slot[slot])
        parts.append(rows)
        segments.append((slot, pos, pos + rows.numel()))
        pos += rows.numel()
    rows = torch.cat(parts) if parts else torch.empty(0, dtype=torch.long)
    return _make_plan(ends[-1] if ends else 0, rows, segments)


def cached_plan(indices: torch.Tensor) -> SegmentPlan:
    """:func:`plan_segments`, kept on the index tensor's storage owner until its contents change.

    vLLM hands each layer a fresh view of one persistent index tensor, so this computes the plan once per
    step and every layer reuses it.
    """
    owner = indices._base if indices._base is not None else indices
    key = (indices._version, indices.numel(), indices.storage_offset())
    cached = getattr(owner, _PLAN_ATTR, None)
    if cached is None or cached[0] != key:
        cached = (key, plan_segments(indices))
        setattr(owner, _PLAN_ATTR, cached)
    return cached[1]


def _gather_in(x: torch.Tensor, plan: SegmentPlan, dtype: torch.dtype) -> torch.Tensor:
    """``x`` in the plan's kernel layout: (num_slots, max_len, in) when batched, else (positions, in)."""
    xs = x if plan.src_rows is None else x.index_select(0, plan.src_rows)
    xs = xs.to(dtype)
    return xs.view(plan.num_slots, plan.max_len, -1) if plan.batched else xs


def _matmul(xs: torch.Tensor, w_t: torch.Tensor, plan: SegmentPlan) -> torch.Tensor:
    """``xs @ w_t[slot]`` per slot, in the kernel layout; ``w_t`` is (slots, in, out)."""
    if plan.batched:
        if plan.slot_select is None:
            return torch.bmm(xs, w_t[plan.first_slot : plan.first_slot + plan.num_slots])
        return torch.bmm(xs, w_t.index_select(0, plan.slot_select))
    out = torch.empty(xs.shape[0], w_t.shape[-1], dtype=xs.dtype)
    for slot, start, end in plan.segments:
        torch.matmul(xs[start:end], w_t[slot], out=out[start:end])
    return out


def _gather_out(out: torch.Tensor, plan: SegmentPlan) -> torch.Tensor:
    """Kernel output back in row order, zero for rows without an adapter."""
    out = out.reshape(-1, out.shape[-1])
    if plan.out_index is not None:
        out = out.index_select(0, plan.out_index)
    if plan.no_adapter is not None:
        out = out.masked_fill(plan.no_adapter, 0)
    return out


def _write(target: torch.Tensor, out: torch.Tensor | None, add: bool) -> None:
    """Add ``out`` to ``target`` (or overwrite it; None means zeros)."""
    if out is None:
        if not add:
            target.zero_()
    elif add:
        target += out.to(target.dtype)
    else:
        target.copy_(out)


def _slots(t: torch.Tensor) -> torch.Tensor:
    """vLLM's stacked (slots, 1, a, b) weights as (slots, a, b); (slots, a, b) ones as they are."""
    return t.squeeze(1) if t.dim() == 4 else t


def _weights_t(w: torch.Tensor) -> torch.Tensor:
    """vLLM's stacked (slots, 1, out, in) or (slots, out, in) weights as (slots, in, out) views."""
    return _slots(w).transpose(1, 2)


def _live_slots(w: torch.Tensor) -> tuple[bool, ...]:
    """Which slots of stacked weights are non-zero, cached on the tensor until vLLM rewrites it."""
    cached = getattr(w, _LIVE_ATTR, None)
    if cached is None or cached[0] != w._version:
        cached = (w._version, tuple(w.reshape(w.shape[0], -1).ne(0).any(dim=1).tolist()))
        setattr(w, _LIVE_ATTR, cached)
    return cached[1]


def _any_live(w: torch.Tensor, plan: SegmentPlan) -> bool:
    """Whether any adapter in the plan has non-zero weights here (a q/v-only adapter has none elsewhere)."""
    live = _live_slots(w)
    return any(live[slot] for slot, _, _ in plan.segments)


def _shrink(x: torch.Tensor, w: torch.Tensor, out: torch.Tensor, plan: SegmentPlan, scale: float) -> None:
    w_t = _weights_t(w)
    rows_out = None
    if _any_live(w, plan):
        rows_out = _gather_out(_matmul(_gather_in(x, plan, out.dtype), w_t.to(out.dtype), plan), plan) * scale
    _write(out[:, : w_t.shape[-1]], rows_out, add=False)


def _expand(
    x: torch.Tensor, w: torch.Tensor, out: torch.Tensor, plan: SegmentPlan, offset: int, size: int, add: bool
) -> None:
    w_t = _weights_t(w)
    size = min(size, w_t.shape[-1], out.shape[1] - offset)  # vLLM's ops also cut to the common width
    rows_out = None
    if _any_live(w, plan):
        rows_out = _gather_out(_matmul(_gather_in(x, plan, out.dtype), w_t[..., :size].to(out.dtype), plan), plan)
    _write(out[:, offset : offset + size], rows_out, add)


def _vllm_ops() -> Any:
    """vLLM's own torch ops, for shapes these kernels do not handle (one input row broadcast to many)."""
    from vllm.lora.ops.torch_ops import lora_ops

    return lora_ops


def bgmv_shrink(
    inputs: torch.Tensor,
    lora_a_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    scaling: float = 1.0,
) -> None:
    """``output[i, :r] = scaling * inputs[i] @ A[idx[i]].T``; rows with idx -1 get zeros."""
    plan = cached_plan(lora_indices_tensor)
    if not plan.num_rows == inputs.shape[0] == output_tensor.shape[0]:
        return _vllm_ops().bgmv_shrink(inputs, lora_a_weights, output_tensor, lora_indices_tensor, scaling)
    _shrink(inputs, lora_a_weights, output_tensor, plan, scaling)


def bgmv_expand(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    add_inputs: bool = True,
) -> None:
    """``output[i] (+)= inputs[i] @ B[idx[i]].T`` over the common width; rows with idx -1 add nothing."""
    bgmv_expand_slice(inputs, lora_b_weights, output_tensor, lora_indices_tensor, 0, output_tensor.shape[1], add_inputs)


def bgmv_expand_slice(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    slice_offset: int,
    slice_size: int,
    add_inputs: bool = True,
) -> None:
    """Like :func:`bgmv_expand`, into ``output[:, slice_offset:slice_offset + slice_size]``."""
    plan = cached_plan(lora_indices_tensor)
    if not plan.num_rows == inputs.shape[0] == output_tensor.shape[0]:
        return _vllm_ops().bgmv_expand_slice(
            inputs, lora_b_weights, output_tensor, lora_indices_tensor, slice_offset, slice_size, add_inputs
        )
    _expand(inputs, lora_b_weights, output_tensor, plan, slice_offset, slice_size, add_inputs)


def sgmv_shrink(
    inputs: torch.Tensor,
    lora_a_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    b_seq_start_loc: torch.Tensor,
    seq_len_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    *args: Any,
) -> None:
    """Prefill shrink; ``args`` are vLLM's (batches, max_seq_length, token_nums, scaling)."""
    plan = plan_runs(seq_len_tensor, lora_indices_tensor)
    if not plan.num_rows == inputs.shape[0] == output_tensor.shape[0]:
        return _vllm_ops().sgmv_shrink(
            inputs, lora_a_weights, output_tensor, b_seq_start_loc, seq_len_tensor, lora_indices_tensor, *args
        )
    _shrink(inputs, lora_a_weights, output_tensor, plan, args[3])


def sgmv_expand(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    b_seq_start_loc: torch.Tensor,
    seq_len_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    batches: int,
    max_seq_length: int,
    token_nums: int,
    add_inputs: bool = False,
) -> None:
    """Prefill expand over runs of rows that share an adapter."""
    sgmv_expand_slice(
        inputs,
        lora_b_weights,
        output_tensor,
        b_seq_start_loc,
        seq_len_tensor,
        lora_indices_tensor,
        batches,
        max_seq_length,
        token_nums,
        0,
        output_tensor.shape[1],
        add_inputs,
    )


def sgmv_expand_slice(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    b_seq_start_loc: torch.Tensor,
    seq_len_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    batches: int,
    max_seq_length: int,
    token_nums: int,
    slice_offset: int,
    slice_size: int,
    add_inputs: bool = False,
) -> None:
    """Prefill expand into ``output[:, slice_offset:slice_offset + slice_size]``."""
    plan = plan_runs(seq_len_tensor, lora_indices_tensor)
    if not plan.num_rows == inputs.shape[0] == output_tensor.shape[0]:
        return _vllm_ops().sgmv_expand_slice(
            inputs,
            lora_b_weights,
            output_tensor,
            b_seq_start_loc,
            seq_len_tensor,
            lora_indices_tensor,
            batches,
            max_seq_length,
            token_nums,
            slice_offset,
            slice_size,
            add_inputs,
        )
    _expand(inputs, lora_b_weights, output_tensor, plan, slice_offset, slice_size, add_inputs)


OPS = ("bgmv_shrink", "bgmv_expand", "bgmv_expand_slice", "sgmv_shrink", "sgmv_expand", "sgmv_expand_slice")


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
        (_slots(a)[idx], _slots(b)[idx][:, :size]) for a, b, size in zip(lora_a, lora_b, output_slices, strict=True)
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
    a0 = _slots(lora_a[0])
    slots, in_dim, width = a0.shape[0], a0.shape[-1], sum(output_slices)
    parts = [(_slots(a), _slots(b)[:, :size]) for a, b, size in zip(lora_a, lora_b, output_slices, strict=True)]
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
    h = _matmul(_gather_in(x, plan, dtype), a_t, plan)
    if scale != 1.0:
        h.mul_(scale)
    y[:, : packed.width] += _gather_out(_matmul(h, b_t, plan), plan)
