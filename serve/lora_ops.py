"""vLLM general plugin: swap segment-grouped LoRA kernels into vLLM's CPU punica wrapper.

The entry point ``vllm.general_plugins: loradock_lora_ops`` (pyproject.toml) makes vLLM call
:func:`register` in every process it starts, the engine core included. With ``LORADOCK_LORA_OPS=grouped``
(the default) it patches ``PunicaWrapperCPU``:

- ``update_metadata`` (called when the step's row-to-adapter mapping changes) also groups the rows by
  adapter slot once, so the layers of that step do not;
- ``add_lora_linear`` (every LoRA linear layer) runs :func:`loradock.serve.lora_kernels.lora_linear`;
- the ``bgmv_*`` / ``sgmv_*`` names the wrapper calls elsewhere (logits, embeddings) point at the grouped
  ops of :mod:`loradock.serve.lora_kernels`.

``LORADOCK_LORA_OPS=vllm`` leaves vLLM untouched. Only the CPU wrapper is patched; GPU builds use their own
Triton kernels and are unaffected.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from loradock.serve import lora_kernels

# vLLM configures handlers for its own logger tree only; a child of it shows up in the engine's log.
log = logging.getLogger("vllm.loradock_lora_ops")

ENV_VAR = "LORADOCK_LORA_OPS"
MODES = ("vllm", "grouped")
_PATCHED_ATTR = "_loradock_patched"
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
        self._loradock_plan = lora_kernels.plan_segments(self.token_lora_indices)
        if not getattr(cls, _LOGGED_ATTR, False):
            setattr(cls, _LOGGED_ATTR, True)
            log.info(
                "loradock grouped LoRA ops active in pid %d (%s=vllm keeps vLLM's)", os.getpid(), ENV_VAR
            )

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
        plan = getattr(self, "_loradock_plan", None)
        x2, y2 = x.view(-1, x.shape[-1]), y.view(-1, y.shape[-1])
        if plan is None or not plan.num_rows == x2.shape[0] == y2.shape[0]:
            original_linear(self, y, x, lora_a_stacked, lora_b_stacked, scale, output_slices, **kwargs)
            return
        lora_kernels.lora_linear(y2, x2, lora_a_stacked, lora_b_stacked, scale, output_slices, plan)

    cls.update_metadata = update_metadata
    cls.add_lora_linear = add_lora_linear
    for name in lora_kernels.OPS:
        setattr(ops_module, name, getattr(lora_kernels, name))
    setattr(cls, _PATCHED_ATTR, True)


def register() -> None:
    """Entry point named in pyproject (vllm.general_plugins); runs in every vLLM process."""
    if ops_mode() == "vllm":
        log.info("%s=vllm: keeping vLLM's own LoRA ops", ENV_VAR)
        return
    from vllm.lora.punica_wrapper import punica_cpu

    if not getattr(punica_cpu.PunicaWrapperCPU, _PATCHED_ATTR, False):
        patch_punica_wrapper(punica_cpu.PunicaWrapperCPU, punica_cpu)
