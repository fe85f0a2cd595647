"""Reading an adapter folder without trusting it: regular files only, no symlinks, size caps, bounded JSON.

Every function here either returns what was asked or raises :class:`AdapterInvalid` with a code. A FIFO, a
device, a symlink (inside the folder, or the folder itself) or an oversized file is refused before a byte is
read, so a hostile folder can neither block the reader nor lead it out of the store.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

JSON_MAX_BYTES = 1 << 20  # manifest.json and adapter_config.json
OTHER_MAX_BYTES = 16 << 20  # loss curves, READMEs, anything else beside the weights
MAX_FILES = 64
MAX_JSON_DEPTH = 64
_CHUNK = 1 << 20
# O_NONBLOCK: opening a FIFO that was swapped in after the check must not wait for a writer.
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


class AdapterInvalid(ValueError):
    """An adapter that must not be served. ``code`` names the check that failed."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class FileEntry:
    """One regular file of an adapter folder, as ``lstat`` saw it."""

    name: str
    size: int
    mtime_ns: int
    inode: int


def _os_refusal(e: OSError, what: str) -> AdapterInvalid:
    if e.errno == errno.ELOOP:
        return AdapterInvalid("symlink", f"{what} is a symlink; the store serves real folders and files only "
                                         "(copy the files in instead of linking them)")
    if e.errno == errno.ENOTDIR:
        return AdapterInvalid("not_a_folder", f"{what} is not a folder; an adapter is a folder of PEFT files")
    if e.errno == errno.ENOENT:
        return AdapterInvalid("missing_file", f"{what} does not exist")
    if e.errno in (errno.EACCES, errno.EPERM):
        return AdapterInvalid("unreadable", f"{what} cannot be read by the server ({e.strerror}); fix its "
                                            "permissions")
    return AdapterInvalid("unreadable", f"{what} cannot be read ({e.strerror or e})")


@contextmanager
def open_folder(folder: Path) -> Iterator[int]:
    """A directory fd for ``folder``, refusing a symlink or a non-folder in its place."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        if e.errno == errno.ENOTDIR and os.path.islink(folder):  # O_NOFOLLOW with O_DIRECTORY says ENOTDIR
            e = OSError(errno.ELOOP, "symlink")
        raise _os_refusal(e, f"adapter folder {folder.name!r}") from e
    try:
        yield fd
    finally:
        os.close(fd)


def list_files(dir_fd: int, folder_name: str = "adapter folder") -> list[FileEntry]:
    """Every entry of an opened folder as a regular file; anything else is refused. Sorted by name."""
    files: list[FileEntry] = []
    try:
        with os.scandir(dir_fd) as it:
            for entry in it:
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    raise AdapterInvalid("symlink", f"{entry.name} in {folder_name} is a symlink; the store "
                                                    "serves regular files only (copy the file in instead)")
                if not stat.S_ISREG(st.st_mode):
                    kind = "folder" if stat.S_ISDIR(st.st_mode) else "FIFO, socket or device"
                    raise AdapterInvalid("not_regular_file", f"{entry.name} in {folder_name} is a {kind}; an "
                                                             "adapter folder holds regular files only")
                files.append(FileEntry(entry.name, st.st_size, st.st_mtime_ns, st.st_ino))
                if len(files) > MAX_FILES:
                    raise AdapterInvalid("too_many_files", f"{folder_name} holds more than {MAX_FILES} files")
    except OSError as e:
        raise _os_refusal(e, folder_name) from e
    return sorted(files, key=lambda f: f.name)


@contextmanager
def open_regular(dir_fd: int, name: str, cap: int) -> Iterator[tuple[int, int]]:
    """``(fd, size)`` of a regular file in an opened folder, refused if it is anything else or over ``cap``."""
    try:
        fd = os.open(name, _OPEN_FLAGS, dir_fd=dir_fd)
    except OSError as e:
        raise _os_refusal(e, name) from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise AdapterInvalid("not_regular_file", f"{name} is not a regular file")
        if st.st_size > cap:
            raise AdapterInvalid("too_large", f"{name} is {st.st_size} bytes; the server accepts at most {cap}")
        yield fd, st.st_size
    finally:
        os.close(fd)


def read_capped(dir_fd: int, name: str, cap: int) -> bytes:
    """The whole content of a regular file, at most ``cap`` bytes (a file growing past it is refused)."""
    with open_regular(dir_fd, name, cap) as (fd, _size):
        chunks, total = [], 0
        try:
            while chunk := os.read(fd, _CHUNK):
                total += len(chunk)
                if total > cap:
                    raise AdapterInvalid("too_large", f"{name} grew past {cap} bytes while being read")
                chunks.append(chunk)
        except OSError as e:
            raise _os_refusal(e, name) from e
        return b"".join(chunks)


def _depth_ok(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return False
            children = item.values() if isinstance(item, dict) else item
            stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return True


def parse_json_object(data: bytes, name: str) -> dict[str, Any]:
    """A JSON object from bytes, refused if malformed, not an object, or nested deeper than 64 levels."""
    try:
        value = json.loads(data)
    except RecursionError as e:
        raise AdapterInvalid("bad_json", f"{name} nests deeper than {MAX_JSON_DEPTH} levels") from e
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
        raise AdapterInvalid("bad_json", f"{name} is not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise AdapterInvalid("bad_json", f"{name} must hold a JSON object, not {type(value).__name__}")
    if not _depth_ok(value, MAX_JSON_DEPTH):
        raise AdapterInvalid("bad_json", f"{name} nests deeper than {MAX_JSON_DEPTH} levels")
    return value


def read_json(dir_fd: int, name: str, what: str) -> dict[str, Any]:
    """A JSON object file of an opened folder (a missing file is refused as ``missing_file``)."""
    try:
        data = read_capped(dir_fd, name, JSON_MAX_BYTES)
    except AdapterInvalid as e:
        if e.code == "missing_file":
            raise AdapterInvalid("missing_file", f"{what} missing: {name} is required in an adapter folder") from e
        raise
    return parse_json_object(data, name)


def copy_file(src_dir_fd: int, name: str, cap: int, dst: Path) -> str:
    """Copy one regular file (at most ``cap`` bytes) to ``dst``; returns the SHA-256 of what was copied."""
    h = hashlib.sha256()
    with open_regular(src_dir_fd, name, cap) as (fd, _size), open(dst, "xb") as out:
        total = 0
        try:
            while chunk := os.read(fd, _CHUNK):
                total += len(chunk)
                if total > cap:
                    raise AdapterInvalid("too_large", f"{name} grew past {cap} bytes while being copied")
                h.update(chunk)
                out.write(chunk)
        except OSError as e:
            raise _os_refusal(e, name) from e
        out.flush()
        os.fsync(out.fileno())
    return h.hexdigest()
