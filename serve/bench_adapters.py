"""Adapters for the benchmark: synthetic rank-8 LoRAs published into the store, and store copies.

Synthetic adapters are PEFT LoRAs on q_proj/v_proj with random A and B (``init_lora_weights=False``), so
they do change the output. They carry a valid manifest (base identity, template hash) and are published
through :class:`~loradock.core.store.AdapterStore`, so a loradock server serves them like trained ones.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from loradock.core.manifest import BaseIdentity, Manifest, Provenance
from loradock.core.store import AdapterStore

log = logging.getLogger(__name__)

SYNTHETIC_PREFIX = "bench-"
TARGET_MODULES = ("q_proj", "v_proj")


def synthetic_name(i: int) -> str:
    """Name of the i-th synthetic adapter: bench-00, bench-01, ..."""
    return f"{SYNTHETIC_PREFIX}{i:02d}"


def make_synthetic_adapters(
    store_dir: Path,
    base_dir: Path,
    count: int,
    rank: int = 8,
    b_scale: float = 0.1,
    overwrite: bool = False,
) -> list[str]:
    """Create ``count`` synthetic adapters bench-00.. in the store; existing ones are kept unless overwrite.

    ``b_scale`` shrinks the random B matrices so outputs change but stay fluent-ish (random A and B at
    full scale turn the model's output into noise, which makes greedy comparisons brittle).
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from loradock.core.base_model import load_base_info
    from loradock.core.template import template_sha256

    store = AdapterStore(store_dir)
    names = [synthetic_name(i) for i in range(count)]
    todo = [n for n in names if overwrite or n not in store.names()]
    if not todo:
        return names
    base = load_base_info(base_dir)
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    config = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        target_modules=list(TARGET_MODULES),
        init_lora_weights=False,
        lora_dropout=0.0,
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, config)
    for name in todo:
        seed = names.index(name)
        gen = torch.Generator().manual_seed(1000 + seed)
        with torch.no_grad():
            for pname, p in peft_model.named_parameters():
                if "lora_A" in pname:
                    p.copy_(torch.randn(p.shape, generator=gen) / p.shape[1] ** 0.5)
                elif "lora_B" in pname:
                    p.copy_(torch.randn(p.shape, generator=gen) * b_scale / p.shape[1] ** 0.5)
        manifest = Manifest(
            name=name,
            base=BaseIdentity(name=base.name, sha256=base.sha256),
            template_sha256=template_sha256(),
            rank=rank,
            alpha=float(2 * rank),
            target_modules=list(TARGET_MODULES),
            provenance=Provenance(method="synthetic", recipe={"seed": seed, "b_scale": b_scale}),
            description=f"synthetic rank-{rank} benchmark adapter (random weights)",
        )
        with store.staging(name) as tmp:
            peft_model.save_pretrained(str(tmp), safe_serialization=True)
            store.publish(tmp, manifest, overwrite=overwrite)
        log.info("made synthetic adapter %s", name)
    return names


def publish_copies(store_dir: Path, source: str, new_names: Iterable[str]) -> list[str]:
    """Publish copies of adapter ``source`` under ``new_names`` (fresh folders the server has never loaded)."""
    store = AdapterStore(store_dir)
    src_manifest = store.read_manifest(source)
    made = []
    for name in new_names:
        manifest = src_manifest.model_copy(update={"name": name, "description": f"copy of {source} for bench"})
        store.copy_from(store.path(source), manifest, overwrite=True)
        made.append(name)
    return made


def remove_adapters(store_dir: Path, names: Iterable[str]) -> None:
    """Remove adapters from the store, skipping ones already gone."""
    store = AdapterStore(store_dir)
    present = set(store.names())
    for name in names:
        if name in present:
            store.remove(name)
