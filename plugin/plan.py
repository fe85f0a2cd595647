"""The rows of one engine step grouped by adapter slot: the plan every LoRA layer of that step reuses.

vLLM's CPU ops (``vllm/lora/ops/torch_ops``) gather a per-row copy of the adapter weights
(``weights[indices]``) and run an einsum, in every LoRA layer of every step. Here the rows of a step are
grouped by slot once (:func:`plan_segments`, called when vLLM updates the step's mapping, outside the model's
forward); each layer then runs batched matmuls over the slots in use.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Padding rows the batched path may compute per real row before the per-slot loop is cheaper.
_MAX_PAD_RATIO = 2.0


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
    slots: tuple[int, ...] = ()  # the slots in use, ascending (one per segment)
    single: bool = False  # one segment over all rows, in order: one adapter for the whole step

    def fits(self, x: torch.Tensor, y: torch.Tensor) -> bool:
        """Whether this plan's rows are ``x``'s and ``y``'s rows (else the caller falls back to vLLM's ops)."""
        return self.num_rows == x.shape[0] == y.shape[0]


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
    identity = src.numel() == num_rows and bool(torch.equal(src, torch.arange(num_rows)))
    where = None
    if not identity:
        where = torch.zeros(num_rows, dtype=torch.long)
        for _, start, end in segments:
            where[src[start:end]] = torch.arange(start, end)
    no_adapter = None
    if rows.numel() < num_rows:
        no_adapter = torch.ones(num_rows, 1, dtype=torch.bool)
        no_adapter[rows] = False
    single = len(segments) == 1 and identity and no_adapter is None
    return SegmentPlan(
        slots=tuple(slot_ids),
        single=single,
        num_rows=num_rows,
        segments=tuple(segments),
        batched=batched,
        first_slot=first,
        num_slots=num_slots,
        slot_select=None if contiguous else torch.tensor(slot_ids),
        max_len=max_len,
        positions=src.numel(),
        src_rows=None if identity else src,
        out_index=where,
        no_adapter=no_adapter,
    )


def plan_segments(indices: torch.Tensor) -> SegmentPlan:
    """Group row numbers by the adapter slot in ``indices`` (one entry per row, -1 = no adapter)."""
    idx = indices.reshape(-1).to("cpu")
    if idx.numel() and bool((idx < 0).all()):  # base-model-only step: nothing to group
        return _make_plan(idx.numel(), idx[:0], [])
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
