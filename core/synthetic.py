"""Synthetic LoRA adapters for tests and benchmarks: real PEFT files with random (non-zero) weights."""

from __future__ import annotations

from pathlib import Path

from loradock.core.base_model import BaseModelInfo
from loradock.core.manifest import BaseIdentity, Manifest, Provenance
from loradock.core.store import AdapterStore
from loradock.core.template import template_sha256


def make_synthetic_adapters(store: AdapterStore, base: BaseModelInfo, names: list[str], rank: int = 8,
                            target_modules: tuple[str, ...] = ("q_proj", "v_proj"), seed: int = 0,
                            scale: float = 0.5) -> list[Path]:
    """Publish one random rank-``rank`` adapter per name (seeded, so reruns give identical files)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base.path), dtype=torch.float32)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(target_modules),
                        init_lora_weights=False, task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, config)
    paths = []
    for i, name in enumerate(names):
        gen = torch.Generator().manual_seed(seed + i)
        with torch.no_grad():
            for pname, p in peft_model.named_parameters():
                if "lora_" in pname:
                    p.copy_(torch.randn(p.shape, generator=gen) * scale / p.shape[-1] ** 0.5)
        manifest = Manifest(
            name=name, base=BaseIdentity(name=base.name, sha256=base.sha256), template_sha256=template_sha256(),
            rank=rank, alpha=2 * rank, target_modules=list(target_modules),
            provenance=Provenance(method="synthetic", recipe={"seed": seed + i, "scale": scale}),
            description="random weights, for tests and benchmarks")
        with store.staging(name) as tmp:
            peft_model.save_pretrained(str(tmp), safe_serialization=True)
            paths.append(store.publish(tmp, manifest, overwrite=True))
    return paths
