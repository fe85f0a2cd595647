"""vLLM's CPU compilation with LoRA enabled: each LoRA layer's delta is one custom op in the compiled graph.

vLLM turns compilation off on CPU whenever LoRA is enabled (``vllm/platforms/cpu.py``): its CPU punica
ops choose their path in Python from the step's mapping, which a graph traced once would freeze. loradock's
delta needs no such choice inside the graph: the step's plan is built outside the model's forward (in
``update_metadata``), and each layer's delta runs as an opaque op, the way vLLM runs attention
(:func:`vllm.utils.torch_utils.direct_register_custom_op`; the op finds its layer by name in the forward
context and adds the delta to the base output in place, which inductor keeps in place). What the compiler
gets is everything else: RMSNorm, rotary, SiLU and the residual adds fused, and no Python between layers.

:func:`keep_compilation` runs the platform's check without the LoRA config when loradock asked for it
(``LORADOCK_COMPILE=true``, exported by ``loradock serve`` from its ``compile`` setting, on by default; served
decode 1.2-1.5x eager, docs/performance.md, ``scripts/inprocess_ab.py compile --engine-process``) and every
LoRA layer can take this path (one process of tensor parallelism, no dual stream); vLLM's own server
carrying this plugin keeps vLLM's choice. :func:`name_layers` registers each LoRA layer after vLLM creates
them and refuses a layer class that has no op (its Python would be frozen into the graph).
"""

from __future__ import annotations

import functools
import os
from typing import Any

import torch
import torch.nn.functional as F

from loradock.plugin.forward import OP_NAME_ATTR, add_delta, plain_linear, step_plan

SUFFIX = ".loradock_lora"
COMPILE_ENV = "LORADOCK_COMPILE"
LIBRARY = "loradock"


def _layer(name: str) -> Any:
    from vllm.forward_context import get_forward_context

    return get_forward_context().no_compile_layers[name]


