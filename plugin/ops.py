"""Segment-grouped LoRA ops with the signatures of vLLM's torch ops (``bgmv_*`` / ``sgmv_*``).

Rows of a step are grouped by slot (:mod:`loradock.plugin.plan`), then each slot in use gets one matmul.
Rows without an adapter (index -1) get no delta. vLLM's torch ops index ``weights[-1]`` for them, which
applies the last slot's adapter to base-model rows in a mixed batch (vllm-project/vllm#48421).
"""

from __future__ import annotations

from typing import Any

import torch

from loradock.plugin.plan import SegmentPlan, cached_plan, plan_runs

_LIVE_ATTR = "_loradock_live"


def gather_in(x: torch.Tensor, plan: SegmentPlan, dtype: torch.dtype) -> torch.Tensor:
    """``x`` in the plan's kernel layout: (num_slots, max_len, in) when batched, else (positions, in)."""
    xs = x if plan.src_rows is None else x.index_select(0, plan.src_rows)
    xs = xs.to(dtype)
    return xs.view(plan.num_slots, plan.max_len, -1) if plan.batched else xs


def matmul(xs: torch.Tensor, w_t: torch.Tensor, plan: SegmentPlan) -> torch.Tensor:
    """``xs @ w_t[slot]`` per slot, in the kernel layout; ``w_t`` is (slots, in, out)."""
    if plan.batched:
        if plan.slot_select is None:
            return torch.bmm(xs, w_t[plan.first_slot : plan.first_slot + plan.num_slots])
        return torch.bmm(xs, w_t.index_select(0, plan.slot_select))
    out = torch.empty(xs.shape[0], w_t.shape[-1], dtype=xs.dtype)
    for slot, start, end in plan.segments:
        torch.matmul(xs[start:end], w_t[slot], out=out[start:end])
    return out


def gather_out(out: torch.Tensor, plan: SegmentPlan) -> torch.Tensor:
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


def slots_view(t: torch.Tensor) -> torch.Tensor:
    """vLLM's stacked (slots, 1, a, b) weights as (slots, a, b); (slots, a, b) ones as they are."""
    return t.squeeze(1) if t.dim() == 4 else t


def _weights_t(w: torch.Tensor) -> torch.Tensor:
    """vLLM's stacked (slots, 1, out, in) or (slots, out, in) weights as (slots, in, out) views."""
    return slots_view(w).transpose(1, 2)


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
        rows_out = gather_out(matmul(gather_in(x, plan, out.dtype), w_t.to(out.dtype), plan), plan) * scale
    _write(out[:, : w_t.shape[-1]], rows_out, add=False)


def _expand(
    x: torch.Tensor, w: torch.Tensor, out: torch.Tensor, plan: SegmentPlan, offset: int, size: int, add: bool
) -> None:
    w_t = _weights_t(w)
    size = min(size, w_t.shape[-1], out.shape[1] - offset)  # vLLM's ops also cut to the common width
    rows_out = None
    if _any_live(w, plan):
        rows_out = gather_out(matmul(gather_in(x, plan, out.dtype), w_t[..., :size].to(out.dtype), plan), plan)
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
