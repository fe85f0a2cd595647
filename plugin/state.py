"""What the grouped kernels keep between calls, in one object owned by each punica wrapper instance.

vLLM's punica wrapper (one per model runner) updates the step's row-to-slot mapping once per step, and its
LoRA layers write adapter weights into their stacked tensors in place (``set_lora`` / ``reset_lora``).
:class:`LoRAState` holds what is derived from both: the step's plans, and per layer the packed weights and
which slots are live. Layers are keyed by the address of their first stacked tensor (stable: vLLM writes in
place and keeps the tensors for the engine's life; the state holds a reference, so the address cannot be
reused), and each cached value is checked against the tensors' version counters, so a write that no
``set_lora`` announced is still seen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeAlias

import torch

from loradock.plugin import ops, packed
from loradock.plugin.plan import SegmentPlan, plan_segments

Weights: TypeAlias = "torch.Tensor | tuple[torch.Tensor, ...] | list[torch.Tensor]"


def _tensors(w: Weights) -> tuple[torch.Tensor, ...]:
    return tuple(w) if isinstance(w, (tuple, list)) else (w,)


def layer_key(w: Weights) -> int:
    """The cache key of a layer: the address of its first stacked weight tensor."""
    return int(_tensors(w)[0].data_ptr())


def _versions(*groups: Weights) -> tuple[int, ...]:
    return tuple(t._version for g in groups for t in _tensors(g))


@dataclass
class _Entry:
    tensors: tuple[torch.Tensor, ...]  # keeps the layer's tensors (and so the key's address) alive
    versions: tuple[int, ...]
    value: Any


@dataclass
class LoRAState:
    """Per punica wrapper: this step's plans, and per layer the packed weights and live slots."""

    token_plan: SegmentPlan | None = None  # rows = the step's tokens (linear, embedding, shrink/expand)
    sampler_plan: SegmentPlan | None = None  # rows = the tokens sampled this step (logits)
    _packed: dict[int, _Entry] = field(default_factory=dict)
    _live: dict[int, _Entry] = field(default_factory=dict)
    _dirty: dict[int, set[int]] = field(default_factory=dict)

    def update(self, token_indices: torch.Tensor, sampler_indices: torch.Tensor) -> None:
        """Group this step's rows by slot (vLLM calls this when the mapping changes, outside the forward)."""
        self.token_plan = plan_segments(token_indices)
        self.sampler_plan = plan_segments(sampler_indices)

    def mark_dirty(self, lora_a: Weights, index: int) -> None:
        """vLLM rewrote slot ``index`` of a layer: the next :meth:`packed` repacks that slot only."""
        self._dirty.setdefault(layer_key(lora_a), set()).add(int(index))

    def packed(self, lora_a: tuple[torch.Tensor, ...], lora_b: tuple[torch.Tensor, ...],
               output_slices: tuple[int, ...]) -> packed.PackedLoRA:
        """The layer's packed weights, repacked where vLLM rewrote slots since the last call."""
        key, versions = layer_key(lora_a), _versions(lora_a, lora_b)
        entry = self._packed.get(key)
        if entry is not None and entry.versions == versions:
            return entry.value
        dirty = self._dirty.pop(key, set())
        value = None
        if entry is not None and dirty:
            value = packed.repack_slots(entry.value, lora_a, lora_b, output_slices, sorted(dirty))
        if value is None:
            value = packed.pack(lora_a, lora_b, output_slices)
        self._packed[key] = _Entry((*lora_a, *lora_b), versions, value)
        return value

    def live(self, w: torch.Tensor) -> tuple[bool, ...]:
        """Which slots of one stacked tensor are non-zero (a q/v-only adapter has none in lm_head)."""
        key, versions = layer_key(w), _versions(w)
        entry = self._live.get(key)
        if entry is None or entry.versions != versions:
            entry = _Entry((w,), versions, ops.live_slots(w))
            self._live[key] = entry
        return entry.value
