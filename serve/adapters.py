"""The server's view of the adapter store: validation, engine ids, just-in-time loading, hot swap.

An adapter published into the store (atomic rename) becomes servable at the next scan or on the first
request that names it; one removed from the store is unloaded from the engine. Residency beyond
``max_cpu_loras`` is managed by vLLM's LRU, with pinned adapters exempt.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from loradock.core.base_model import BaseModelInfo
from loradock.core.manifest import MANIFEST_FILE, Manifest, check_name
from loradock.core.store import AdapterStore, StoreError
from loradock.core.validate import AdapterInvalid, ValidationLimits, validate_adapter
from loradock.serve.engine import Engine, LoRATarget
from loradock.serve.errors import BadRequest, NotFound

log = logging.getLogger(__name__)


@dataclass
class Entry:
    name: str
    folder: Path
    version: tuple[int, int, int]
    manifest: Manifest
    target: LoRATarget
    pinned: bool = False
    last_used: float = field(default_factory=time.monotonic)


def _version(folder: Path) -> tuple[int, int, int]:
    st, mt = folder.stat(), (folder / MANIFEST_FILE).stat()
    return st.st_ino, st.st_mtime_ns, mt.st_mtime_ns


class AdapterRegistry:
    """Valid adapters by served name, each with a stable engine id for its current folder version."""

    def __init__(self, store: AdapterStore, base: BaseModelInfo, limits: ValidationLimits, engine: Engine,
                 pinned: set[str] | None = None) -> None:
        self.store, self.base, self.limits, self.engine = store, base, limits, engine
        self.entries: dict[str, Entry] = {}
        self.invalid: dict[str, AdapterInvalid] = {}
        self._pinned = set(pinned or ())
        self._disabled: set[str] = set()  # unloaded by an admin: 404 until loaded again
        self._aliases: dict[str, str] = {}  # served name -> folder name (load_lora_adapter with a path)
        self._forced: set[str] = set()  # template mismatch accepted by an admin
        self._next_id = 1
        self._lock = asyncio.Lock()
        # Engine ids add_lora accepted. Their requests skip the engine round trip (it waits for the engine's
        # current step); if vLLM's LRU evicted one meanwhile, vLLM reloads it from the same folder in-step.
        self._added: set[int] = set()

    # -- scanning ---------------------------------------------------------------------------------------
    def _validate(self, name: str, folder: Path) -> Manifest:
        limits = replace(self.limits, force_template=name in self._forced)
        return validate_adapter(folder, self.base, limits)

    def _entry(self, name: str, folder: Path) -> Entry | None:
        """Build or reuse the entry for ``name``; None (and remembered as invalid) when refused."""
        try:
            version = _version(folder)
        except FileNotFoundError:
            return None
        old = self.entries.get(name)
        if old is not None and old.version == version and old.folder == folder:
            return old
        if name in self.invalid and self.invalid[name].version == version:
            return None
        try:
            manifest = self._validate(name, folder)
        except AdapterInvalid as e:
            e.version = version
            if name not in self.invalid or str(self.invalid[name]) != str(e):
                log.warning("adapter %s refused: [%s] %s", name, e.code, e)
            self.invalid[name] = e
            return None
        self.invalid.pop(name, None)
        target = LoRATarget(name=name, int_id=self._next_id, path=str(folder.resolve()))
        self._next_id += 1
        return Entry(name, folder, version, manifest, target, pinned=name in self._pinned)

    def scan(self) -> list[Entry]:
        """Re-read the store. Returns entries that vanished or changed (their engine ids must go)."""
        wanted = {n: self.store.path(n) for n in self.store.names()}
        for alias, folder_name in self._aliases.items():
            if folder_name in wanted:
                wanted[alias] = self.store.path(folder_name)
        stale: list[Entry] = []
        fresh: dict[str, Entry] = {}
        for name, folder in wanted.items():
            if name in self._disabled:
                continue
            entry = self._entry(name, folder)
            if entry is not None:
                fresh[name] = entry
        for name, old in self.entries.items():
            if name not in fresh or fresh[name].target.int_id != old.target.int_id:
                stale.append(old)
        for name in list(self.invalid):
            if name not in wanted:
                del self.invalid[name]
        self.entries = fresh
        return stale

    async def sync(self) -> None:
        """Scan the store and unload engine copies of adapters that were removed or replaced."""
        async with self._lock:
            stale = self.scan()
        for entry in stale:
            self._added.discard(entry.target.int_id)
            removed = await self.engine.remove_lora(entry.target.int_id)
            log.info("adapter %s %s from the store; unloaded=%s", entry.name,
                     "changed" if entry.name in self.entries else "removed", removed)

    async def watch(self, interval: float) -> None:
        """Poll the store forever (cancelled at shutdown)."""
        while True:
            try:
                await self.sync()
            except Exception:  # a bad folder must never stop the watcher
                log.exception("adapter store scan failed")
            await asyncio.sleep(interval)

    # -- serving ----------------------------------------------------------------------------------------
    def names(self) -> list[str]:
        return sorted(self.entries)

    def lookup(self, name: str) -> Entry:
        """The entry for a served name; refreshes from the store first if it is not known yet."""
        entry = self.entries.get(name)
        if entry is None and name not in self._disabled:
            self.scan()
            entry = self.entries.get(name)
        if entry is None:
            if name in self.invalid:
                e = self.invalid[name]
                raise BadRequest(f"adapter {name!r} is in the store but refused: {e}", param="model",
                                 code=f"adapter_invalid:{e.code}")
            raise NotFound(f"the model {name!r} does not exist", param="model", code="model_not_found")
        return entry

    async def acquire(self, name: str) -> LoRATarget:
        """The engine target for ``name``, loaded into the engine now if it is not resident."""
        entry = self.lookup(name)
        entry.last_used = time.monotonic()
        if entry.target.int_id in self._added:
            return entry.target
        resident = await self.engine.resident_loras()
        if entry.target.int_id not in resident:
            try:
                await self.engine.add_lora(entry.target)
                if entry.pinned:
                    await self.engine.pin_lora(entry.target.int_id)
            except Exception as e:
                log.warning("adapter %s failed to load: %s", name, e)
                raise BadRequest(f"adapter {name!r} failed to load: {e}", param="model",
                                 code="adapter_load_failed") from e
        self._added.add(entry.target.int_id)
        return entry.target

    # -- admin ------------------------------------------------------------------------------------------
    async def load(self, name: str, path: str | None, pin: bool, force: bool) -> Entry:
        """Enable (and load now) an adapter from the store, by name or by a path inside the store."""
        try:
            check_name(name)
            folder = self.store.resolve_inside(path) if path else self.store.path(name)
        except (StoreError, ValueError) as e:
            raise BadRequest(str(e), param="lora_path" if path else "lora_name", code="invalid_adapter_path") from e
        if not folder.is_dir():
            raise NotFound(f"no adapter folder {folder.name!r} in the store {self.store.root}", param="lora_name",
                           code="adapter_not_found")
        async with self._lock:
            self._disabled.discard(name)
            if folder.name != name:
                self._aliases[name] = folder.name
            if force:
                self._forced.add(name)
            if pin:
                self._pinned.add(name)
            self.invalid.pop(name, None)
            entry = self._entry(name, folder)
            if entry is None:
                refusal = self.invalid[name]
                raise BadRequest(f"adapter {name!r} refused: {refusal}", param="lora_name",
                                 code=f"adapter_invalid:{refusal.code}")
            entry.pinned = name in self._pinned
            self.entries[name] = entry
            self._added.discard(entry.target.int_id)  # an admin load really loads (and pins), even if evicted
        await self.acquire(name)
        return entry

    async def unload(self, name: str) -> None:
        """Remove from the engine and stop serving the name until it is loaded again."""
        async with self._lock:
            entry = self.entries.pop(name, None)
            if entry is None:
                raise NotFound(f"adapter {name!r} is not being served", param="lora_name", code="adapter_not_found")
            self._disabled.add(name)
            self._aliases.pop(name, None)
        self._added.discard(entry.target.int_id)
        await self.engine.remove_lora(entry.target.int_id)
