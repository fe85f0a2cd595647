"""Immutable adapter versions: validated, content-addressed snapshots of what is published at ``<store>/<name>/``.

::

    <store>/<name>/                          where users and `loradock train` publish (drop-in point)
    <store>/.versions/<name>/<n>-<sha12>/     version n: a validated copy, read-only, never changed
    <store>/.versions/<name>/state.json       the current version, and what the source folder looked like
    <store>/.versions/<name>/.lock            flock: one writer of a name's versions at a time

A snapshot is a copy, not a hard link: rewriting a published file in place must not change a version the
engine may read. Readers (servers) hold a shared ``flock`` on every version folder they use; garbage
collection deletes only versions it can lock exclusively, so files never vanish under a running request.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from loradock.core.io import atomic_write
from loradock.core.manifest import MANIFEST_FILE, VERSIONS_DIR, Manifest, check_name
from loradock.core.validate import AdapterInvalid, ValidationLimits, file_cap
from loradock.core.validate_files import copy_file, list_files, open_folder, read_json

log = logging.getLogger(__name__)
STATE_FILE = "state.json"
LOCK_FILE = ".lock"
_VERSION_RE = re.compile(r"^([0-9]{1,9})-([0-9a-f]{12})$")
Validator = Callable[[Path, str], Manifest]  # (folder, adapter name) -> manifest, or raise AdapterInvalid


class StoreError(ValueError):
    """A store operation was refused; the message says why."""


class Refusal(BaseModel):
    """Why the folder published under a name is not served."""

    code: str
    message: str


class SourceRecord(BaseModel):
    """What ``<store>/<name>/`` looked like when it was last snapshotted (or refused)."""

    fingerprint: list[Any] | None = None
    sha256: str | None = None
    refusal: Refusal | None = None


class NameState(BaseModel):
    """state.json: the current version of a name (None: removed or refused) and the last number used."""

    current: int | None = None
    last_number: int = 0
    source: SourceRecord = Field(default_factory=SourceRecord)
    updated: datetime = Field(default_factory=lambda: datetime.now(UTC))


@dataclass(frozen=True)
class VersionRecord:
    """One kept version of an adapter."""

    name: str
    number: int
    sha12: str
    folder: Path

    @property
    def label(self) -> str:
        """``name@n``: the engine's adapter name for this version, and what a request may pin."""
        return f"{self.name}@{self.number}"


@dataclass(frozen=True)
class IngestResult:
    changed: bool
    current: int | None
    refusal: Refusal | None = None
    created: VersionRecord | None = None


