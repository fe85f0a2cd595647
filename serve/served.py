"""The server's picture of the adapter store, taken off the event loop, and the versions it has open.

:func:`scan_store` runs in a worker thread: it snapshots every published folder that changed (validating
the copy), collects garbage, and reads which version of each name is current. The registry applies the
result on the event loop, so no request ever waits on store I/O.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from loradock.core.manifest import Manifest
from loradock.core.store import AdapterStore
from loradock.core.validate import AdapterInvalid, ValidationLimits
from loradock.core.versions import Lease, Refusal, Validator, VersionRecord, read_version_manifest
from loradock.serve.engine import LoRATarget

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NameView:
    """One adapter name as the last scan saw it."""

    name: str
    current: VersionRecord | None
    manifest: Manifest | None  # the current version's
    refusal: Refusal | None  # why the latest publish is not served
    kept: tuple[VersionRecord, ...] = ()


@dataclass(frozen=True)
class StoreSnapshot:
    views: dict[str, NameView]
    invalid: dict[str, Refusal]  # top-level entry -> why it is not served
    failed: frozenset[str] = frozenset()  # names the scan could not read this time (keep their last view)


@dataclass
class OpenVersion:
    """A version this server uses: leased on disk (GC leaves it), maybe resident, with requests in flight."""

    record: VersionRecord
    manifest: Manifest
    target: LoRATarget
    lease: Lease
    in_flight: int = 0
    added: bool = False  # add_lora succeeded on the current engine
    last_used: float = field(default_factory=time.monotonic)
    timer: asyncio.TimerHandle | None = None  # when it leaves the engine, once no name serves it


@dataclass(frozen=True)
class ServedAdapter:
    """A servable name and its current version (what /v1/models and GET /v1/adapters/{name} show)."""

    name: str
    record: VersionRecord
    manifest: Manifest
    target: LoRATarget
    pinned: bool

    @property
    def version(self) -> int:
        return self.record.number

    @property
    def content_sha256(self) -> str:
        return self.manifest.content_sha256 or self.record.sha12


def scan_store(store: AdapterStore, limits_for: Callable[[str], ValidationLimits], validator: Validator,
               keep: int, manifests: dict[Path, Manifest]) -> StoreSnapshot:
    """Ingest every changed published folder, collect garbage, and read each name's current version.

    ``manifests`` caches version manifests by folder (versions never change). Never raises.
    """
    entries = store.entries()
    invalid = {e.entry: e.refusal for e in entries if e.refusal is not None}
    names = sorted({e.name for e in entries if e.name} | set(store.versions.names()))
    views: dict[str, NameView] = {}
    failed = set()
    for name in names:
        try:
            result = store.versions.ingest(name, store.path(name), limits_for(name), validator)
            if result.refusal is not None and result.changed:
                log.warning("adapter %s refused: [%s] %s", name, result.refusal.code, result.refusal.message)
            store.versions.gc(name, keep)
            state, kept = store.versions.read_state(name), store.versions.versions(name)
            current = next((v for v in kept if v.number == state.current), None)
            manifest = None
            if current is not None:
                manifest = manifests.get(current.folder) or read_version_manifest(current)
                manifests[current.folder] = manifest
            for v in kept:  # for history; versions never change, so each is read once
                if v.folder not in manifests:
                    with suppress(AdapterInvalid):
                        manifests[v.folder] = read_version_manifest(v)
        except AdapterInvalid as e:  # a version folder damaged by hand
            log.warning("adapter %s: current version unreadable: [%s] %s", name, e.code, e.message)
            views[name] = NameView(name, None, None, Refusal(code=e.code, message=e.message))
            invalid[name] = Refusal(code=e.code, message=e.message)
            continue
        except Exception:  # e.g. the store's disk is full or read-only: keep serving what was served
            log.exception("adapter store: cannot scan %s", name)
            failed.add(name)
            continue
        if state.source.refusal is not None:
            invalid[name] = state.source.refusal
        views[name] = NameView(name, current, manifest, state.source.refusal, tuple(kept))
    live = {v.folder for view in views.values() for v in view.kept}
    for folder in [f for f in manifests if f not in live and f.parent.name not in failed]:
        del manifests[folder]  # collected versions
    return StoreSnapshot(views, invalid, frozenset(failed))
