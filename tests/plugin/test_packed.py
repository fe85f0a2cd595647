"""The packed weights of one LoRA linear layer (:mod:`loradock.plugin.packed`): incremental repacks equal
full ones, only written slots are read, slot churn never grows them, and a step reads them in place."""

from __future__ import annotations

import torch

from loradock.plugin import packed, plan
from loradock.plugin.state import LoRAState
from tests.plugin.test_lora_ops import weights


def _full_pack(a: tuple, b: tuple, slices: tuple) -> packed.PackedLoRA:
    """A from-scratch pack of the same weights."""
    return packed.pack(a, b, slices)


def test_incremental_repack_of_rewritten_slots_equals_a_full_pack() -> None:
    """Loading one adapter repacks only its slot (marked by vLLM's set_lora/reset_lora), with the same result."""
    gen = torch.Generator().manual_seed(7)
    dtype = torch.bfloat16
    slots, d_in, slices = 8, 32, (32, 8, 8)
    a = tuple(torch.zeros(slots, 1, 16, d_in, dtype=dtype) for _ in slices)
    b = tuple(torch.zeros(slots, 1, size, 16, dtype=dtype) for size in slices)
    state = LoRAState()

    def set_slot(slot: int, rank: int, on: tuple[int, ...]) -> None:
        for i in range(len(slices)):
            a[i][slot].zero_()
            b[i][slot].zero_()
            if i in on:
                a[i][slot, 0, :rank] = weights((rank, d_in), dtype, gen)
                b[i][slot, 0, :, :rank] = weights((slices[i], rank), dtype, gen)
        state.mark_set(a, b, slot)

    def same(got: packed.PackedLoRA, want: packed.PackedLoRA) -> None:
        """Same live slots and the same per-slot delta (the layouts may differ: in place keeps the wider one)."""
        assert got.live == want.live
        for slot in range(slots):
            delta = [p.a_t[p.row_of[slot]] @ p.b_t[p.row_of[slot]] for p in (got, want)]
            torch.testing.assert_close(delta[0], delta[1])

    set_slot(0, 8, (0, 2))
    first = state.packed(a, b, slices)
    set_slot(5, 4, (0, 2))  # a smaller adapter into a free slot: repacked in place
    second = state.packed(a, b, slices)
    assert second.ranks == first.ranks and second.row_of[0] == first.row_of[0], "repacked, not packed again"
    same(second, _full_pack(a, b, slices))
    set_slot(0, 0, ())  # vLLM's reset_lora: the slot goes back to zero and is no longer live
    same(state.packed(a, b, slices), _full_pack(a, b, slices))
    set_slot(3, 16, (1,))  # wider than the layout (a new slice, a higher rank): a full repack
    wider = state.packed(a, b, slices)
    assert wider.ranks != first.ranks
    same(wider, _full_pack(a, b, slices))


def test_packing_reads_only_written_slots() -> None:
    """Garbage in a slot nothing wrote (a zero page in real use) is never read: the pack equals one of clean
    weights."""
    gen = torch.Generator().manual_seed(3)
    a, b = (torch.zeros(4, 1, 8, 16),), (torch.zeros(4, 1, 16, 8),)
    state = LoRAState()
    state.track(a, b)
    a[0][1, 0, :4] = torch.randn(4, 16, generator=gen)
    b[0][1, 0, :, :4] = torch.randn(16, 4, generator=gen)
    state.mark_set(a, b, 1)
    clean = packed.pack(tuple(t.clone() for t in a), tuple(t.clone() for t in b), (16,))
    a[0][3].fill_(float("nan"))  # unannounced garbage in an unwritten slot
    got = state.packed(a, b, (16,))
    assert got.live == clean.live == (False, True, False, False)
    torch.testing.assert_close(got.a_t[got.row_of[1]], clean.a_t[clean.row_of[1]])


def test_slot_churn_keeps_one_packed_row_per_slot() -> None:
    """Adapters loaded and unloaded again and again (hot swap, version churn) rewrite their slot's own packed
    row: the packed tensors never grow past slots + 1 rows and every slot's delta equals a full pack's."""
    gen = torch.Generator().manual_seed(11)
    slots, d_in, slices, rank = 4, 16, (16, 8), 4
    a = tuple(torch.zeros(slots, 1, 8, d_in) for _ in slices)
    b = tuple(torch.zeros(slots, 1, size, 8) for size in slices)
    state = LoRAState()

    def write(slot: int, on: bool) -> None:
        for i in range(len(slices)):
            a[i][slot].zero_()
            b[i][slot].zero_()
            if on:
                a[i][slot, 0, :rank] = weights((rank, d_in), torch.float32, gen)
                b[i][slot, 0, :, :rank] = weights((slices[i], rank), torch.float32, gen)
        (state.mark_set if on else state.mark_reset)(a, b, slot)

    write(0, True)
    write(1, True)
    state.packed(a, b, slices)
    for n in range(40):
        slot = n % 2
        write(slot, False)
        state.packed(a, b, slices)
        write(slot, True)
        got = state.packed(a, b, slices)
    assert got.a_t.shape[0] == slots + 1, f"{got.a_t.shape[0]} packed rows for {slots} slots"
    assert got.row_of == (1, 2, 0, 0)
    want = packed.pack(a, b, slices)
    for slot in range(slots):
        torch.testing.assert_close(got.a_t[got.row_of[slot]] @ got.b_t[got.row_of[slot]],
                                   want.a_t[want.row_of[slot]] @ want.b_t[want.row_of[slot]])


def test_packed_rows_of_consecutive_slots_are_views() -> None:
    """A step over consecutive slots reads the packed weights in place (no per-layer copy); scattered slots
    of a per-segment plan get one view per slot; only a batched plan over scattered slots gathers a copy."""
    gen = torch.Generator().manual_seed(5)
    a, b = (torch.zeros(6, 1, 8, 16),), (torch.zeros(6, 1, 16, 8),)
    for slot in range(6):
        a[0][slot, 0, :4] = torch.randn(4, 16, generator=gen)
        b[0][slot, 0, :, :4] = torch.randn(16, 4, generator=gen)
    pk = packed.pack(a, b, (16,))
    steps = {"consecutive": [1, 1, 2, 3, 3, 3], "scattered": [0, 5] + [2] * 12}  # scattered: one long segment
    consecutive, scattered = (plan.plan_segments(torch.tensor(rows)) for rows in steps.values())
    a_t, b_t = pk.weights_for(consecutive)
    assert a_t.untyped_storage().data_ptr() == pk.a_t.untyped_storage().data_ptr()
    assert b_t.untyped_storage().data_ptr() == pk.b_t.untyped_storage().data_ptr()
    assert not scattered.batched and scattered.slot_select is not None
    a_list, _ = pk.weights_for(scattered)
    assert all(t.untyped_storage().data_ptr() == pk.a_t.untyped_storage().data_ptr() for t in a_list)
    for step, rows in zip((consecutive, scattered), steps.values(), strict=True):
        x, y = torch.randn(len(rows), 16, generator=gen), torch.zeros(len(rows), 16)
        packed.lora_linear(y, x, pk, 1.0, step)
        want = torch.stack([x[i] @ a[0][s, 0].T @ b[0][s, 0].T for i, s in enumerate(rows)])
        torch.testing.assert_close(y, want)
