"""What the grouped kernels keep between calls, in one object owned by each punica wrapper instance.

vLLM's punica wrapper (one per model runner) updates the step's row-to-slot mapping once per step, and its
LoRA layers write adapter weights into their stacked tensors in place (``set_lora`` / ``reset_lora``).
:class:`LoRAState` holds what is derived from both: the step's plans, per layer the packed weights and live
slots, and which slots each layer's ``set_lora`` wrote since their last reset (the others are zero and are
never read: see :mod:`loradock.plugin.slots`). Layers and tensors are keyed by the address of their
(first) stacked tensor, stable because vLLM writes in place and keeps the tensors for the engine's life; the
cached values hold references to those tensors, so an address cannot be reused. Each cached value is also
checked against the tensors' version counters, so a write nobody announced is still seen (on the lean
forward's path from the next step plan on: :meth:`LoRAState.step_weights`).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import torch

from loradock.plugin import ops, packed
from loradock.plugin.packed import PackedLoRA
from loradock.plugin.plan import SegmentPlan, plan_segments

Weights: TypeAlias = "torch.Tensor | tuple[torch.Tensor, ...] | list[torch.Tensor]"


def _tensors(w: Weights) -> tuple[torch.Tensor, ...]:
    return tuple(w) if isinstance(w, (tuple, list)) else (w,)


def layer_key(w: Weights) -> int:
    """The cache key of a layer or tensor: the address of its first stacked weight tensor."""
    return int(_tensors(w)[0].data_ptr())


_version = operator.attrgetter("_version")


def _versions(*groups: Weights) -> tuple[int, ...]:
    return tuple(map(_version, (t for g in groups for t in _tensors(g))))


@dataclass
class _Entry:
    tensors: tuple[torch.Tensor, ...]  # keeps the layer's tensors (and so the key's address) alive
    versions: tuple[int, ...]
    value: Any


@dataclass
class LoRAState:
    """Per punica wrapper: this step's plans, per layer the packed weights, live and written slots."""

    token_plan: SegmentPlan | None = None  # rows = the step's tokens (linear, embedding, shrink/expand)
    sampler_plan: SegmentPlan | None = None  # rows = the tokens sampled this step (logits)
    _packed: dict[int, _Entry] = field(default_factory=dict)
    _live: dict[tuple[int, ...], _Entry] = field(default_factory=dict)
    _dirty: dict[int, set[int]] = field(default_factory=dict)  # slots rewritten since the layer was packed
    _written: dict[int, set[int]] = field(default_factory=dict)  # per tracked tensor: slots set since reset
    _tracked: dict[int, torch.Tensor] = field(default_factory=dict)
    # Per layer (its lora_a tuple's id): (that tuple, its packed weights, or None when no slot of the current
    # plan has a delta there). Valid while the plan stands and no slot is written; see :meth:`step_weights`.
    _step: dict[int, tuple[Any, PackedLoRA | None]] = field(default_factory=dict)

    def update(self, token_indices: torch.Tensor, sampler_indices: torch.Tensor) -> None:
        """Group this step's rows by slot (vLLM calls this when the mapping changes, outside the forward)."""
        self.token_plan = plan_segments(token_indices)
        self.sampler_plan = plan_segments(sampler_indices)
        self._step.clear()

    def track(self, *groups: Weights) -> None:
        """Start tracking writes to these (all-zero) tensors: only slots ``set_lora`` writes are read later."""
        for t in (t for g in groups for t in _tensors(g)):
            self._tracked[layer_key(t)] = t
            self._written.setdefault(layer_key(t), set())

    def written(self, w: Weights) -> list[int] | None:
        """Slots of this (first) tensor written since their last reset; None when it is not tracked."""
        slots = self._written.get(layer_key(w))
        return None if slots is None else sorted(slots)

    def is_clean(self, lora_a: Weights, lora_b: Weights, index: int) -> bool:
        """Whether slot ``index`` of a tracked layer is known to be all zero (nothing set it since its reset)."""
        sets = [self._written.get(layer_key(t)) for t in (*_tensors(lora_a), *_tensors(lora_b))]
        return all(slots is not None and index not in slots for slots in sets)

    def mark_set(self, lora_a: Weights, lora_b: Weights, index: int) -> None:
        """vLLM's ``set_lora`` wrote slot ``index`` of a layer."""
        self._mark(lora_a, lora_b, index, written=True)

    def mark_reset(self, lora_a: Weights, lora_b: Weights, index: int) -> None:
        """vLLM's ``reset_lora`` zeroed slot ``index`` of a layer."""
        self._mark(lora_a, lora_b, index, written=False)

    def _mark(self, lora_a: Weights, lora_b: Weights, index: int, written: bool) -> None:
        self._step.clear()
        self._dirty.setdefault(layer_key(lora_a), set()).add(int(index))
        for t in (*_tensors(lora_a), *_tensors(lora_b)):
            slots = self._written.get(layer_key(t))
            if slots is not None:
                (slots.add if written else slots.discard)(int(index))

    def packed(self, lora_a: tuple[torch.Tensor, ...], lora_b: tuple[torch.Tensor, ...],
               output_slices: tuple[int, ...]) -> packed.PackedLoRA:
        """The layer's packed weights, repacked where vLLM rewrote slots since the last call."""
        key = layer_key(lora_a)
        entry = self._packed.get(key)
        if entry is not None and _versions(entry.tensors) == entry.versions:
            return entry.value
        versions = _versions(lora_a, lora_b)
        dirty = self._dirty.pop(key, set())
        value = None
        if entry is not None and dirty:
            value = packed.repack_slots(entry.value, lora_a, lora_b, output_slices, sorted(dirty))
        if value is None:
            value = packed.pack(lora_a, lora_b, output_slices, self._candidates(lora_a, lora_b, entry, dirty))
        self._packed[key] = _Entry((*lora_a, *lora_b), versions, value)
        return value

    def step_weights(self, lora_a: tuple[torch.Tensor, ...], lora_b: tuple[torch.Tensor, ...],
                     output_slices: tuple[int, ...]) -> PackedLoRA | None:
        """:meth:`packed` for the current token plan, or None when none of its slots has a delta in this layer.

        Looked up once per layer and plan: every decode step of the same requests reuses the plan (vLLM updates
        the mapping only when it changes), so such a step costs each layer one dict lookup. A slot written
        through ``set_lora`` / ``reset_lora`` (how vLLM writes them) clears these lookups; a write nobody
        announced is seen by :meth:`packed`'s version check from the next plan on.
        """
        hit = self._step.get(id(lora_a))
        if hit is not None and hit[0] is lora_a:
            return hit[1]
        plan = self.token_plan
        found = self.packed(lora_a, lora_b, output_slices)
        value = found if plan is not None and any(found.row_of[slot] for slot in plan.slots) else None
        self._step[id(lora_a)] = (lora_a, value)
        return value

    def _candidates(self, lora_a: Weights, lora_b: Weights, entry: _Entry | None,
                    dirty: set[int]) -> list[int] | None:
        """Slots a full pack must read: the written ones of tracked tensors (None: all of them). A change no
        ``set_lora`` announced (versions moved, nothing marked) makes every slot a candidate."""
        if entry is not None and not dirty:
            return None
        found: set[int] = set()
        for t in (*_tensors(lora_a), *_tensors(lora_b)):
            slots = self.written(t)
            if slots is None:
                return None
            found.update(slots)
        return sorted(found)

    def live(self, *groups: Weights) -> tuple[bool, ...]:
        """Which slots hold a non-zero value in every one of these stacked tensors (a delta needs both a and
        b); tracked tensors are read at their written slots only."""
        tensors = tuple(t for g in groups for t in _tensors(g))
        key, versions = tuple(layer_key(t) for t in tensors), _versions(tensors)
        entry = self._live.get(key)
        if entry is None or entry.versions != versions:
            per_tensor = [ops.live_slots(t, self.written(t)) for t in tensors]
            value = tuple(all(flags) for flags in zip(*per_tensor, strict=True))
            entry = _Entry(tensors, versions, value)
            self._live[key] = entry
        return entry.value
