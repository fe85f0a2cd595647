"""The adapter store: one folder per adapter under a root, published by atomic rename, kept as versions.

``<root>/<name>/`` is where adapters are published (by `loradock train`, by copying a folder in); what is
served is an immutable, validated snapshot of it under ``<root>/.versions/`` (see core/versions.py).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from loradock.core.manifest import MANIFEST_FILE, Manifest, check_name
from loradock.core.validate import ValidationLimits
from loradock.core.versions import Refusal, StoreError, Validator, VersionRecord, VersionStore

__all__ = ["AdapterStore", "StoreError", "TMP_PREFIX", "StoreEntry"]
log = logging.getLogger(__name__)
TMP_PREFIX = ".tmp-"


@dataclass(frozen=True)
class StoreEntry:
    """A top-level entry of the store: an adapter name, or something that cannot be one (with why)."""

    entry: str
    name: str | None
    refusal: Refusal | None = None


class AdapterStore:
    """Folders ``<root>/<name>/`` holding PEFT files and ``manifest.json``, plus their versions.

    Names starting with a dot are never adapters: publishing writes to ``.tmp-*`` and renames into place,
    so a reader never sees a half-written adapter.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.versions = VersionStore(self.root)

    def path(self, name: str) -> Path:
        """The folder of adapter ``name`` (the name is checked, so the path cannot escape the root)."""
        return self.root / check_name(name)

    def names(self) -> list[str]:
        """Names of the folders in the store that look like adapters (have a manifest)."""
        if not self.root.is_dir():
            return []
        return sorted(
            p.name for p in self.root.iterdir() if not p.name.startswith(".") and (p / MANIFEST_FILE).is_file()
        )

    def entries(self) -> list[StoreEntry]:
        """Every visible top-level entry; those that cannot be adapters carry a refusal. Never raises."""
        try:
            listing = sorted(os.scandir(self.root), key=lambda e: e.name)
        except OSError as e:
            log.warning("cannot list the adapter store %s: %s", self.root, e)
            return []
        out = []
        for item in listing:
            entry = item.name
            if entry.startswith("."):
                continue
            try:
                check_name(entry)
            except ValueError as err:
                out.append(StoreEntry(entry, None, Refusal(code="bad_name", message=str(err))))
                continue
            try:
                mode = item.stat(follow_symlinks=False).st_mode
            except OSError:
                continue  # vanished while listing
            if stat.S_ISLNK(mode):
                out.append(StoreEntry(entry, None, Refusal(code="symlink", message=(
                    f"{entry} is a symlink; the store serves real folders only (copy the adapter in instead)"))))
            elif not stat.S_ISDIR(mode):
                out.append(StoreEntry(entry, None, Refusal(code="not_a_folder", message=(
                    f"{entry} is not a folder; an adapter is a folder of PEFT files plus manifest.json"))))
            else:
                out.append(StoreEntry(entry, entry))
        return out

    def read_manifest(self, name: str) -> Manifest:
        path = self.path(name) / MANIFEST_FILE
        try:
            return Manifest.model_validate_json(path.read_text(encoding="utf-8"))
        except FileNotFoundError as e:
            raise StoreError(f"adapter {name!r} not found in {self.root}") from e
        except ValueError as e:
            raise StoreError(f"adapter {name!r}: manifest.json is invalid: {e}") from e

    def resolve_inside(self, candidate: str | Path) -> Path:
        """Resolve a caller-given path; refuse anything that lands outside the store after symlinks."""
        root = self.root.resolve()
        raw = Path(candidate)
        if ".." in raw.parts:
            raise StoreError(f"path {str(candidate)!r} contains '..'; name an adapter inside the store")
        resolved = (raw if raw.is_absolute() else root / raw).resolve()
        if resolved == root or root not in resolved.parents:
            raise StoreError(f"path {str(candidate)!r} resolves outside the adapter store {root}")
        if resolved.parent != root:
            raise StoreError(f"path {str(candidate)!r} must be an adapter folder directly under {root}")
        check_name(resolved.name)
        return resolved

    @contextmanager
    def staging(self, name: str) -> Iterator[Path]:
        """A temporary folder inside the store; publish it with :meth:`publish`."""
        check_name(name)
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{name}-", dir=self.root))
        try:
            yield tmp
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def _move_into_place(self, staged: Path, target: Path, overwrite: bool) -> None:
        if target.exists() or target.is_symlink():
            if not overwrite:
                raise StoreError(f"adapter {target.name!r} already exists; pass --overwrite or pick a new --name")
            # Move the old one aside first so the swap is two renames, never a half-deleted folder.
            graveyard = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}old-{target.name}-", dir=self.root))
            os.rename(target, graveyard / "old")
            staged.rename(target)
            shutil.rmtree(graveyard, ignore_errors=True)
        else:
            staged.rename(target)

    def publish(self, staged: Path, manifest: Manifest, overwrite: bool = False,
                limits: ValidationLimits | None = None, validator: Validator | None = None) -> Path:
        """Write the manifest into ``staged`` and rename it into place atomically.

        With a ``validator`` the adapter is validated first (a copy, which becomes its new version) and
        nothing is published if it is refused; without one, a watching server validates it on its next scan.
        """
        target = self.path(manifest.name)
        (staged / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2), encoding="utf-8")
        for f in staged.iterdir():
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        if validator is None:
            self._move_into_place(staged, target, overwrite)
            log.info("published adapter %s -> %s", manifest.name, target)
        else:
            if target.exists() and not overwrite:  # before the copy, not after it
                raise StoreError(f"adapter {manifest.name!r} already exists; pass --overwrite or pick a new --name")
            record = self.versions.publish(manifest.name, staged, target, overwrite, limits or ValidationLimits(),
                                           validator, self._move_into_place)
            log.info("published adapter %s -> %s (version %d)", manifest.name, target, record.number)
        return target

    def copy_from(self, src: Path, manifest: Manifest, overwrite: bool = False) -> Path:
        """Publish a copy of an existing PEFT folder under ``manifest.name``."""
        with self.staging(manifest.name) as tmp:
            for f in Path(src).iterdir():
                if f.is_file() and f.name != MANIFEST_FILE:
                    shutil.copy2(f, tmp / f.name)
            return self.publish(tmp, manifest, overwrite=overwrite)

    def remove(self, name: str) -> None:
        """Stop serving an adapter and delete its published folder (its versions go once unused)."""
        target = self.path(name)

        def discard() -> bool:
            if not (target.exists() or target.is_symlink()):
                return False
            graveyard = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}rm-{name}-", dir=self.root))
            os.rename(target, graveyard / "old")
            shutil.rmtree(graveyard, ignore_errors=True)
            return True

        if not self.versions.remove(name, discard):
            raise StoreError(f"adapter {name!r} not found in {self.root}")

    def history(self, name: str) -> tuple[list[VersionRecord], int | None]:
        """Kept versions of ``name`` (oldest first) and the current version number."""
        check_name(name)
        return self.versions.versions(name), self.versions.read_state(name).current

    def load_json(self, name: str, filename: str) -> dict:
        return json.loads((self.path(name) / filename).read_text(encoding="utf-8"))