class Lease:
    """A shared lock on one version folder: while held, garbage collection leaves the folder alone."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def fingerprint(folder: Path) -> list[Any] | None:
    """Identity of a folder and each entry (mode, size, mtime, inode); None when absent. Never raises."""
    try:
        st = os.lstat(folder)
        if not stat.S_ISDIR(st.st_mode):
            return ["not-a-folder", st.st_mode, st.st_ino, st.st_mtime_ns]
        with os.scandir(folder) as it:
            entries = []
            for e in it:
                est = e.stat(follow_symlinks=False)
                entries.append([e.name, est.st_mode, est.st_size, est.st_mtime_ns, est.st_ino])
        return [st.st_ino, st.st_mtime_ns, sorted(entries)]
    except FileNotFoundError:
        return None
    except OSError as e:
        return ["unreadable", e.errno]


def snapshot_copy(src: Path, dst: Path, limits: ValidationLimits, name: str) -> str:
    """Copy the regular files of ``src`` into the empty folder ``dst``; returns the content SHA-256."""
    import hashlib

    h = hashlib.sha256()
    with open_folder(src) as dfd:
        for f in list_files(dfd, name):
            digest = copy_file(dfd, f.name, file_cap(f.name, limits), dst / f.name)
            h.update(f"{f.name}\0{digest}\n".encode())
    return h.hexdigest()


def read_version_manifest(record: VersionRecord) -> Manifest:
    """The manifest inside a version folder (read with the same caps as validation)."""
    with open_folder(record.folder) as dfd:
        try:
            return Manifest.model_validate(read_json(dfd, MANIFEST_FILE, "manifest"))
        except ValueError as e:
            if isinstance(e, AdapterInvalid):
                raise
            raise AdapterInvalid("bad_manifest", f"version {record.label}: manifest.json is invalid: {e}") from e


class VersionStore:
    """The versions of every adapter in one store root (safe to use from several processes at once)."""

    def __init__(self, store_root: Path) -> None:
        self.root = Path(store_root) / VERSIONS_DIR

    def dir(self, name: str) -> Path:
        return self.root / check_name(name)

    @contextmanager
    def locked(self, name: str) -> Iterator[Path]:
        """Hold the name's writer lock (blocking); yields its versions folder."""
        vdir = self.dir(name)
        vdir.mkdir(parents=True, exist_ok=True)
        fd = os.open(vdir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield vdir
        finally:
            os.close(fd)

    def names(self) -> list[str]:
        """Names that have (or had) versions."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if not p.name.startswith(".") and p.is_dir())

    def read_state(self, name: str) -> NameState:
        path = self.dir(name) / STATE_FILE
        try:
            return NameState.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            return NameState()
        except (OSError, ValidationError) as e:
            log.warning("adapter %s: %s is unreadable (%s); using the newest version", name, path, e)
            kept = self.versions(name)
            return NameState(current=kept[-1].number if kept else None,
                             last_number=max((v.number for v in kept), default=0))

    def _write_state(self, name: str, state: NameState) -> None:
        state.updated = datetime.now(UTC)
        data = state.model_dump_json(indent=2).encode()
        atomic_write(self.dir(name) / STATE_FILE, lambda f: f.write(data))

    def versions(self, name: str) -> list[VersionRecord]:
        """Kept versions of ``name``, oldest first."""
        vdir = self.dir(name)
        if not vdir.is_dir():
            return []
        found = []
        for p in vdir.iterdir():
            m = _VERSION_RE.match(p.name)
            if m and p.is_dir() and not p.is_symlink():
                found.append(VersionRecord(name, int(m.group(1)), m.group(2), p))
        return sorted(found, key=lambda v: v.number)

    def find(self, name: str, number: int) -> VersionRecord | None:
        return next((v for v in self.versions(name) if v.number == number), None)

    def current(self, name: str) -> VersionRecord | None:
        """The version requests for ``name`` get now (None: removed, refused, or never published)."""
        state = self.read_state(name)
        return None if state.current is None else self.find(name, state.current)

    # -- writers ----------------------------------------------------------------------------------------
    def _stage(self, vdir: Path, src: Path, name: str, limits: ValidationLimits,
               validator: Validator) -> tuple[Path, str, Manifest]:
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=vdir))
        try:
            sha = snapshot_copy(src, tmp, limits, name)
            return tmp, sha, validator(tmp, name)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _commit(self, vdir: Path, name: str, state: NameState, tmp: Path, sha: str,
                manifest: Manifest) -> tuple[int, bool]:
        """Make a staged copy version n (or reuse the kept version with the same content); set it current.

        Returns the version number and whether it is new.
        """
        same = next((v for v in self.versions(name) if v.sha12 == sha[:12]), None)
        if same is not None:
            shutil.rmtree(tmp, ignore_errors=True)
            state.current = same.number
            return same.number, False
        number = max([state.last_number, *(v.number for v in self.versions(name))]) + 1
        stamped = manifest.model_copy(update={"version": number, "content_sha256": sha}).model_dump_json(indent=2)
        (tmp / MANIFEST_FILE).unlink()
        (tmp / MANIFEST_FILE).write_text(stamped, encoding="utf-8")
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
            f.chmod(0o444)
        tmp.chmod(0o755)
        os.rename(tmp, vdir / f"{number}-{sha[:12]}")
        state.current, state.last_number = number, number
        log.info("adapter %s: version %d (%s) is current", name, number, sha[:12])
        return number, True

    def ingest(self, name: str, src: Path, limits: ValidationLimits, validator: Validator,
               force: bool = False) -> IngestResult:
        """Snapshot ``src`` if it changed since last time: validate the copy, make it current, or record why not.

        A folder that changes while it is copied (an atomic republish) is read again; a refusal is recorded
        only for content that held still.
        """
        for _attempt in range(3):
            fp = fingerprint(src)
            with self.locked(name) as vdir:
                state = self.read_state(name)
                if fp == state.source.fingerprint and not force:
                    return IngestResult(False, state.current, state.source.refusal)
                if fp is None:  # the folder was deleted: the name is removed
                    state.current, state.source = None, SourceRecord()
                    self._write_state(name, state)
                    return IngestResult(True, None)
                try:
                    tmp, sha, manifest = self._stage(vdir, src, name, limits, validator)
                except AdapterInvalid as e:
                    if fingerprint(src) != fp:
                        continue
                    state.current = None
                    state.source = SourceRecord(fingerprint=fp, refusal=Refusal(code=e.code, message=e.message))
                    self._write_state(name, state)
                    return IngestResult(True, None, state.source.refusal)
                if fingerprint(src) != fp:
                    shutil.rmtree(tmp, ignore_errors=True)
                    continue
                number, new = self._commit(vdir, name, state, tmp, sha, manifest)
                state.source = SourceRecord(fingerprint=fp, sha256=sha)
                self._write_state(name, state)
                return IngestResult(True, number, None, self.find(name, number) if new else None)
        return IngestResult(False, self.read_state(name).current)

    def publish(self, name: str, staged: Path, target: Path, overwrite: bool, limits: ValidationLimits,
                validator: Validator, move: Callable[[Path, Path, bool], None]) -> VersionRecord:
        """Validate a snapshot of ``staged``, then move it into place and make that snapshot current."""
        with self.locked(name) as vdir:
            tmp, sha, manifest = self._stage(vdir, staged, name, limits, validator)
            try:
                move(staged, target, overwrite)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            state = self.read_state(name)
            number, _new = self._commit(vdir, name, state, tmp, sha, manifest)
            state.source = SourceRecord(fingerprint=fingerprint(target), sha256=sha)
            self._write_state(name, state)
        record = self.find(name, number)
        assert record is not None
        return record

    def remove(self, name: str, discard: Callable[[], bool]) -> bool:
        """Under the name's lock, delete the published folder (``discard``) and stop serving the name.

        Returns False when there was nothing to remove (no folder and no current version).
        """
        with self.locked(name):
            state = self.read_state(name)
            if not discard() and state.current is None:
                return False
            state.current, state.source = None, SourceRecord()
            self._write_state(name, state)
        return True

    def rollback(self, name: str, to: int | None = None) -> VersionRecord:
        """Make version ``to`` current (default: the newest version older than the current one)."""
        with self.locked(name):
            kept, state = self.versions(name), self.read_state(name)
            if not kept:
                raise StoreError(f"adapter {name!r} has no versions in {self.root.parent}")
            numbers = [v.number for v in kept]
            if to is None:
                older = [v for v in kept if state.current is None or v.number < state.current]
                if not older:
                    raise StoreError(f"adapter {name!r} has no version older than {state.current}; kept: {numbers}")
                chosen = older[-1]
            else:
                found = self.find(name, to)
                if found is None:
                    raise StoreError(f"version {to} of {name!r} is not kept; kept versions: {numbers}")
                chosen = found
            state.current = chosen.number
            self._write_state(name, state)
        log.info("adapter %s: rolled back to version %d", name, chosen.number)
        return chosen

    def gc(self, name: str, keep: int) -> list[VersionRecord]:
        """Delete versions beyond the newest ``keep`` that are not current and that no reader holds."""
        deleted = []
        with self.locked(name) as vdir:
            current = self.read_state(name).current
            for stale in vdir.glob(".tmp-*"):  # copies left by a writer that died (the lock says none is running)
                shutil.rmtree(stale, ignore_errors=True)
            kept = self.versions(name)
            for v in kept[: max(len(kept) - max(keep, 1), 0)]:
                if v.number == current:
                    continue
                fd = os.open(v.folder, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue  # a server is using it; try again next time
                try:
                    grave = vdir / f".tmp-gc-{v.folder.name}"
                    os.rename(v.folder, grave)
                finally:
                    os.close(fd)
                shutil.rmtree(grave, ignore_errors=True)
                deleted.append(v)
        for v in deleted:
            log.info("adapter %s: version %d deleted (beyond the newest %d, unused)", name, v.number, keep)
        return deleted

    @staticmethod
    def lease(record: VersionRecord) -> Lease | None:
        """A shared lock on a version folder, or None when it is gone (or being deleted right now)."""
        try:
            fd = os.open(record.folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            if os.stat(record.folder).st_ino != os.fstat(fd).st_ino:
                raise FileNotFoundError(record.folder)
        except OSError:
            os.close(fd)
            return None
        return Lease(fd)
