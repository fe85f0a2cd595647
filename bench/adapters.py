"""Adapters for the benchmark: synthetic rank-8 LoRAs published into the store, and store copies.

Synthetic adapters are PEFT LoRAs on q_proj/v_proj with random A and B, so they do change the output.
They carry a valid manifest (base identity, template hash) and are published through
:class:`~loradock.core.store.AdapterStore`, so a loradock server serves them like trained ones.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from loradock.core.store import AdapterStore

log = logging.getLogger(__name__)

SYNTHETIC_PREFIX = "bench-"


def synthetic_name(i: int) -> str:
    """Name of the i-th synthetic adapter: bench-00, bench-01, ..."""
    return f"{SYNTHETIC_PREFIX}{i:02d}"


def make_bench_adapters(store_dir: Path, base_dir: Path, count: int) -> list[str]:
    """Make sure synthetic rank-8 adapters bench-00 .. bench-(count-1) exist in the store; return their names.

    Missing ones are created with :func:`loradock.core.synthetic.make_synthetic_adapters` (PEFT LoRA on
    q_proj/v_proj, random non-zero weights, seeded); existing ones are kept.
    """
    from loradock.core.base_model import load_base_info
    from loradock.core.synthetic import make_synthetic_adapters

    store = AdapterStore(store_dir)
    names = [synthetic_name(i) for i in range(count)]
    missing = [n for n in names if n not in set(store.names())]
    if missing:
        make_synthetic_adapters(store, load_base_info(base_dir), missing, seed=1000)
        log.info("made synthetic adapters %s", ", ".join(missing))
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
