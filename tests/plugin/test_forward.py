"""The lean forward of vLLM's linear LoRA layers computes what vLLM's own forward computes (no engine needed)."""

from __future__ import annotations

import importlib
from typing import Any

import pytest
import torch
from vllm.lora.layers import column_parallel_linear, row_parallel_linear
from vllm.lora.layers.utils import LoRAMapping
from vllm.lora.punica_wrapper import punica_cpu

from loradock.plugin import register as lora_ops

SLICES = (32, 8, 8)


class _Quant:
    def apply(self, layer: Any, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        out = x @ layer.weight.T
        return out if bias is None else out + bias


class _Base(torch.nn.Module):
    """The parts of a vLLM linear layer that its LoRA wrapper reads."""

    def __init__(self, d_in: int, d_out: int, gen: torch.Generator, bias: bool) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(d_out, d_in, generator=gen), requires_grad=False)
        self.bias = torch.nn.Parameter(torch.randn(d_out, generator=gen), requires_grad=False) if bias else None
        self.quant_method, self.skip_bias_add, self.gather_output, self.return_bias = _Quant(), False, False, True
        self.input_is_parallel, self.reduce_results = True, True

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.quant_method.apply(self, x, self.bias), None


def _layer(cls: type, ids: list[int], gen: torch.Generator, slices: tuple[int, ...], bias: bool = False) -> Any:
    """A vLLM LoRA layer of ``cls`` over a small base layer, 4 slots with rank-4 adapters, a patched wrapper."""
    for module in lora_ops.LAYER_MODULES:
        lora_ops.patch_lora_layers(importlib.import_module(module))
    layer = object.__new__(cls)
    torch.nn.Module.__init__(layer)
    layer.base_layer = _Base(16, sum(slices), gen, bias)
    layer.tp_size, layer.tp_rank, layer._enable_aux_cuda_stream, layer.n_slices = 1, 0, False, len(slices)
    layer.output_slices = slices
    layer.lora_a_stacked = tuple(torch.randn(4, 1, 4, 16, generator=gen) / 4 for _ in slices)
    layer.lora_b_stacked = tuple(torch.randn(4, 1, size, 4, generator=gen) / 2 for size in slices)

    class Patched(punica_cpu.PunicaWrapperCPU):
        pass

    lora_ops.patch_punica_wrapper(Patched)
    wrapper = Patched(64, 4, "cpu")
    wrapper.update_metadata(LoRAMapping(ids, ids, is_prefill=False), [1, 2, 3, 4], 4, 100)
    layer.punica_wrapper = wrapper
    return layer


def _both(layer: Any, x: torch.Tensor, monkeypatch: pytest.MonkeyPatch) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(vLLM's forward, the lean forward, calls of the wrapper's add_lora_linear by the lean one)."""
    calls = []
    add = type(layer.punica_wrapper).add_lora_linear
    monkeypatch.setattr(type(layer.punica_wrapper), "add_lora_linear", lambda *a, **k: calls.append(1) or add(*a, **k))
    stock = type(layer).forward.__wrapped__(layer, x)[0]
    calls.clear()
    lean = layer.forward(x)[0]
    return stock, lean, len(calls)


@pytest.mark.parametrize("cls,slices,bias", [
    (column_parallel_linear.QKVParallelLinearWithLoRA, SLICES, False),
    (column_parallel_linear.MergedColumnParallelLinearWithLoRA, (24, 24), True),
    (row_parallel_linear.RowParallelLinearWithLoRA, (48,), True),
])
@pytest.mark.parametrize("ids", [[1, 0, 3, 3, 2], [2], [0, 0, 0]])
def test_lean_forward_equals_vllms_forward(cls: type, slices: tuple[int, ...], bias: bool, ids: list[int],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Bit for bit, rows with and without adapters, a single stream and a base-only step, with and without
    bias; and without going through vLLM's punica ``add_lora_linear``."""
    gen = torch.Generator().manual_seed(len(ids))
    layer = _layer(cls, ids, gen, slices, bias)
    x = torch.randn(len(ids), 16, generator=gen)
    stock, lean, calls = _both(layer, x, monkeypatch)
    assert torch.equal(stock, lean)
    assert calls == 0
    if all(i == 0 for i in ids):
        assert torch.equal(lean, layer.base_layer(x)[0]), "a base-only step adds nothing"
    else:
        assert not torch.equal(lean, layer.base_layer(x)[0])


