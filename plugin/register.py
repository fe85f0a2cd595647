"""vLLM general plugin: swap segment-grouped LoRA kernels into vLLM's CPU punica wrapper.

The entry point ``vllm.general_plugins: loradock_lora_ops`` (pyproject.toml) makes vLLM call
:func:`register` in every process it starts, the engine core included. With ``LORADOCK_LORA_OPS=grouped``
(the default) it patches ``PunicaWrapperCPU``:

- ``update_metadata`` (called when the step's row-to-adapter mapping changes) also groups the rows by
  adapter slot once, so the layers of that step do not;
- ``add_lora_linear`` (every LoRA linear layer) runs :func:`loradock.plugin.packed.lora_linear`;
- the ``bgmv_*`` / ``sgmv_*`` names the wrapper calls elsewhere (logits, embeddings) point at the grouped
  ops of :mod:`loradock.plugin.ops`.

``LORADOCK_LORA_OPS=vllm`` leaves vLLM untouched. Only the CPU wrapper is patched; GPU builds use their own
Triton kernels and are unaffected.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from loradock.plugin import ops, packed, plan

# vLLM configures handlers for its own logger tree only; a child of it shows up in the engine's log.
log = logging.getLogger("vllm.loradock_lora_ops")

ENV_VAR = "LORADOCK_LORA_OPS"
MODES = ("vllm", "grouped")
_PATCHED_ATTR = "_loradock_patched"
# Modules whose LoRA layer classes define set_lora / reset_lora (the linear ones carry the slot weights).
LAYER_MODULES = (
    "vllm.lora.layers.base_linear",
    "vllm.lora.layers.column_parallel_linear",
    "vllm.lora.layers.row_parallel_linear",
    "vllm.lora.layers.replicated_linear",
)
_LOGGED_ATTR = "_loradock_logged"


def ops_mode() -> str:
    """The LoRA ops selected by ``LORADOCK_LORA_OPS`` (default ``grouped``)."""
    mode = os.environ.get(ENV_VAR, "").strip().lower() or "grouped"
    if mode not in MODES:
        raise ValueError(f"{ENV_VAR}={mode!r} is not valid: set it to one of {', '.join(MODES)}")
    return mode


def patch_punica_wrapper(cls: Any, ops_module: Any) -> None:
    """Install the grouped kernels on a punica wrapper class and the ops names its module calls."""
    original_update = cls.update_metadata
    original_linear = cls.add_lora_linear

    def update_metadata(self: Any, mapping: Any, *args: Any, **kwargs: Any) -> None:
        original_update(self, mapping, *args, **kwargs)
        self._loradock_plan = plan.plan_segments(self.token_lora_indices)
        if not getattr(cls, _LOGGED_ATTR, False):
            setattr(cls, _LOGGED_ATTR, True)
            log.info("loradock grouped LoRA ops active in pid %d (%s=vllm keeps vLLM's)", os.getpid(), ENV_VAR)

    def add_lora_linear(
        self: Any,
        y: Any,
        x: Any,
        lora_a_stacked: tuple[Any, ...],
        lora_b_stacked: tuple[Any, ...],
        scale: float,
        output_slices: tuple[int, ...],
        **kwargs: Any,
    ) -> None:
        step_plan = getattr(self, "_loradock_plan", None)
        x2, y2 = x.view(-1, x.shape[-1]), y.view(-1, y.shape[-1])
        if step_plan is None or not step_plan.num_rows == x2.shape[0] == y2.shape[0]:
            original_linear(self, y, x, lora_a_stacked, lora_b_stacked, scale, output_slices, **kwargs)
            return
        packed.lora_linear(y2, x2, lora_a_stacked, lora_b_stacked, scale, output_slices, step_plan)

    cls.update_metadata = update_metadata
    cls.add_lora_linear = add_lora_linear
    for name in ops.OPS:
        setattr(ops_module, name, getattr(ops, name))
    setattr(cls, _PATCHED_ATTR, True)


def patch_lora_layers(layers_module: Any) -> None:
    """Make every LoRA layer's ``set_lora`` / ``reset_lora`` tell the packer which slot it rewrote."""
    import functools

    def wrap(method: Any) -> Any:
        @functools.wraps(method)
        def marked(self: Any, index: int, *args: Any, **kwargs: Any) -> Any:
            out = method(self, index, *args, **kwargs)
            packed.mark_dirty(getattr(self, "lora_a_stacked", None), index)
            return out

        marked._loradock_marks = True  # type: ignore[attr-defined]
        return marked

    for obj in vars(layers_module).values():
        if not isinstance(obj, type):
            continue
        for name in ("set_lora", "reset_lora"):
            method = obj.__dict__.get(name)
            if method is not None and not getattr(method, "_loradock_marks", False):
                setattr(obj, name, wrap(method))


def register() -> None:
    """Entry point named in pyproject (vllm.general_plugins); runs in every vLLM process."""
    if ops_mode() == "vllm":
        log.info("%s=vllm: keeping vLLM's own LoRA ops", ENV_VAR)
        return
    from vllm.lora.punica_wrapper import punica_cpu

    if not getattr(punica_cpu.PunicaWrapperCPU, _PATCHED_ATTR, False):
        import importlib

        patch_punica_wrapper(punica_cpu.PunicaWrapperCPU, punica_cpu)
        for module in LAYER_MODULES:
            patch_lora_layers(importlib.import_module(module))
