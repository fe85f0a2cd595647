"""The grouped LoRA kernels agree with vLLM's own CPU punica wrapper (no engine needed)."""

from __future__ import annotations

import importlib
import types

import pytest
import torch
from vllm.lora.layers.utils import LoRAMapping
from vllm.lora.punica_wrapper import punica_cpu

from loradock.plugin import ops, packed, plan, slots
from loradock.plugin import register as lora_ops
from loradock.plugin.state import LoRAState

DTYPES = [torch.float32, torch.bfloat16]
RANKS = [1, 5, 8, 16]


def tol(dtype: torch.dtype) -> dict:
    return {"rtol": 2e-2, "atol": 4e-2} if dtype == torch.bfloat16 else {"rtol": 1e-4, "atol": 1e-4}


def weights(shape: tuple[int, ...], dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    """Random stacked LoRA weights scaled like real ones (outputs of order 1).

    The last slot stays zero: vLLM's ops read ``weights[-1]`` for rows without an adapter (vllm#48421), so a
    zero last slot makes its results the correct ones to compare with.
    """
    w = (torch.randn(shape, generator=gen) / shape[-1] ** 0.5).to(dtype)
    w[-1] = 0
    return w


def lora_ids(rows: int, slots: int, gen: torch.Generator, with_base: bool, sparse: bool = False) -> list[int]:
    """A LoRA id per row (0 = base model); ids 1..slots-1 sit in slots 0..slots-2 (the last stays unused).

    ``sparse``: only slots 0, 2 and 4 are in use (vLLM reuses freed slots in any order).
    """
    ids = torch.randint(0 if with_base else 1, slots, (rows,), generator=gen).tolist()
    return [(i - 1) % 3 * 2 + 1 if i else 0 for i in ids] if sparse else ids


def make_wrappers(ids: list[int], sampled: list[int], slots: int, prefill: bool) -> tuple:
    """vLLM's wrapper and a patched subclass (the real class stays untouched in this process), same mapping."""

    class Patched(punica_cpu.PunicaWrapperCPU):
        pass

    lora_ops.patch_punica_wrapper(Patched)
    pair = punica_cpu.PunicaWrapperCPU(512, 512, "cpu"), Patched(512, 512, "cpu")
    for w in pair:
        w.update_metadata(LoRAMapping(ids, sampled, is_prefill=prefill), list(range(1, slots + 1)), slots, 100)
    return pair


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "rows,with_base,sparse,prefill",
    [(1, False, False, False), (9, True, False, False), (40, False, True, True), (64, True, False, False),
     (300, True, True, True)],
)
def test_linear_layer_matches_vllm(dtype: torch.dtype, rows: int, with_base: bool, sparse: bool,
                                   prefill: bool) -> None:
    """A qkv-like layer (three slices), max rank 16, adapters of rank 8 on q and v only, like PEFT's."""
    gen = torch.Generator().manual_seed(rows)
    slots, d_in, slices = 6, 64, (64, 16, 16)
    a = tuple(weights((slots, 1, 16, d_in), dtype, gen) for _ in slices)
    b = tuple(weights((slots, 1, size, 16), dtype, gen) for size in slices)
    for t in (a[1], b[1], a[0][..., 8:, :], b[0][..., 8:], a[2][..., 8:, :], b[2][..., 8:]):
        t.zero_()
    ids = lora_ids(rows, slots, gen, with_base, sparse)
    stock, patched = make_wrappers(ids, ids, slots, prefill)
    x = torch.randn(rows, d_in, generator=gen).to(dtype)
    y0 = torch.randn(rows, sum(slices), generator=gen).to(dtype)
    expected, got = y0.clone(), y0.clone()
    stock.add_lora_linear(expected, x, a, b, 1.0, slices)
    patched.add_lora_linear(got, x, a, b, 1.0, slices)
    torch.testing.assert_close(got, expected, **tol(dtype))

    # vLLM rewrites a slot in place when it loads another adapter there: the packed cache must notice.
    a[0][0].normal_(generator=gen)
    expected, got = y0.clone(), y0.clone()
    stock.add_lora_linear(expected, x, a, b, 1.0, slices)
    patched.add_lora_linear(got, x, a, b, 1.0, slices)
    torch.testing.assert_close(got, expected, **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rank", RANKS)
@pytest.mark.parametrize("prefill", [False, True])
def test_shrink_expand_logits_and_embedding_match_vllm(dtype: torch.dtype, rank: int, prefill: bool) -> None:
    """The generic grouped ops behind add_shrink / add_expand, add_lora_logits and add_lora_embedding."""
    gen = torch.Generator().manual_seed(rank * 7 + prefill)
    slots, rows, d_in, d_out = 5, 37, 48, 40
    ids = lora_ids(rows, slots, gen, with_base=True)
    sampled = ids[::3]
    stock, patched = make_wrappers(ids, sampled, slots, prefill)
    x = torch.randn(rows, d_in, generator=gen).to(dtype)
    a = tuple(weights((slots, 1, rank, d_in), dtype, gen) for _ in range(2))
    b = tuple(weights((slots, 1, d_out, rank), dtype, gen) for _ in range(2))

    want, got = torch.full((2, rows, rank), 9.0), torch.full((2, rows, rank), 9.0)
    stock.add_shrink(want, x, a, 0.5)
    patched.add_shrink(got, x, a, 0.5)
    torch.testing.assert_close(got, want, **tol(dtype))

    y0 = torch.randn(rows, 2 * d_out + 5, generator=gen).to(dtype)
    want, got = y0.clone(), y0.clone()
    stock.add_expand(want, want_h := torch.randn(2, rows, rank, generator=gen), b, (d_out, d_out), offset_start=5)
    patched.add_expand(got, want_h, b, (d_out, d_out), offset_start=5)
    torch.testing.assert_close(got, want, **tol(dtype))

    # Logits: one row per sampled token; vLLM keeps lm_head's A as (slots, 1, r, hidden).
    xs = torch.randn(len(sampled), d_in, generator=gen).to(dtype)
    y0 = torch.randn(len(sampled), d_out, generator=gen).to(dtype)
    want, got = y0.clone(), y0.clone()
    stock.add_lora_logits(want, xs, a[0], b[0], 2.0)
    patched.add_lora_logits(got, xs, a[0], b[0], 2.0)
    torch.testing.assert_close(got, want, **tol(dtype))

    h = torch.randn(rows, rank, generator=gen).to(dtype)
    y0 = torch.randn(rows, d_out, generator=gen).to(dtype)
    want, got = y0.clone(), y0.clone()
    stock.add_lora_embedding(want, h, b[1])
    patched.add_lora_embedding(got, h, b[1])
    torch.testing.assert_close(got, want, **tol(dtype))


def test_rows_without_adapter_get_no_delta() -> None:
    """vLLM's torch ops apply the last slot to -1 rows (vllm#48421); the grouped ops leave them alone."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(2, 1, 4, 8, generator=gen)
    x = torch.randn(3, 8, generator=gen)
    stock, grouped = make_wrappers([1, 0, 2], [1, 0, 2], 2, prefill=False)
    want, got = torch.zeros(1, 3, 4), torch.zeros(1, 3, 4)
    stock.add_shrink(want, x, (a,), 1.0)
    grouped.add_shrink(got, x, (a,), 1.0)
    torch.testing.assert_close(want[0, 1], x[1] @ a[1, 0].T)
    assert torch.count_nonzero(got[0, 1]) == 0
    torch.testing.assert_close(got[0, [0, 2]], want[0, [0, 2]])


def test_a_base_only_step_runs_no_lora_work() -> None:
    """With LoRA enabled, a step with no adapter row leaves the outputs alone and never packs (or even reads)
    the stacked weights: garbage in them changes nothing."""
    a = (torch.full((2, 1, 4, 8), float("nan")),)
    b = (torch.full((2, 1, 8, 4), float("nan")),)
    _, grouped = make_wrappers([-1, -1, -1], [-1, -1, -1], 2, prefill=False)
    y = torch.ones(3, 8)
    assert grouped.add_lora_linear(y, torch.ones(3, 8), a, b, 1.0, (8,)) is None
    assert bool((y == 1).all())
    assert lora_ops.state_of(grouped)._packed == {}, "nothing was packed"
    logits = torch.ones(3, 8)
    grouped.add_lora_logits(logits, torch.ones(3, 8), a[0], b[0], 1.0)
    assert bool((logits == 1).all())


def test_plan_groups_rows_by_slot() -> None:
    step = plan.plan_segments(torch.tensor([2, -1, 0, 2, 0, 0]))
    assert step.slots == (0, 2)
    assert step.num_rows == 6
    assert step.no_adapter is not None and step.no_adapter.flatten().tolist() == [0, 1, 0, 0, 0, 0]
    base_only = plan.plan_segments(torch.tensor([-1, -1]))
    assert base_only.slots == () and base_only.num_rows == 2


def test_an_all_zero_slot_costs_no_matmul() -> None:
    """A q/v adapter has zero weights in the MLP layers: those layers skip the adapter math entirely."""
    a, b = (torch.zeros(3, 1, 8, 16),), (torch.zeros(3, 1, 16, 8),)
    state = LoRAState()
    state.update(torch.tensor([0, 1, -1]), torch.tensor([0, 1, -1]))
    pk = state.packed(a, b, (16,))
    assert pk.live == (False, False, False) and pk.a_t.shape[-1] == 0
    y = torch.ones(3, 16)
    assert state.token_plan is not None
    packed.lora_linear(y, torch.ones(3, 16), pk, 1.0, state.token_plan)
    assert bool((y == 1).all())
    assert state.packed(a, b, (16,)) is pk, "unchanged weights reuse the cached pack"


def test_register_switch(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    cls = punica_cpu.PunicaWrapperCPU
    for name in ("update_metadata", "add_lora_linear", "add_lora_logits", "add_lora_embedding", "_apply_shrink",
                 "_apply_expand"):
        monkeypatch.setattr(cls, name, getattr(cls, name))
    monkeypatch.delattr(cls, "_loradock_patched", raising=False)
    stock_linear = cls.add_lora_linear

    monkeypatch.setenv(lora_ops.ENV_VAR, "vllm")
    lora_ops.register()
    assert cls.add_lora_linear is stock_linear

    monkeypatch.setenv(lora_ops.ENV_VAR, "fast")
    with pytest.raises(ValueError, match="LORADOCK_LORA_OPS"):
        lora_ops.register()

    monkeypatch.delenv(lora_ops.ENV_VAR)
    lora_ops.register()
    assert cls.add_lora_linear is not stock_linear
    wrapper = cls(64, 8, "cpu")
    monkeypatch.delattr(cls, "_loradock_logged", raising=False)
    with caplog.at_level("INFO", logger="vllm.loradock_lora_ops"):
        wrapper.update_metadata(LoRAMapping([1, 0], [1, 0], is_prefill=True), [1, None], 3, 100)
        wrapper.update_metadata(LoRAMapping([0, 1], [0, 1], is_prefill=True), [1, None], 3, 100)
    assert sum("grouped LoRA ops active" in r.message for r in caplog.records) == 1
    assert lora_ops.state_of(wrapper).token_plan.slots == (0,)  # type: ignore[union-attr]
    monkeypatch.delattr(cls, "_loradock_patched")
    monkeypatch.delattr(cls, "_loradock_logged")


def _layer(slots: int = 4, rows: int = 2, cols: int = 3) -> object:
    """A vLLM linear LoRA layer with its stacked weights and a punica wrapper, without a model around it."""
    from vllm.lora.layers import base_linear

    for module in lora_ops.LAYER_MODULES:
        lora_ops.patch_lora_layers(importlib.import_module(module))
    layer = object.__new__(base_linear.BaseLinearLayerWithLoRA)
    layer.n_slices, layer.tp_size = 1, 1
    layer.lora_a_stacked = (torch.zeros(slots, 1, rows, cols),)
    layer.lora_b_stacked = (torch.zeros(slots, 1, cols, rows),)
    return layer


def test_vllm_layers_mark_the_slot_they_rewrite() -> None:
    """The plugin wraps vLLM's set_lora/reset_lora so the wrapper's state learns which slot changed."""
    layer = _layer()
    layer.set_mapping(punica_cpu.PunicaWrapperCPU(8, 8, "cpu"))
    state = lora_ops.state_of(layer.punica_wrapper)
    key = layer.lora_a_stacked[0].data_ptr()
    layer.set_lora(2, torch.ones(2, 3), torch.ones(3, 2))
    assert state._dirty == {key: {2}} and state.written(layer.lora_a_stacked) == [2]
    assert ops.live_slots(layer.lora_a_stacked[0]) == (False, False, True, False)
    layer.reset_lora(2)
    assert state.written(layer.lora_a_stacked) == [] and not layer.lora_a_stacked[0].any()
    assert not hasattr(layer.lora_a_stacked[0], "_loradock_dirty"), "no cache lives on vLLM's tensors"


def test_reset_of_a_clean_slot_writes_nothing() -> None:
    """vLLM resets a slot before every load and for every module an adapter lacks; untouched zero pages stay
    unallocated only if those resets do not write them."""
    layer = _layer()
    layer.set_mapping(punica_cpu.PunicaWrapperCPU(8, 8, "cpu"))
    before = layer.lora_a_stacked[0]._version
    layer.reset_lora(1)
    assert layer.lora_a_stacked[0]._version == before, "a clean slot is not written"
    layer.set_lora(1, torch.ones(2, 3), torch.ones(3, 2))
    layer.reset_lora(1)
    assert not layer.lora_a_stacked[0].any() and layer.lora_a_stacked[0]._version > before


def test_stacked_weights_cost_no_memory_until_written() -> None:
    import psutil

    layer = _layer(slots=32, rows=16, cols=2**17)  # 2 x 256 MiB of float32 slots
    rss = psutil.Process().memory_info().rss
    slots.make_lazy(layer)
    slots.release_freed_memory()
    grew = psutil.Process().memory_info().rss - rss
    assert layer.lora_a_stacked[0].shape == (32, 1, 16, 2**17) and layer.lora_a_stacked[0].dtype == torch.float32
    layer.lora_a_stacked[0][3, 0, :2].fill_(1.0)
    assert grew < 64 * 2**20, f"lazy slots took {grew / 2**20:.0f} MiB"
    assert layer.lora_a_stacked[0][3].sum() == 2 * 2**17 and layer.lora_b_stacked[0][5].abs().sum() == 0


def test_views_of_swapped_weights_follow_them() -> None:
    """vLLM's embedding layer keeps a 2-D view of its stacked weights; the swap rebuilds it over the new ones."""
    layer = types.SimpleNamespace(lora_a_stacked=torch.zeros(4, 6, 2), lora_b_stacked=torch.zeros(4, 1, 3, 2))
    layer.lora_a_stacked_2d = layer.lora_a_stacked.view(24, 2)
    slots.make_lazy(layer)
    layer.lora_a_stacked[1, 2] = 5.0
    assert layer.lora_a_stacked_2d[8].tolist() == [5.0, 5.0]


def test_adapter_removal_hands_freed_memory_back(monkeypatch) -> None:
    from loradock.plugin import register, slots

    calls = []
    monkeypatch.setattr(slots, "release_freed_memory", lambda: calls.append(1))

    class Manager:
        def remove_adapter(self, adapter_id: int) -> bool:
            return adapter_id == 1

    register.patch_adapter_removal(Manager)
    register.patch_adapter_removal(Manager)  # idempotent: one wrapper
    assert Manager().remove_adapter(1) and not Manager().remove_adapter(2)
    assert calls == [1], "trimmed once, after the removal that freed weights"
