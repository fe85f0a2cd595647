"""Adapters for the benchmark: synthetic rank-8 LoRAs published into the store, and store copies.

Synthetic adapters are PEFT LoRAs on q_proj/v_proj with random A and B, so they do change the output.
They carry a valid manifest (base identity, template hash) and are published through
:class:`~loradock.core.store.AdapterStore`, so a loradock server serves them like trained ones.

Everything one run writes into the store goes through a :class:`Published` ledger, which the run empties on
every exit path (a failure, Ctrl-C, SIGTERM); :func:`check_store` refuses to start when the server does not
serve the store the bench would write to.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from loradock.core.store import AdapterStore

log = logging.getLogger(__name__)

SYNTHETIC_PREFIX = "bench-"


class StoreMismatch(RuntimeError):
    """The server does not watch the store the bench writes to."""


def synthetic_name(i: int) -> str:
    """Name of the i-th synthetic adapter: bench-00, bench-01, ..."""
    return f"{SYNTHETIC_PREFIX}{i:02d}"


class Published:
    """The adapters this run wrote into the store, removed again by :meth:`remove_all`."""

    def __init__(self, store_dir: Path) -> None:
        self.store = AdapterStore(store_dir)
        self.names: list[str] = []

    def add(self, names: Iterable[str]) -> None:
        """Record ``names`` before they are written, so a write that fails half way is cleaned up too."""
        self.names += [n for n in names if n not in self.names]

    def remove(self, names: Iterable[str]) -> None:
        """Remove ``names`` from the store now (those already gone are skipped) and forget them."""
        names = list(names)
        present = set(self.store.names())
        for name in names:
            if name in present:
                self.store.remove(name)
        self.names = [n for n in self.names if n not in names]

    def remove_all(self) -> None:
        """Remove everything this run published."""
        if self.names:
            log.info("removing %d adapters this run published: %s", len(self.names), ", ".join(self.names[:8]))
            self.remove(list(self.names))


def check_store(store_dir: Path, served: Iterable[str], url: str) -> None:
    """Refuse to start when the server's adapters and the store's share nothing (it watches another store).

    ``served`` are the adapter ids the server lists. An empty store, or a server serving none, cannot be
    told apart here; the first publish then confirms it (:func:`wait_for_models` in the run).
    """
    served = {s for s in served if not s.startswith(SYNTHETIC_PREFIX)}
    stored = {n for n in AdapterStore(store_dir).names() if not n.startswith(SYNTHETIC_PREFIX)}
    if served and stored and not served & stored:
        raise StoreMismatch(
            f"the server at {url} serves {sorted(served)[:5]} but --adapters-dir {store_dir} holds "
            f"{sorted(stored)[:5]}: point --adapters-dir at the store that server watches (its "
            "LORADOCK_ADAPTERS_DIR); nothing was written")


def make_bench_adapters(store_dir: Path, base_dir: Path, count: int, ledger: Published | None = None) -> list[str]:
    """Make sure synthetic rank-8 adapters bench-00 .. bench-(count-1) exist in the store; return their names.

    Missing ones are created with :func:`loradock.core.synthetic.make_synthetic_adapters` (PEFT LoRA on
    q_proj/v_proj, random non-zero weights, seeded) and recorded in ``ledger``; existing ones are kept.
    """
    from loradock.core.base_model import load_base_info
    from loradock.core.synthetic import make_synthetic_adapters

    store = AdapterStore(store_dir)
    names = [synthetic_name(i) for i in range(count)]
    missing = [n for n in names if n not in set(store.names())]
    if missing:
        if ledger is not None:
            ledger.add(missing)
        make_synthetic_adapters(store, load_base_info(base_dir), missing, seed=1000)
        log.info("made synthetic adapters %s", ", ".join(missing))
    return names


def publish_copies(ledger: Published, source: str, new_names: Iterable[str]) -> list[str]:
    """Publish copies of adapter ``source`` under ``new_names`` (fresh folders the server has never loaded)."""
    store = ledger.store
    src_manifest = store.read_manifest(source)
    made = []
    for name in new_names:
        ledger.add([name])
        manifest = src_manifest.model_copy(update={"name": name, "description": f"copy of {source} for bench"})
        store.copy_from(store.path(source), manifest, overwrite=True)
        made.append(name)
    return made
