"""The forward of vLLM's linear LoRA layers without vLLM's per-layer wrapper code around the base layer.

vLLM wraps every linear layer of a LoRA-enabled model (``vllm/lora/layers``); the wrapper's forward runs
``apply`` -> ``_apply_sync`` -> ``_apply_lora_to_output`` -> the punica wrapper's ``add_lora_linear``, with
about ten attribute forwards to the base layer on the way, in every layer of every step, also when no row
of the step has an adapter. Measured in one process (32 base requests, no adapter): LoRA-enabled serving
ran at 0.92 of the LoRA-disabled engine, nearly all of the difference in that code.

:func:`lean_forward` runs the base layer's own forward (the same ``quant_method.apply`` with the same bias
that vLLM's wrapper calls) and, when the step has adapter rows, adds the packed delta to its output in place
(:func:`loradock.plugin.packed.lora_linear`, what the patched ``add_lora_linear`` runs): the same arithmetic
in the same order, without the wrapper's Python. It hands the call to vLLM's forward whenever one of its
assumptions does not hold: tensor parallelism, a class that changes how the base output or the delta is
computed (vLLM's fully sharded variants override ``apply``), a dual-stream layer, or no plan for these rows.
In a compiled engine (:mod:`loradock.plugin.compiled`) the same delta runs inside the layer's custom op.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from loradock.plugin import packed

STATE_ATTR = "_loradock_state"  # the punica wrapper's LoRAState (see register.state_of)
OP_NAME_ATTR = "_loradock_op_name"  # a layer whose delta runs as an op in a compiled graph (plugin/compiled.py)


@functools.cache
def _plain(cls: type) -> bool:
    """Whether ``cls`` computes its output as the base layer's forward plus the delta (vLLM's stock linear
    LoRA classes do; the fully sharded ones and any class overriding those steps do not)."""
    from vllm.lora.layers.base_linear import BaseLinearLayerWithLoRA
    from vllm.lora.layers.column_parallel_linear import MergedColumnParallelLinearWithLoRA
    from vllm.lora.layers.replicated_linear import ReplicatedLinearWithLoRA

    # Each is the base forward (or quant_method.apply with the base layer's bias) then the delta, at tp 1.
    stock_apply = (BaseLinearLayerWithLoRA.apply, MergedColumnParallelLinearWithLoRA.apply,
                   ReplicatedLinearWithLoRA.apply)
    return (getattr(cls, "apply", None) in stock_apply
            and getattr(cls, "_apply_lora_to_output", None) is BaseLinearLayerWithLoRA._apply_lora_to_output)


def plain_linear(layer: Any) -> bool:
    """Whether this layer's output is its base layer's forward plus the delta (see :func:`_plain`), on one
    process of tensor parallelism and without a dual stream."""
    d = layer.__dict__
    return d.get("tp_size") == 1 and not d.get("_enable_aux_cuda_stream") and _plain(layer.__class__)


def lean_forward(method: Any) -> Any:
    """``forward`` of a linear LoRA layer class: base forward + packed delta, else vLLM's ``method``. In a
    compiled engine the delta is the layer's op (the graph then holds no loradock Python)."""

    @functools.wraps(method)
    def forward(self: Any, input_: torch.Tensor) -> Any:
        d = self.__dict__
        op_name = d.get(OP_NAME_ATTR)
        if op_name is not None:
            out = self._modules["base_layer"].forward(input_)
            torch.ops.loradock.linear_delta(out[0] if isinstance(out, tuple) else out, input_, op_name)
            return out
        found = step_plan(self, input_.numel() // input_.shape[-1]) \
            if input_.dim() in (2, 3) and plain_linear(self) else None
        if found is None:
            return method(self, input_)
        out = self._modules["base_layer"].forward(input_)  # vLLM's wrapper skips the base layer's hooks too
        add_delta(self, *found, out[0] if isinstance(out, tuple) else out, input_)
        return out

    return forward


def step_plan(layer: Any, rows: int) -> tuple[Any, Any] | None:
    """(the wrapper's LoRAState, this step's token plan) when that plan covers ``rows`` rows, else None
    (then vLLM's own path runs)."""
    wrapper = layer.__dict__.get("punica_wrapper")
    state = None if wrapper is None else wrapper.__dict__.get(STATE_ATTR)
    plan = None if state is None else state.token_plan
    return None if plan is None or plan.num_rows != rows else (state, plan)


def add_delta(layer: Any, state: Any, plan: Any, y: torch.Tensor, x: torch.Tensor) -> None:
    """``y += delta(x)`` with the packed weights of the plan's slots (nothing when no row of the step has an
    adapter with a delta in this layer); ``plan`` covers ``x``'s rows."""
    weights = state.step_weights(layer.lora_a_stacked, layer.lora_b_stacked, layer.output_slices) \
        if plan.segments else None
    if weights is not None:
        packed.lora_linear(y.view(-1, y.shape[-1]), x.reshape(-1, x.shape[-1]), weights, 1.0, plan)
