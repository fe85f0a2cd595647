"""vLLM general plugin: swap segment-grouped LoRA kernels into vLLM's CPU punica wrapper.

The entry point ``vllm.general_plugins: loradock_lora_ops`` (pyproject.toml) makes vLLM call
:func:`register` in every process it starts, the engine core included. With ``LORADOCK_LORA_OPS=grouped``
(the default) it patches methods of ``PunicaWrapperCPU``, each of which falls back to vLLM's own when the
step's plan does not cover its rows:

- ``update_metadata`` (called once per step, outside the model's forward) also groups the rows by adapter
  slot, so the layers of that step do not (:class:`~loradock.plugin.state.LoRAState`, one per wrapper);
- ``add_lora_linear`` (every LoRA linear layer) runs :func:`loradock.plugin.packed.lora_linear`;
- ``add_lora_logits``, ``add_lora_embedding`` and the shrink/expand funnels (``_apply_shrink``,
  ``_apply_expand``) run the generic grouped ops of :mod:`loradock.plugin.ops`.

vLLM's LoRA layers are patched too (:func:`patch_lora_layers`): their stacked weights are allocated lazily
(:mod:`loradock.plugin.slots`), their ``set_lora`` / ``reset_lora`` tell the wrapper's state which slot
they rewrote (loading one adapter repacks one slot, and only written slots are ever read), and a
``reset_lora`` of a slot nothing wrote is skipped; the linear layers' ``forward`` runs the base layer and the
packed delta without vLLM's per-layer wrapper code (:mod:`loradock.plugin.forward`). With ``LORADOCK_COMPILE=true``
(what ``loradock serve`` exports by default) vLLM's CPU compilation stays on with LoRA, each layer's delta a
custom op in the graph (:mod:`loradock.plugin.compiled`); the engine-core busy loop runs with room on the
frame stack (:mod:`loradock.plugin.stack`, :func:`patch_busy_loops`).
``LORADOCK_LORA_OPS=vllm`` leaves vLLM untouched. Only the CPU wrapper is patched; GPU builds use their own
Triton kernels and are unaffected.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
from typing import Any

import torch

from loradock.plugin import compiled, ops, packed, slots
from loradock.plugin.forward import STATE_ATTR, lean_forward
from loradock.plugin.stack import with_room
from loradock.plugin.state import LoRAState

# vLLM configures handlers for its own logger tree only; a child of it shows up in the engine's log.
log = logging.getLogger("vllm.loradock_lora_ops")

ENV_VAR = "LORADOCK_LORA_OPS"
MODES = ("vllm", "grouped")
_PATCHED_ATTR = "_loradock_patched"
_LOGGED_ATTR = "_loradock_logged"
# Modules whose LoRA layer classes define set_lora / reset_lora (the linear ones carry the slot weights).
LAYER_MODULES = (
    "vllm.lora.layers.base",
    "vllm.lora.layers.base_linear",
    "vllm.lora.layers.column_parallel_linear",
    "vllm.lora.layers.row_parallel_linear",
    "vllm.lora.layers.replicated_linear",
    "vllm.lora.layers.logits_processor",
    "vllm.lora.layers.vocab_parallel_embedding",
)
_MARKS = "_loradock_marks"


def ops_mode() -> str:
    """The LoRA ops selected by ``LORADOCK_LORA_OPS`` (default ``grouped``)."""
    mode = os.environ.get(ENV_VAR, "").strip().lower() or "grouped"
    if mode not in MODES:
        raise ValueError(f"{ENV_VAR}={mode!r} is not valid: set it to one of {', '.join(MODES)}")
    return mode


def state_of(wrapper: Any) -> LoRAState:
    """The wrapper instance's :class:`LoRAState` (created on first use)."""
    state = wrapper.__dict__.get(STATE_ATTR)
    if state is None:
        state = LoRAState()
        setattr(wrapper, STATE_ATTR, state)
    return state


def _rows(t: torch.Tensor) -> torch.Tensor:
    return t.view(-1, t.shape[-1])


