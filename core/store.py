"""The adapter store: one folder per adapter under a root, published by atomic rename."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from loradock.core.manifest import MANIFEST_FILE, Manifest, check_name

log = logging.getLogger(__name__)
TMP_PREFIX = ".tmp-"


class StoreError(ValueError):
    """A store operation was refused; the message says why."""


class AdapterStore:
    """Folders ``<root>/<name>/`` holding PEFT files and ``manifest.json``.

    Names starting with a dot are never adapters: publishing writes to ``.tmp-*`` and renames into place,
    so a reader never sees a half-written adapter.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

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

    def publish(self, staged: Path, manifest: Manifest, overwrite: bool = False) -> Path:
        """Write the manifest into ``staged`` and rename it into place atomically."""
        target = self.path(manifest.name)
        (staged / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2), encoding="utf-8")
        for f in staged.iterdir():
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        if target.exists():
            if not overwrite:
                raise StoreError(f"adapter {manifest.name!r} already exists; pass --overwrite or pick a new --name")
            # Move the old one aside first so the swap is two renames, never a half-deleted folder.
            graveyard = self.root / f"{TMP_PREFIX}old-{manifest.name}-{os.getpid()}"
            target.rename(graveyard)
            staged.rename(target)
            shutil.rmtree(graveyard, ignore_errors=True)
        else:
            staged.rename(target)
        log.info("published adapter %s -> %s", manifest.name, target)
        return target

    def copy_from(self, src: Path, manifest: Manifest, overwrite: bool = False) -> Path:
        """Publish a copy of an existing PEFT folder under ``manifest.name``."""
        with self.staging(manifest.name) as tmp:
            for f in Path(src).iterdir():
                if f.is_file() and f.name != MANIFEST_FILE:
                    shutil.copy2(f, tmp / f.name)
            return self.publish(tmp, manifest, overwrite=overwrite)

    def remove(self, name: str) -> None:
        """Delete an adapter (rename away first, so readers see it vanish at once)."""
        target = self.path(name)
        if not target.exists():
            raise StoreError(f"adapter {name!r} not found in {self.root}")
        graveyard = self.root / f"{TMP_PREFIX}rm-{name}-{os.getpid()}"
        target.rename(graveyard)
        shutil.rmtree(graveyard, ignore_errors=True)

    def load_json(self, name: str, filename: str) -> dict:
        return json.loads((self.path(name) / filename).read_text(encoding="utf-8"))
