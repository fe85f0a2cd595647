"""vLLM's CPU compilation with LoRA: each layer's delta is an op in the graph that reads the step's plan when
it runs (no engine needed; the real engine's comparison: scripts/inprocess_ab.py compile)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch
from vllm.config import CompilationConfig, CompilationMode, VllmConfig, set_current_vllm_config
from vllm.forward_context import set_forward_context
from vllm.lora.layers import column_parallel_linear, row_parallel_linear
from vllm.lora.layers.utils import LoRAMapping

from loradock.plugin import compiled
from loradock.plugin.forward import OP_NAME_ATTR
from tests.plugin.test_forward import SLICES, _layer


def _config(mode: CompilationMode = CompilationMode.VLLM_COMPILE) -> VllmConfig:
    return VllmConfig(compilation_config=CompilationConfig(mode=mode))


def _remap(layer: Any, ids: list[int]) -> None:
    layer.punica_wrapper.update_metadata(LoRAMapping(ids, ids, is_prefill=False), [1, 2, 3, 4], 4, 100)


@pytest.mark.parametrize("cls,slices", [(column_parallel_linear.QKVParallelLinearWithLoRA, SLICES),
                                        (row_parallel_linear.RowParallelLinearWithLoRA, (48,))])
def test_compiled_layer_reads_the_plan_each_step(cls: type, slices: tuple[int, ...]) -> None:
    """Traced once with the whole graph (no break), the layer then follows every new mapping: its output is
    vLLM's own forward's for each of them, rows with and without adapters, one adapter, and none."""
    gen = torch.Generator().manual_seed(3)
    layer = _layer(cls, [1, 0, 3, 3, 2], gen, slices)
    config = _config()
    with set_current_vllm_config(config):
        compiled.name_layer(layer, "model.layers.0.proj")
    assert layer.__dict__[OP_NAME_ATTR] == "model.layers.0.proj" + compiled.SUFFIX
    step = torch.compile(lambda x: layer.forward(x)[0], fullgraph=True, backend="aot_eager", dynamic=True)
    stock = type(layer).forward.__wrapped__
    for ids in ([1, 0, 3, 3, 2], [2, 2, 2, 2, 2], [0, 0, 0, 0, 0], [3, 1, 1], [0, 4, 0]):
        _remap(layer, ids)
        x = torch.randn(len(ids), 16, generator=gen)
        with set_forward_context(None, config):
            got = step(x)
        torch.testing.assert_close(got, stock(layer, x)[0], rtol=1e-5, atol=1e-5)


def test_a_layer_without_an_op_is_refused_in_a_compiled_engine() -> None:
    """A LoRA class whose output is not base + delta would have its Python frozen into the graph: refused with
    the setting to change; in an eager engine nothing is named."""

    class Sharded(column_parallel_linear.ColumnParallelLinearWithLoRA):
        def apply(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
            return x

    layer = _layer(Sharded, [1], torch.Generator().manual_seed(0), (48,))
    with set_current_vllm_config(_config()), pytest.raises(ValueError, match="LORADOCK_COMPILE=false"):
        compiled.name_layer(layer, "model.x")
    plain = _layer(column_parallel_linear.ColumnParallelLinearWithLoRA, [1], torch.Generator().manual_seed(0), (48,))
    with set_current_vllm_config(_config(CompilationMode.NONE)):
        compiled.name_layer(plain, "model.y")
    assert OP_NAME_ATTR not in plain.__dict__


def _vllm_config(tp: int = 1, lora: bool = True, mode: CompilationMode = CompilationMode.VLLM_COMPILE) -> Any:
    return SimpleNamespace(lora_config=object() if lora else None,
                           compilation_config=SimpleNamespace(mode=mode),
                           parallel_config=SimpleNamespace(tensor_parallel_size=tp, pipeline_parallel_size=1))


def test_platform_keeps_compilation_with_lora_where_the_ops_carry_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """vLLM's CPU check turns compilation off whenever LoRA is enabled; wrapped, it keeps it on when loradock
    asked (LORADOCK_COMPILE) for one process of tensor parallelism, and still turns it off otherwise (vLLM's
    own server carrying the plugin keeps vLLM's choice). The LoRA config is left in place."""
    monkeypatch.setenv("LORADOCK_COMPILE", "true")

    class Platform:
        @classmethod
        def check_and_update_config(cls, vllm_config: Any) -> None:
            if vllm_config.lora_config is not None:  # what vllm/platforms/cpu.py does
                vllm_config.compilation_config.mode = CompilationMode.NONE

    compiled.keep_compilation(Platform)
    kept, sharded, eager = _vllm_config(), _vllm_config(tp=2), _vllm_config(mode=CompilationMode.NONE)
    lora = kept.lora_config
    for config in (kept, sharded, eager):
        Platform.check_and_update_config(config)
    assert kept.compilation_config.mode == CompilationMode.VLLM_COMPILE and kept.lora_config is lora
    assert sharded.compilation_config.mode == CompilationMode.NONE
    assert eager.compilation_config.mode == CompilationMode.NONE
    assert not compiled.compiles_with_lora(_vllm_config(lora=False))
    monkeypatch.setenv("LORADOCK_COMPILE", "false")
    unasked = _vllm_config()
    Platform.check_and_update_config(unasked)
    assert unasked.compilation_config.mode == CompilationMode.NONE