def patch_punica_wrapper(cls: Any) -> None:
    """Install the grouped kernels on a punica wrapper class (see the module docstring for which methods)."""
    orig = {name: getattr(cls, name) for name in ("update_metadata", "add_lora_linear", "add_lora_logits",
                                                   "add_lora_embedding", "_apply_shrink", "_apply_expand")}

    def update_metadata(self: Any, mapping: Any, *args: Any, **kwargs: Any) -> None:
        orig["update_metadata"](self, mapping, *args, **kwargs)
        state_of(self).update(self.token_lora_indices, self.sampler_indices)
        if not getattr(cls, _LOGGED_ATTR, False):
            setattr(cls, _LOGGED_ATTR, True)
            log.info("loradock grouped LoRA ops active in pid %d (%s=vllm keeps vLLM's)", os.getpid(), ENV_VAR)

    def add_lora_linear(self: Any, y: torch.Tensor, x: torch.Tensor, lora_a_stacked: tuple[torch.Tensor, ...],
                        lora_b_stacked: tuple[torch.Tensor, ...], scale: float, output_slices: tuple[int, ...],
                        **kwargs: Any) -> None:
        state = state_of(self)
        plan, x2, y2 = state.token_plan, _rows(x), _rows(y)
        if plan is None or not plan.fits(x2, y2):
            return orig["add_lora_linear"](self, y, x, lora_a_stacked, lora_b_stacked, scale, output_slices,
                                           **kwargs)
        if not plan.segments:  # a base-model-only step: no adapter row, nothing to add
            return None
        packed.lora_linear(y2, x2, state.packed(lora_a_stacked, lora_b_stacked, output_slices), scale, plan)
        return None

    def add_lora_logits(self: Any, y: torch.Tensor, x: torch.Tensor, lora_a_stacked: torch.Tensor,
                        lora_b_stacked: torch.Tensor, scale: float, **kwargs: Any) -> None:
        state = state_of(self)
        plan, x2, y2 = state.sampler_plan, _rows(x), _rows(y)
        if plan is None or not plan.fits(x2, y2):
            return orig["add_lora_logits"](self, y, x, lora_a_stacked, lora_b_stacked, scale, **kwargs)
        if not plan.segments:
            return None
        live = state.live(lora_a_stacked, lora_b_stacked)
        if any(live[slot] for slot in plan.slots):
            h = torch.empty(x2.shape[0], lora_b_stacked.shape[-1], dtype=torch.float32)
            ops.shrink(x2, lora_a_stacked, h, plan, scale, live)
            ops.expand(h, lora_b_stacked, y2, plan, 0, y2.shape[1], True, live)
        return None

    def add_lora_embedding(self: Any, y: torch.Tensor, x: torch.Tensor, lora_b_stacked: torch.Tensor,
                           add_inputs: bool = True, **kwargs: Any) -> None:
        state = state_of(self)
        plan = state.token_plan
        if plan is None or not plan.fits(x, y):
            return orig["add_lora_embedding"](self, y, x, lora_b_stacked, add_inputs, **kwargs)
        if not plan.segments and add_inputs:
            return None
        ops.expand(x, lora_b_stacked, y, plan, 0, y.shape[1], add_inputs, state.live(lora_b_stacked))
        return None

    def _apply_shrink(self: Any, y: torch.Tensor, x: torch.Tensor, w_t_all: torch.Tensor, scale: float) -> None:
        state = state_of(self)
        plan, y2 = state.token_plan, _rows(y)
        if plan is None or not plan.fits(x, y2):
            return orig["_apply_shrink"](self, y, x, w_t_all, scale)
        ops.shrink(x, w_t_all, y2, plan, scale, state.live(w_t_all))
        return None

    def _apply_expand(self: Any, y: torch.Tensor, x: torch.Tensor, w_t_all: torch.Tensor, y_offset: int,
                      y_slice_size: int, add_inputs: bool = True) -> None:
        state = state_of(self)
        plan = state.token_plan
        if plan is None or not plan.fits(x, y):
            return orig["_apply_expand"](self, y, x, w_t_all, y_offset, y_slice_size, add_inputs)
        ops.expand(x, w_t_all, y, plan, y_offset, y_slice_size, add_inputs, state.live(w_t_all))
        return None

    for name, fn in (("update_metadata", update_metadata), ("add_lora_linear", add_lora_linear),
                     ("add_lora_logits", add_lora_logits), ("add_lora_embedding", add_lora_embedding),
                     ("_apply_shrink", _apply_shrink), ("_apply_expand", _apply_expand)):
        setattr(cls, name, functools.wraps(orig[name])(fn))
    setattr(cls, _PATCHED_ATTR, True)


def _marks_writes(layer: Any) -> bool:
    """Whether every write to this layer's slots goes through a marked ``set_lora`` / ``reset_lora``."""
    return all(getattr(getattr(type(layer), name, None), _MARKS, False) for name in ("set_lora", "reset_lora"))


def _layer_state(layer: Any) -> LoRAState | None:
    wrapper = getattr(layer, "punica_wrapper", None)
    if wrapper is None or getattr(layer, "lora_a_stacked", None) is None or not _marks_writes(layer):
        return None
    return state_of(wrapper)


