"""The server's view of the adapter store: versions, engine ids, just-in-time loading, drained hot swap.

``model: "name"`` means the name's current version, ``model: "name@3"`` pins version 3. Every version reaches
the engine as its own (``name@n``, immutable folder) pair with its own integer id, so vLLM can never mix two
versions. A request holds its version (:meth:`AdapterRegistry.use`) until it ends; a version that stopped being
current leaves the engine after its last request, and its folder stays leased until then.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import replace
from pathlib import Path
from typing import Any

from loradock.core.base_model import BaseModelInfo
from loradock.core.manifest import Manifest, check_name
from loradock.core.store import AdapterStore, StoreError
from loradock.core.validate import AdapterInvalid, ValidationLimits, validate_adapter
from loradock.core.versions import Refusal, VersionRecord, VersionStore
from loradock.serve.engine import Engine, EngineUnavailable, LoRATarget
from loradock.serve.errors import BadRequest, NotFound
from loradock.serve.served import NameView, OpenVersion, ServedAdapter, StoreSnapshot, scan_store

log = logging.getLogger(__name__)


def parse_model(model: str) -> tuple[str, int | None]:
    """``"name"`` -> (name, None); ``"name@3"`` -> (name, 3). Raises NotFound for anything else."""
    name, sep, version = model.partition("@")
    if sep and not (version.isdigit() and 0 < len(version) <= 9):
        raise NotFound(f"the model {model!r} does not exist: pin a version as name@N, e.g. {name}@1",
                       param="model", code="model_not_found")
    return name, int(version) if sep else None


def _running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running this code, or None in a blocking call outside the server."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class AdapterRegistry:
    """Servable adapters by name, each version with a stable engine id, refcounted while requests use it."""

    def __init__(self, store: AdapterStore, base: BaseModelInfo, limits: ValidationLimits, engine: Engine,
                 pinned: set[str] | None = None, keep_versions: int = 5, retire_idle_s: float = 10.0) -> None:
        self.store, self.base, self.limits, self.engine = store, base, limits, engine
        self.keep_versions, self.retire_idle_s = keep_versions, retire_idle_s
        self.views: dict[str, NameView] = {}
        self.invalid: dict[str, Refusal] = {}  # what admins see: entries and names refused, with why
        self._open: dict[str, OpenVersion] = {}  # by engine name (name@n)
        self._ids: dict[str, int] = {}  # engine name -> integer id, stable for this process
        self._manifests: dict[Path, Manifest] = {}
        self._pinned = set(pinned or ())
        self._disabled: set[str] = set()  # unloaded by an admin: 404 until loaded again
        self._aliases: dict[str, str] = {}  # served name -> store name (load_lora_adapter with a path)
        self._forced: set[str] = set()  # template mismatch accepted by an admin
        self._sync_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- the store, off the event loop ------------------------------------------------------------------
    def _limits(self, name: str) -> ValidationLimits:
        return replace(self.limits, force_template=name in self._forced)

    def _validate(self, folder: Path, name: str) -> Manifest:
        return validate_adapter(folder, self.base, self._limits(name), name=name)

    def _scan(self) -> StoreSnapshot:
        return scan_store(self.store, self._limits, self._validate, self.keep_versions, self._manifests)

    def scan(self) -> None:
        """Scan the store and apply it, blocking (tests and tools; the server uses :meth:`sync`)."""
        self._apply(self._scan())

    async def sync(self) -> None:
        """Scan the store in a worker thread, then retire versions that stopped being current."""
        async with self._sync_lock:
            snapshot = await asyncio.to_thread(self._scan)
            self._apply(snapshot)

    def _apply(self, snap: StoreSnapshot) -> None:
        views = dict(snap.views)
        for name in snap.failed:
            if name in self.views:
                views[name] = self.views[name]
        previous = self.views
        self.views, self.invalid = views, dict(snap.invalid)
        self._warm_replacements(previous)
        for opened in list(self._open.values()):
            self._maybe_unload(opened)

    def _warm_replacements(self, previous: dict[str, NameView]) -> None:
        """A name whose version in the engine was replaced (republish, rollback) gets its new current version
        loaded now, in the background, so the first request after a hot swap does not wait for the load. New
        names are still loaded by their first request (loading them here could evict adapters in use)."""
        for name, view in self.views.items():
            old = previous.get(name)
            if view.current is None or old is None or old.current is None or \
                    old.current.label == view.current.label:
                continue
            replaced = self._open.get(old.current.label)
            if replaced is not None and replaced.added and view.current.label not in self._open \
                    and _running_loop() is not None:  # else a blocking scan outside the server
                self._spawn(self._warm(view.current))

    async def _warm(self, record: VersionRecord) -> None:
        try:
            opened = await self._opened(record)
            if self.is_current(record):
                await self._load(opened)
                log.info("adapter version %s loaded ahead of its first request", record.label)
            self._maybe_unload(opened)
        except Exception as e:  # its first request loads it (and reports what is wrong) instead
            log.info("adapter version %s not loaded ahead: %s", record.label, e)

    async def watch(self, interval: float) -> None:
        """Poll the store forever (cancelled at shutdown); a scan that fails is logged and retried."""
        while True:
            try:
                await self.sync()
            except Exception:
                log.exception("adapter store scan failed")
            await asyncio.sleep(interval)

    # -- what is served ---------------------------------------------------------------------------------
    def _store_name(self, name: str) -> str:
        return self._aliases.get(name, name)

    def _served_view(self, name: str) -> NameView | None:
        if name in self._disabled:
            return None
        return self.views.get(self._store_name(name))

    def names(self) -> list[str]:
        """Servable names (current version present, not unloaded by an admin), sorted."""
        return sorted(n for n in [*self.views, *self._aliases]
                      if (v := self._served_view(n)) is not None and v.current is not None)

    def _engine_id(self, label: str) -> int:
        if label not in self._ids:
            self._ids[label] = len(self._ids) + 1
        return self._ids[label]

    def _target(self, record: VersionRecord) -> LoRATarget:
        return LoRATarget(name=record.label, int_id=self._engine_id(record.label), path=str(record.folder.absolute()),
                          adapter=record.name, version=record.number)

    @property
    def entries(self) -> dict[str, ServedAdapter]:
        """Each servable name with its current version."""
        out = {}
        for name in self.names():
            view = self._served_view(name)
            if view is not None and view.current is not None and view.manifest is not None:
                out[name] = ServedAdapter(name, view.current, view.manifest, self._target(view.current),
                                          name in self._pinned)
        return out

    def is_current(self, record: VersionRecord) -> bool:
        """Whether some servable name's current version is ``record``."""
        served = [n for n in [record.name, *(a for a, s in self._aliases.items() if s == record.name)]
                  if n not in self._disabled]
        view = self.views.get(record.name)
        return bool(served) and view is not None and view.current is not None and \
            view.current.number == record.number

    def open_count(self) -> int:
        """Versions held by requests or resident in the engine."""
        return len(self._open)

    def history(self, name: str) -> list[dict[str, Any]]:
        """Kept versions of ``name``, newest first, with which one is current and which are in use."""
        view = self.views.get(self._store_name(name))
        if view is None:
            raise NotFound(f"adapter {name!r} has no versions in the store", param="name", code="adapter_not_found")
        current = view.current.number if view.current else None
        rows = []
        for record in reversed(view.kept):
            opened = self._open.get(record.label)
            manifest = self._manifests.get(record.folder)
            rows.append({"version": record.number, "id": f"{name}@{record.number}", "sha256_12": record.sha12,
                         "content_sha256": manifest.content_sha256 if manifest else None,
                         "created": manifest.created.isoformat() if manifest else None,
                         "description": manifest.description if manifest else None,
                         "current": record.number == current, "in_flight": opened.in_flight if opened else 0,
                         "loaded": bool(opened and opened.added)})
        return rows

    # -- serving ----------------------------------------------------------------------------------------
    async def _record(self, model: str) -> VersionRecord:
        name, pin = parse_model(model)
        if self._served_view(name) is None and name not in self._disabled and await self._in_store(name):
            await self.sync()  # published a moment ago: servable at once, not at the next poll
        view = self._served_view(name)
        if view is None:
            raise NotFound(f"the model {model!r} does not exist", param="model", code="model_not_found")
        if pin is not None:
            record = next((v for v in view.kept if v.number == pin), None)
            if record is None:
                kept = [v.number for v in view.kept]
                raise NotFound(f"version {pin} of adapter {name!r} is not kept (kept versions: {kept})",
                               param="model", code="model_not_found")
            return record
        if view.current is None:
            if view.refusal is not None:
                r = view.refusal
                raise BadRequest(f"adapter {name!r} is in the store but refused: [{r.code}] {r.message}",
                                 param="model", code=f"adapter_invalid:{r.code}")
            raise NotFound(f"the model {model!r} does not exist (removed)", param="model", code="model_not_found")
        return view.current

    async def _in_store(self, name: str) -> bool:
        try:
            path = self.store.path(name)
        except ValueError:
            return False
        return await asyncio.to_thread(os.path.lexists, path)

    async def _opened(self, record: VersionRecord) -> OpenVersion:
        """The open version for ``record``: validated by this server and leased on disk."""
        opened = self._open.get(record.label)
        if opened is not None:
            return opened
        try:
            manifest = await asyncio.to_thread(self._validate, record.folder, record.name)
        except AdapterInvalid as e:
            raise BadRequest(f"version {record.label} is refused: [{e.code}] {e.message}", param="model",
                             code=f"adapter_invalid:{e.code}") from e
        lease = await asyncio.to_thread(VersionStore.lease, record)
        if lease is None:
            raise NotFound(f"version {record.label} was just deleted; retry", param="model", code="model_not_found")
        if record.label in self._open:  # another request opened it while we validated
            lease.release()
            return self._open[record.label]
        opened = OpenVersion(record, manifest, self._target(record), lease)
        self._open[record.label] = opened
        return opened

    async def _load(self, opened: OpenVersion) -> None:
        if opened.added:
            return
        try:
            await self.engine.add_lora(opened.target)
            if opened.record.name in self._pinned and self.is_current(opened.record):
                await self.engine.pin_lora(opened.target.int_id)
        except EngineUnavailable:
            raise
        except Exception as e:
            log.warning("adapter %s failed to load: %s", opened.record.label, e)
            raise BadRequest(f"adapter {opened.record.label!r} failed to load: {e}", param="model",
                             code="adapter_load_failed") from e
        opened.added = True

    @asynccontextmanager
    async def use(self, model: str) -> AsyncIterator[LoRATarget]:
        """Hold a version of ``model`` for one request: resolved, loaded, refcounted until the block ends."""
        record = await self._record(model)
        opened = await self._opened(record)
        opened.in_flight += 1
        opened.last_used = time.monotonic()
        try:
            await self._load(opened)
            yield opened.target
        finally:
            opened.in_flight -= 1
            opened.last_used = time.monotonic()
            self._maybe_unload(opened)

    async def acquire(self, model: str) -> LoRATarget:
        """Load ``model``'s version into the engine now (no request holds it)."""
        async with self.use(model) as target:
            return target

    def _maybe_unload(self, opened: OpenVersion) -> None:
        """A version no request holds and no name serves leaves the engine (drained retirement), once it has
        been idle for ``retire_idle_s`` (so requests pinning an old version do not load and unload it each)."""
        if opened.in_flight or not self._is_open(opened) or self.is_current(opened.record):
            return
        loop = _running_loop()
        if loop is None:
            return  # a blocking scan outside the server: the next sync decides
        wait = self.retire_idle_s - (time.monotonic() - opened.last_used)
        if opened.timer is not None:
            opened.timer.cancel()
        if wait > 0:
            opened.timer = loop.call_later(wait, self._maybe_unload, opened)
        else:
            opened.timer = None
            self._spawn(self._unload(opened))

    def _is_open(self, opened: OpenVersion) -> bool:
        return self._open.get(opened.record.label) is opened

    async def _unload(self, opened: OpenVersion) -> None:
        await asyncio.sleep(0)  # let an aborted request's own abort reach the engine first
        if opened.in_flight or not self._is_open(opened) or self.is_current(opened.record) or \
                time.monotonic() - opened.last_used < self.retire_idle_s:
            return
        del self._open[opened.record.label]
        try:
            if opened.added:
                removed = await self.engine.remove_lora(opened.target.int_id)
                log.info("adapter version %s left the engine (removed=%s)", opened.record.label, removed)
        except EngineUnavailable:
            pass  # a restarted engine holds nothing
        except Exception:
            log.exception("unloading %s failed", opened.record.label)
        finally:
            opened.lease.release()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def engine_restarted(self) -> None:
        """The engine was rebuilt and holds nothing: forget residency, reload pinned current versions."""
        for opened in list(self._open.values()):
            opened.added = False
            self._maybe_unload(opened)
        for name in sorted(self._pinned & set(self.names())):
            with suppress(Exception):
                await self.acquire(name)

    # -- admin ------------------------------------------------------------------------------------------
    async def load(self, name: str, path: str | None, pin: bool, force: bool) -> ServedAdapter:
        """Serve (and load now) an adapter from the store, by name or by a path inside the store."""
        try:
            check_name(name)
            store_name, found = await asyncio.to_thread(self._locate, name, path)
        except (StoreError, ValueError) as e:
            raise BadRequest(str(e), param="lora_path" if path else "lora_name", code="invalid_adapter_path") from e
        if not found:
            raise NotFound(f"no adapter folder {store_name!r} in the store {self.store.root}", param="lora_name",
                           code="adapter_not_found")
        if force:
            self._forced.add(store_name)
        async with self._sync_lock:
            result = await asyncio.to_thread(self.store.versions.ingest, store_name, self.store.path(store_name),
                                             self._limits(store_name), self._validate, True)
        if result.current is None and result.refusal is not None:
            r = result.refusal
            raise BadRequest(f"adapter {name!r} refused: [{r.code}] {r.message}", param="lora_name",
                             code=f"adapter_invalid:{r.code}")
        self._disabled.discard(name)
        if store_name != name:
            self._aliases[name] = store_name
        if pin:
            self._pinned.add(name)
        await self.sync()
        await self.acquire(name)
        served = self.entries.get(name)
        if served is None:
            raise NotFound(f"adapter {name!r} has no current version", param="lora_name", code="adapter_not_found")
        return served

    def _locate(self, name: str, path: str | None) -> tuple[str, bool]:
        """The store name a load refers to, and whether the store has it (a folder or kept versions)."""
        folder = self.store.resolve_inside(path) if path else self.store.path(name)
        return folder.name, os.path.lexists(folder) or self.store.versions.dir(folder.name).is_dir()

    async def unload(self, name: str) -> None:
        """Stop serving ``name`` until it is loaded again; its version leaves the engine once drained."""
        if name not in self.names():
            raise NotFound(f"adapter {name!r} is not being served", param="lora_name", code="adapter_not_found")
        self._disabled.add(name)
        self._aliases.pop(name, None)
        for opened in list(self._open.values()):
            self._maybe_unload(opened)

    async def rollback(self, name: str, to: int | None) -> VersionRecord:
        """Make version ``to`` (default: the one before the current) current, then apply it at once."""
        store_name = self._store_name(name)
        try:
            check_name(store_name)
            async with self._sync_lock:
                record = await asyncio.to_thread(self.store.versions.rollback, store_name, to)
        except (StoreError, ValueError) as e:
            raise NotFound(str(e), param="to" if to is not None else "name", code="version_not_found") from e
        await self.sync()
        return record
