"""The grouped LoRA kernels agree with vLLM's own CPU ops (no engine needed)."""

from __future__ import annotations

import types

import pytest
import torch
from vllm.lora.layers.utils import LoRAMapping
from vllm.lora.ops.torch_ops import lora_ops as vllm_ops
from vllm.lora.punica_wrapper import punica_cpu
from vllm.lora.punica_wrapper.utils import compute_meta

from loradock.plugin import ops, packed, plan
from loradock.plugin import register as lora_ops

DTYPES = [torch.float32, torch.bfloat16]
RANKS = [1, 5, 8, 16]


def tol(dtype: torch.dtype) -> dict:
    return {"rtol": 2e-2, "atol": 4e-2} if dtype == torch.bfloat16 else {"rtol": 1e-4, "atol": 1e-4}


def mapping(rows: int, slots: int, gen: torch.Generator, with_base: bool) -> torch.Tensor:
    """Random slot per row; with_base mixes in -1 rows. The last slot stays unused (see zero_last_slot)."""
    low = -1 if with_base else 0
    return torch.randint(low, slots - 1, (rows,), generator=gen)


def weights(shape: tuple[int, ...], dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    """Random stacked LoRA weights scaled like real ones (outputs of order 1)."""
    w = (torch.randn(shape, generator=gen) / shape[-1] ** 0.5).to(dtype)
    w[-1] = 0  # vLLM's ops read weights[-1] for -1 rows; a zero last slot makes that "no adapter"
    return w


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rank", RANKS)
@pytest.mark.parametrize("with_base", [False, True])
def test_bgmv_ops_match_vllm(dtype: torch.dtype, rank: int, with_base: bool) -> None:
    gen = torch.Generator().manual_seed(rank * 7 + with_base)
    slots, rows, d_in, d_out = 5, 37, 48, 40
    idx = mapping(rows, slots, gen, with_base)
    x = torch.randn(rows, d_in, generator=gen).to(dtype)
    a = weights((slots, 1, rank, d_in), dtype, gen)
    b = weights((slots, 1, d_out, rank), dtype, gen)

    expected, got = torch.full((rows, rank), 9.0), torch.full((rows, rank), 9.0)
    vllm_ops.bgmv_shrink(x, a, expected, idx, 0.5)
    ops.bgmv_shrink(x, a, got, idx, 0.5)
    torch.testing.assert_close(got, expected, **tol(dtype))

    h = torch.randn(rows, rank, generator=gen).to(dtype)
    for add in (True, False):
        expected = torch.randn(rows, d_out + 30, generator=gen).to(dtype)
        got = expected.clone()
        vllm_ops.bgmv_expand_slice(h, b, expected, idx, 17, d_out, add)
        ops.bgmv_expand_slice(h, b, got, idx, 17, d_out, add)
        torch.testing.assert_close(got, expected, **tol(dtype))

        expected = torch.randn(rows, d_out, generator=gen).to(dtype)
        got = expected.clone()
        vllm_ops.bgmv_expand(h, b, expected, idx, add)
        ops.bgmv_expand(h, b, got, idx, add)
        torch.testing.assert_close(got, expected, **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rank", [3, 16])
def test_sgmv_ops_match_vllm(dtype: torch.dtype, rank: int) -> None:
    gen = torch.Generator().manual_seed(rank)
    slots, d_in, d_out = 4, 32, 24
    # Prefill-like runs: consecutive rows share a slot, a slot can come back later, -1 runs included.
    idx = torch.tensor([0] * 5 + [2] * 3 + [-1] * 4 + [0] * 2 + [1] * 6 + [-1] * 1)
    meta = compute_meta(idx)[:6]
    x = torch.randn(idx.numel(), d_in, generator=gen).to(dtype)
    a = weights((slots, 1, rank, d_in), dtype, gen)
    b = weights((slots, 1, d_out, rank), dtype, gen)

    expected, got = torch.zeros(idx.numel(), rank), torch.zeros(idx.numel(), rank)
    vllm_ops.sgmv_shrink(x, a, expected, *meta, 2.0)
    ops.sgmv_shrink(x, a, got, *meta, 2.0)
    torch.testing.assert_close(got, expected, **tol(dtype))

    h = expected.to(dtype)
    expected = torch.randn(idx.numel(), d_out + 8, generator=gen).to(dtype)
    got = expected.clone()
    vllm_ops.sgmv_expand_slice(h, b, expected, *meta, 8, d_out, True)
    ops.sgmv_expand_slice(h, b, got, *meta, 8, d_out, True)
    torch.testing.assert_close(got, expected, **tol(dtype))

    expected = torch.randn(idx.numel(), d_out, generator=gen).to(dtype)
    got = expected.clone()
    vllm_ops.sgmv_expand(h, b, expected, *meta, False)
    ops.sgmv_expand(h, b, got, *meta, False)
    torch.testing.assert_close(got, expected, **tol(dtype))


def test_rows_without_adapter_get_no_delta() -> None:
    """vLLM's torch ops apply the last slot to -1 rows (vllm#48421); the grouped ops leave them alone."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(2, 1, 4, 8, generator=gen)
    idx = torch.tensor([0, -1, 1])
    x = torch.randn(3, 8, generator=gen)
    stock, grouped = torch.zeros(3, 4), torch.zeros(3, 4)
    vllm_ops.bgmv_shrink(x, a, stock, idx)
    ops.bgmv_shrink(x, a, grouped, idx)
    torch.testing.assert_close(stock[1], x[1] @ a[1, 0].T)
    assert torch.count_nonzero(grouped[1]) == 0
    torch.testing.assert_close(grouped[[0, 2]], stock[[0, 2]])


def make_wrappers() -> tuple[punica_cpu.PunicaWrapperCPU, punica_cpu.PunicaWrapperCPU]:
    """vLLM's wrapper and a patched subclass (the real class stays untouched in this process)."""

    class Patched(punica_cpu.PunicaWrapperCPU):
        pass

    lora_ops.patch_punica_wrapper(Patched, types.SimpleNamespace())
    return punica_cpu.PunicaWrapperCPU(512, 512, "cpu"), Patched(512, 512, "cpu")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "rows,with_base,sparse",
    [(1, False, False), (9, True, False), (40, False, True), (64, True, False), (300, True, True)],
)
def test_fused_linear_matches_vllm_wrapper(dtype: torch.dtype, rows: int, with_base: bool, sparse: bool) -> None:
    """A qkv-like layer (three slices), max rank 16, adapters of rank 8 on q and v only, like PEFT's.

    ``sparse``: the adapters in use sit in slots 0, 2 and 4 (vLLM reuses freed slots in any order).
    """
    gen = torch.Generator().manual_seed(rows)
    slots, d_in, slices = 6, 64, (64, 16, 16)
    a = tuple(weights((slots, 1, 16, d_in), dtype, gen) for _ in slices)
    b = tuple(weights((slots, 1, size, 16), dtype, gen) for size in slices)
    for t in (a[1], b[1], a[0][..., 8:, :], b[0][..., 8:], a[2][..., 8:, :], b[2][..., 8:]):
        t.zero_()
    ids = [int(i) + 1 if i >= 0 else 0 for i in mapping(rows, slots, gen, with_base)]
    if sparse:
        ids = [(i - 1) % 3 * 2 + 1 if i else 0 for i in ids]
    stock, patched = make_wrappers()
    for w in (stock, patched):
        w.update_metadata(LoRAMapping(ids, ids, is_prefill=True), list(range(1, slots + 1)), slots + 1, 100)
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


def test_plan_groups_rows_by_slot() -> None:
    step = plan.plan_segments(torch.tensor([2, -1, 0, 2, 0, 0]))
    slots = sorted(slot for slot, _, _ in step.segments)
    assert slots == [0, 2]
    assert step.num_rows == 6
    assert step.no_adapter is not None and step.no_adapter.flatten().tolist() == [0, 1, 0, 0, 0, 0]


def test_register_switch(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    cls = punica_cpu.PunicaWrapperCPU
    for name in ("update_metadata", "add_lora_linear"):
        monkeypatch.setattr(cls, name, getattr(cls, name))
    for name in ops.OPS:
        monkeypatch.setattr(punica_cpu, name, getattr(punica_cpu, name))
    monkeypatch.delattr(cls, "_loradock_patched", raising=False)

    monkeypatch.setenv(lora_ops.ENV_VAR, "vllm")
    lora_ops.register()
    assert punica_cpu.bgmv_shrink is vllm_ops.bgmv_shrink

    monkeypatch.setenv(lora_ops.ENV_VAR, "fast")
    with pytest.raises(ValueError, match="LORADOCK_LORA_OPS"):
        lora_ops.register()

    monkeypatch.delenv(lora_ops.ENV_VAR)
    lora_ops.register()
    assert punica_cpu.bgmv_shrink is ops.bgmv_shrink
    wrapper = cls(64, 8, "cpu")
    monkeypatch.delattr(cls, "_loradock_logged", raising=False)
    with caplog.at_level("INFO", logger="vllm.loradock_lora_ops"):
        wrapper.update_metadata(LoRAMapping([1, 0], [1, 0], is_prefill=True), [1, None], 3, 100)
        wrapper.update_metadata(LoRAMapping([0, 1], [0, 1], is_prefill=True), [1, None], 3, 100)
    assert sum("grouped LoRA ops active" in r.message for r in caplog.records) == 1
    monkeypatch.delattr(cls, "_loradock_patched")
    monkeypatch.delattr(cls, "_loradock_logged")


def _full_pack(a: tuple, b: tuple, slices: tuple) -> packed.PackedLoRA:
    """A from-scratch pack of the same weights (on clones, so no cache or dirty mark is shared)."""
    return packed.pack_lora(tuple(t.clone() for t in a), tuple(t.clone() for t in b), slices)


@pytest.mark.parametrize("dtype", DTYPES)
def test_incremental_repack_of_rewritten_slots_equals_a_full_pack(dtype: torch.dtype) -> None:
    """Loading one adapter repacks only its slot (marked by vLLM's set_lora/reset_lora), with the same result."""
    gen = torch.Generator().manual_seed(7)
    slots, d_in, slices = 8, 32, (32, 8, 8)
    a = tuple(torch.zeros(slots, 1, 16, d_in, dtype=dtype) for _ in slices)
    b = tuple(torch.zeros(slots, 1, size, 16, dtype=dtype) for size in slices)

    def set_slot(slot: int, rank: int, on: tuple[int, ...]) -> None:
        for i in range(len(slices)):
            a[i][slot].zero_()
            b[i][slot].zero_()
            if i in on:
                a[i][slot, 0, :rank] = weights((rank, d_in), dtype, gen)
                b[i][slot, 0, :, :rank] = weights((slices[i], rank), dtype, gen)
        packed.mark_dirty(a, slot)

    def same(got: packed.PackedLoRA, want: packed.PackedLoRA) -> None:
        """Same live slots and the same per-slot delta (the layouts may differ: in place keeps the wider one)."""
        assert got.live == want.live
        for dt in (dtype, torch.float32):
            (ga, gb), (wa, wb) = got.weights(dt), want.weights(dt)
            torch.testing.assert_close(torch.bmm(ga.float(), gb.float()), torch.bmm(wa.float(), wb.float()))

    set_slot(0, 8, (0, 2))
    first = packed.pack_lora(a, b, slices)
    set_slot(5, 4, (0, 2))  # a smaller adapter into a free slot: repacked in place
    second = packed.pack_lora(a, b, slices)
    assert second.a_t is first.a_t, "a slot that fits the layout is repacked in place"
    same(second, _full_pack(a, b, slices))
    set_slot(0, 0, ())  # vLLM's reset_lora: the slot goes back to zero and is no longer live
    same(packed.pack_lora(a, b, slices), _full_pack(a, b, slices))
    set_slot(3, 16, (1,))  # wider than the layout (a new slice, a higher rank): a full repack
    wider = packed.pack_lora(a, b, slices)
    assert wider.a_t is not first.a_t
    same(wider, _full_pack(a, b, slices))


def test_vllm_layers_mark_the_slot_they_rewrite() -> None:
    """The plugin wraps vLLM's set_lora/reset_lora so the packer learns which slot changed."""
    import importlib

    from vllm.lora.layers import base_linear

    for module in lora_ops.LAYER_MODULES:
        lora_ops.patch_lora_layers(importlib.import_module(module))
    layer = object.__new__(base_linear.BaseLinearLayerWithLoRA)
    layer.n_slices = 1
    layer.lora_a_stacked = (torch.ones(4, 1, 2, 3),)
    layer.lora_b_stacked = (torch.ones(4, 1, 3, 2),)
    layer.reset_lora(2)
    assert layer.lora_a_stacked[0]._loradock_dirty == {2}
    assert not layer.lora_a_stacked[0][2].any() and layer.lora_a_stacked[0][1].all()