def _wrap(name: str, method: Any) -> Any:
    """``method`` of a LoRA layer class, with the bookkeeping of :func:`patch_lora_layers` around it."""

    @functools.wraps(method)
    def create_lora_weights(self: Any, *args: Any, **kwargs: Any) -> Any:
        out = method(self, *args, **kwargs)
        if _marks_writes(self):
            slots.make_lazy(self)
            slots.release_freed_memory()
        return out

    @functools.wraps(method)
    def set_mapping(self: Any, *args: Any, **kwargs: Any) -> Any:
        out = method(self, *args, **kwargs)
        state = _layer_state(self)
        if state is not None:
            state.track(self.lora_a_stacked, self.lora_b_stacked)
        return out

    @functools.wraps(method)
    def set_lora(self: Any, index: int, *args: Any, **kwargs: Any) -> Any:
        out = method(self, index, *args, **kwargs)
        state = _layer_state(self)
        if state is not None:
            state.mark_set(self.lora_a_stacked, self.lora_b_stacked, index)
        return out

    @functools.wraps(method)
    def reset_lora(self: Any, index: int, *args: Any, **kwargs: Any) -> Any:
        state = _layer_state(self)
        if state is not None and state.is_clean(self.lora_a_stacked, self.lora_b_stacked, index):
            return None  # already zero: writing zeros would only make its pages resident
        out = method(self, index, *args, **kwargs)
        if state is not None:
            state.mark_reset(self.lora_a_stacked, self.lora_b_stacked, index)
        return out

    wrapped = {"create_lora_weights": create_lora_weights, "set_mapping": set_mapping, "set_lora": set_lora,
               "reset_lora": reset_lora}[name]
    setattr(wrapped, _MARKS, True)
    return wrapped


def patch_lora_layers(layers_module: Any) -> None:
    """Wrap the LoRA layer classes of a vLLM module: lazy slot memory (``create_lora_weights``), tracking by
    the wrapper's state (``set_mapping``), marks of every slot write (``set_lora`` / ``reset_lora``), and the
    linear layers' ``forward`` without vLLM's wrapper code (:mod:`loradock.plugin.forward`)."""
    from vllm.lora.layers.base_linear import BaseLinearLayerWithLoRA
    from vllm.lora.layers.vocab_parallel_embedding import VocabParallelEmbeddingWithLoRA

    for obj in vars(layers_module).values():
        if not isinstance(obj, type) or obj.__module__ != layers_module.__name__:
            continue
        forward = obj.__dict__.get("forward")
        if forward is not None and not getattr(forward, _MARKS, False) \
                and issubclass(obj, (BaseLinearLayerWithLoRA, VocabParallelEmbeddingWithLoRA)):
            lean = (lean_forward if issubclass(obj, BaseLinearLayerWithLoRA) else compiled.embedding_forward)(forward)
            setattr(lean, _MARKS, True)
            type.__setattr__(obj, "forward", lean)
        for name in ("create_lora_weights", "set_mapping", "set_lora", "reset_lora"):
            method = obj.__dict__.get(name)
            if method is not None and not getattr(method, _MARKS, False):
                setattr(obj, name, _wrap(name, method))


def patch_layer_creation(manager_cls: Any) -> None:
    """After vLLM wraps the model's layers for LoRA (``_create_lora_modules``), name them for their ops in a
    compiled engine (:func:`loradock.plugin.compiled.name_layers`)."""
    method = manager_cls.__dict__.get("_create_lora_modules")
    if method is None or getattr(method, _MARKS, False):
        return

    @functools.wraps(method)
    def _create_lora_modules(self: Any) -> Any:
        out = method(self)
        compiled.name_layers(self.model)
        return out

    setattr(_create_lora_modules, _MARKS, True)
    manager_cls._create_lora_modules = _create_lora_modules


def patch_adapter_removal(manager_cls: Any) -> None:
    """After vLLM drops an adapter's weights (``remove_adapter``), hand the freed heap back to the OS: a
    republish or rollback every few seconds otherwise leaves the engine's RSS growing (docs/operations.md)."""
    method = manager_cls.__dict__.get("remove_adapter")
    if method is None or getattr(method, _MARKS, False):
        return

    @functools.wraps(method)
    def remove_adapter(self: Any, adapter_id: int) -> bool:
        removed = method(self, adapter_id)
        if removed:
            slots.release_freed_memory()
        return removed

    setattr(remove_adapter, _MARKS, True)
    manager_cls.remove_adapter = remove_adapter


def patch_busy_loops(core_module: Any) -> None:
    """Run each engine-core busy loop of ``core_module`` with room on the frame stack (plugin/stack.py)."""
    for cls in vars(core_module).values():
        loop = vars(cls).get("run_busy_loop") if isinstance(cls, type) else None
        if loop is not None and not getattr(loop, _MARKS, False):
            roomy = with_room(loop)
            setattr(roomy, _MARKS, True)
            cls.run_busy_loop = roomy


def register() -> None:
    """Entry point named in pyproject (vllm.general_plugins); runs in every vLLM process."""
    if ops_mode() == "vllm":
        log.info("%s=vllm: keeping vLLM's own LoRA ops", ENV_VAR)
        return
    from vllm.lora.punica_wrapper import punica_cpu

    if not getattr(punica_cpu.PunicaWrapperCPU, _PATCHED_ATTR, False):
        patch_punica_wrapper(punica_cpu.PunicaWrapperCPU)
        for module in LAYER_MODULES:
            patch_lora_layers(importlib.import_module(module))
        manager = importlib.import_module("vllm.lora.model_manager").LoRAModelManager
        patch_adapter_removal(manager)
        patch_layer_creation(manager)
        compiled.keep_compilation(importlib.import_module("vllm.platforms.cpu").CpuPlatform)
        patch_busy_loops(importlib.import_module("vllm.v1.engine.core"))