def test_lean_forward_hands_other_cases_to_vllm(monkeypatch: pytest.MonkeyPatch) -> None:
    """No plan for the step, tensor parallelism, or a class that overrides ``apply`` (vLLM's fully sharded
    variants) run vLLM's own forward."""
    gen = torch.Generator().manual_seed(0)
    layer = _layer(column_parallel_linear.QKVParallelLinearWithLoRA, [1, 2], gen, SLICES)
    x = torch.randn(2, 16, generator=gen)
    state = lora_ops.state_of(layer.punica_wrapper)
    plan, state.token_plan = state.token_plan, None
    stock, lean, calls = _both(layer, x, monkeypatch)
    assert calls == 1 and torch.equal(stock, lean)
    state.token_plan = plan

    layer.tp_size = 2
    assert _both(layer, torch.randn(2, 16, generator=gen), monkeypatch)[2] == 1
    layer.tp_size = 1
    assert _both(layer, torch.randn(2, 16, generator=gen), monkeypatch)[2] == 0

    class Sharded(column_parallel_linear.QKVParallelLinearWithLoRA):
        def apply(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
            return super().apply(x, bias)

    layer.__class__ = Sharded
    assert layer.forward(torch.randn(2, 16, generator=gen)) is not None
    calls: list[int] = []
    add = type(layer.punica_wrapper).add_lora_linear
    monkeypatch.setattr(type(layer.punica_wrapper), "add_lora_linear", lambda *a, **k: calls.append(1) or add(*a, **k))
    layer.forward(torch.randn(2, 16, generator=gen))
    assert calls == [1]


def test_a_steady_plan_costs_each_layer_one_lookup_and_slot_writes_are_seen(monkeypatch: pytest.MonkeyPatch) -> None:
    """Decode steps reuse the plan: the layer's packed weights are looked up once per plan; a slot write
    announced the way vLLM writes (set_lora -> mark_set) is seen by the very next step."""
    gen = torch.Generator().manual_seed(3)
    layer = _layer(column_parallel_linear.QKVParallelLinearWithLoRA, [2, 2], gen, SLICES)
    state = lora_ops.state_of(layer.punica_wrapper)
    x = torch.randn(2, 16, generator=gen)
    first = layer.forward(x)[0]
    packs: list[int] = []
    real = state.packed
    monkeypatch.setattr(state, "packed", lambda *a: packs.append(1) or real(*a))
    assert torch.equal(layer.forward(x)[0], first) and packs == []
    layer.lora_b_stacked[0][1].mul_(2)  # slot 1 holds the adapter of id 2
    state.mark_set(layer.lora_a_stacked, layer.lora_b_stacked, 1)
    stock, lean, _ = _both(layer, x, monkeypatch)
    assert torch.equal(stock, lean) and not torch.equal(lean, first)


def test_a_layer_without_a_delta_for_the_steps_adapter_adds_nothing() -> None:
    gen = torch.Generator().manual_seed(4)
    layer = _layer(row_parallel_linear.RowParallelLinearWithLoRA, [4], gen, (48,))
    layer.lora_b_stacked[0][3].zero_()  # id 4's slot: no delta in this layer (a q/v adapter in o_proj)
    x = torch.randn(1, 16, generator=gen)
    assert torch.equal(layer.forward(x)[0], layer.base_layer(x)[0])
    assert lora_ops.state_of(layer.punica_wrapper).step_weights(layer.lora_a_stacked, layer.lora_b_stacked,
                                                                 (48,)) is None
