"""Segment-grouped LoRA matmuls over a step's :class:`~loradock.plugin.plan.SegmentPlan`.

Each slot in use gets one matmul (or all of them one ``bmm``). Rows without an adapter (index -1) get no
delta. vLLM's torch ops index ``weights[-1]`` for them, which applies the last slot's adapter to base-model
rows in a mixed batch (vllm-project/vllm#48421).

:func:`shrink` and :func:`expand` are the generic pair behind the punica wrapper's shrink/expand, logits and
embedding paths (:mod:`loradock.plugin.register`); whole linear layers take the packed path of
:mod:`loradock.plugin.packed`.
"""

from __future__ import annotations

import torch

from loradock.plugin.plan import SegmentPlan


def gather_in(x: torch.Tensor, plan: SegmentPlan, dtype: torch.dtype) -> torch.Tensor:
    """``x`` in the plan's kernel layout: (num_slots, max_len, in) when batched, else (positions, in)."""
    xs = x if plan.src_rows is None else x.index_select(0, plan.src_rows)
    xs = xs.to(dtype)
    return xs.view(plan.num_slots, plan.max_len, -1) if plan.batched else xs


def select_slots(w_t: torch.Tensor, plan: SegmentPlan) -> torch.Tensor:
    """The plan's slots of stacked (slots, in, out) weights, in the plan's order (reads no other slot)."""
    if plan.slot_select is None:
        return w_t[plan.first_slot : plan.first_slot + plan.num_slots]
    return w_t.index_select(0, plan.slot_select)


def matmul(xs: torch.Tensor, w: torch.Tensor | list[torch.Tensor], plan: SegmentPlan) -> torch.Tensor:
    """``xs @ w[i]`` for the plan's i-th slot, in the kernel layout; ``w`` is (plan slots, in, out), or one
    (in, out) tensor per plan slot when the plan is not batched."""
    if plan.batched:
        assert isinstance(w, torch.Tensor), "a batched plan takes stacked weights"
        return torch.bmm(xs, w)
    out = torch.empty(xs.shape[0], w[0].shape[-1], dtype=xs.dtype)
    for i, (_, start, end) in enumerate(plan.segments):
        torch.matmul(xs[start:end], w[i], out=out[start:end])
    return out


def gather_out(out: torch.Tensor, plan: SegmentPlan) -> torch.Tensor:
    """Kernel output back in row order, zero for rows without an adapter."""
    out = out.reshape(-1, out.shape[-1])
    if plan.out_index is not None:
        out = out.index_select(0, plan.out_index)
    if plan.no_adapter is not None:
        out = out.masked_fill(plan.no_adapter, 0)
    return out


def slots_view(t: torch.Tensor) -> torch.Tensor:
    """vLLM's stacked (slots, 1, a, b) weights as (slots, a, b); (slots, a, b) ones as they are."""
    return t.squeeze(1) if t.dim() == 4 else t


def live_slots(w: torch.Tensor, candidates: list[int] | None = None) -> tuple[bool, ...]:
    """Which slots of stacked weights hold any non-zero value; only ``candidates`` are read when given (the
    other slots are known to be zero)."""
    if candidates is None:
        return tuple(w.reshape(w.shape[0], -1).ne(0).any(dim=1).tolist())
    live = [False] * w.shape[0]
    for slot in candidates:
        live[slot] = bool(w[slot].ne(0).any())
    return tuple(live)


def _uses_live(plan: SegmentPlan, live: tuple[bool, ...]) -> bool:
    return any(live[slot] for slot in plan.slots)


def shrink(x: torch.Tensor, w: torch.Tensor, out: torch.Tensor, plan: SegmentPlan, scale: float,
           live: tuple[bool, ...]) -> None:
    """``out[i, :r] = scale * x[i] @ w[slot(i)].T``; rows without an adapter, or whose slot is all zero here,
    get zeros (``w`` is vLLM's stacked (slots, 1, r, in) or (slots, r, in))."""
    w_t = slots_view(w).transpose(1, 2)
    target = out[:, : w_t.shape[-1]]
    if not _uses_live(plan, live):
        target.zero_()
        return
    rows = gather_out(matmul(gather_in(x, plan, out.dtype), select_slots(w_t, plan).to(out.dtype), plan), plan)
    target.copy_(rows * scale)


def expand(x: torch.Tensor, w: torch.Tensor, out: torch.Tensor, plan: SegmentPlan, offset: int, size: int,
           add: bool, live: tuple[bool, ...]) -> None:
    """``out[i, offset:offset + size] (+)= x[i] @ w[slot(i)].T`` over the common width (vLLM's ops cut there
    too); rows without an adapter add nothing (or get zeros when ``add`` is False)."""
    w_t = slots_view(w).transpose(1, 2)
    size = min(size, w_t.shape[-1], out.shape[1] - offset)
    target = out[:, offset : offset + size]
    if not _uses_live(plan, live):
        if not add:
            target.zero_()
        return
    w_sel = select_slots(w_t, plan)[..., :size].to(out.dtype)
    rows = gather_out(matmul(gather_in(x, plan, out.dtype), w_sel, plan), plan)
    if add:
        target += rows.to(target.dtype)
    else:
        target.copy_(rows)