def linear_delta(y: torch.Tensor, x: torch.Tensor, layer_name: str) -> None:
    """``y += delta(x)`` of a linear LoRA layer for the current step (what the lean forward adds)."""
    layer = _layer(layer_name)
    found = step_plan(layer, x.numel() // x.shape[-1])
    if found is None:  # vLLM's ops, through the patched funnel
        layer.punica_wrapper.add_lora_linear(y.view(-1, y.shape[-1]), x.reshape(-1, x.shape[-1]),
                                             layer.lora_a_stacked, layer.lora_b_stacked, 1.0, layer.output_slices)
    else:
        add_delta(layer, *found, y, x)


def embedding_delta(y: torch.Tensor, x: torch.Tensor, layer_name: str) -> None:
    """What vLLM's ``VocabParallelEmbeddingWithLoRA.forward`` adds after the base lookup."""
    layer = _layer(layer_name)
    found = step_plan(layer, x.shape[0])
    if found is not None and not found[1].segments:
        return  # a base-model-only step
    wrapper = layer.punica_wrapper
    a = F.embedding(x + wrapper._embeddings_indices[: x.shape[0]], layer.lora_a_stacked_2d)
    wrapper.add_lora_embedding(y.view(-1, y.shape[-1]), a.view(-1, a.shape[-1]), layer.lora_b_stacked)


def _shape_only(y: torch.Tensor, x: torch.Tensor, layer_name: str) -> None:
    return None


@functools.cache
def register_ops() -> Any:
    """Define ``torch.ops.loradock.linear_delta`` / ``embedding_delta`` once per process (the returned
    library keeps them alive)."""
    from torch.library import Library
    from vllm.utils.torch_utils import direct_register_custom_op

    lib = Library(LIBRARY, "FRAGMENT")
    for name, fn in (("linear_delta", linear_delta), ("embedding_delta", embedding_delta)):
        direct_register_custom_op(name, fn, mutates_args=["y"], fake_impl=_shape_only, target_lib=lib,
                                  dispatch_key="CPU")
    return lib


def _asked() -> bool:
    """``LORADOCK_COMPILE`` read as the ``compile`` setting reads it (pydantic's bool), false when unset."""
    from pydantic import TypeAdapter, ValidationError

    try:
        return TypeAdapter(bool).validate_python(os.environ.get(COMPILE_ENV, "false").strip() or "false")
    except ValidationError:
        return False


def compiles_with_lora(vllm_config: Any) -> bool:
    """Whether this LoRA engine keeps its compiled graph: loradock asked (``LORADOCK_COMPILE``, which
    ``loradock serve`` exports from its ``compile`` setting; vLLM's own server with this plugin keeps vLLM's
    choice) and loradock's ops can carry it."""
    from vllm import envs
    from vllm.config import CompilationMode

    parallel = vllm_config.parallel_config
    return (_asked()
            and vllm_config.lora_config is not None
            and vllm_config.compilation_config.mode == CompilationMode.VLLM_COMPILE
            and parallel.tensor_parallel_size * parallel.pipeline_parallel_size == 1
            and not envs.VLLM_LORA_ENABLE_DUAL_STREAM)


def keep_compilation(platform_cls: Any) -> None:
    """Run ``platform_cls``'s config check without the LoRA config when :func:`compiles_with_lora`."""
    check = platform_cls.check_and_update_config.__func__

    @functools.wraps(check)
    def check_and_update_config(cls: Any, vllm_config: Any) -> None:
        if not compiles_with_lora(vllm_config):
            return check(cls, vllm_config)
        lora, vllm_config.lora_config = vllm_config.lora_config, None
        try:
            return check(cls, vllm_config)
        finally:
            vllm_config.lora_config = lora

    platform_cls.check_and_update_config = classmethod(check_and_update_config)


def name_layers(model: Any) -> None:
    """In a compiled engine, register each LoRA layer of ``model`` for its op under its module path (the same
    in every process, as a cached graph needs); refuse a layer class that has no op."""
    from vllm.lora.layers import BaseLayerWithLoRA

    for path, module in model.named_modules():
        if isinstance(module, BaseLayerWithLoRA):
            name_layer(module, path)


def name_layer(layer: Any, path: str) -> None:
    """Register one LoRA layer (see :func:`name_layers`)."""
    from vllm.config import CompilationMode, get_current_vllm_config
    from vllm.lora.layers.base_linear import BaseLinearLayerWithLoRA
    from vllm.lora.layers.logits_processor import LogitsProcessorWithLoRA
    from vllm.lora.layers.vocab_parallel_embedding import VocabParallelEmbeddingWithLoRA

    config = get_current_vllm_config()
    if config.compilation_config.mode == CompilationMode.NONE or OP_NAME_ATTR in layer.__dict__:
        return
    if isinstance(layer, LogitsProcessorWithLoRA):
        return  # runs in compute_logits, outside the compiled graph
    if not (isinstance(layer, VocabParallelEmbeddingWithLoRA)
            or (isinstance(layer, BaseLinearLayerWithLoRA) and plain_linear(layer))):
        raise ValueError(f"{type(layer).__name__} has no LoRA op for vLLM's CPU compilation: start the server "
                         f"with LORADOCK_COMPILE=false for this model")
    context = config.compilation_config.static_forward_context
    name = path + SUFFIX
    if name in context:
        raise ValueError(f"duplicate layer name {name!r} in the compilation context")
    context[name] = layer
    layer.__dict__[OP_NAME_ATTR] = name
    register_ops()


def embedding_forward(method: Any) -> Any:
    """``forward`` of vLLM's embedding LoRA layer: the base lookup plus the op in a compiled engine, else
    vLLM's ``method``."""

    @functools.wraps(method)
    def forward(self: Any, x: torch.Tensor) -> torch.Tensor:
        name = self.__dict__.get(OP_NAME_ATTR)
        if name is None:
            return method(self, x)
        out = self._modules["base_layer"].forward(x)
        torch.ops.loradock.embedding_delta(out, x, name)
        return out

    return forward
