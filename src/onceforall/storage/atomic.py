"""Atomic file writes: readers see the old file or the complete new one, never a part.

A file is written under a hidden temporary name unique to the writer (process id and a
random token, so two processes writing the same path never share one), flushed,
``fsync``-ed, renamed over the target and the directory ``fsync``-ed. A writer killed
midway leaves only its temporary file, which :func:`remove_stale_temporaries` clears.

A folder of files that belong together (an export) is written the same way as a whole
(:func:`atomic_directory`): built in a hidden sibling folder, then swapped with the old
folder in one ``renameat2(RENAME_EXCHANGE)`` where Linux offers it (elsewhere two renames,
between which the folder is briefly absent), so a reader finds the old complete folder or
the new complete one, never a mix.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import re
import secrets
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator, Union

from ..errors import UnwritablePathError

__all__ = [
    "atomic_directory",
    "atomic_file",
    "check_file_target",
    "check_folder_target",
    "fsync_directory",
    "remove_stale_directories",
    "remove_stale_temporaries",
    "temporary_name",
    "write_bytes_atomic",
    "write_text_atomic",
]

PathLike = Union[str, "os.PathLike[str]"]
_TEMP_RE = re.compile(r"^\..+\.\d+\.[0-9a-f]{8}\.tmp$")


def temporary_name(path: PathLike) -> Path:
    """A hidden name beside ``path``, unique to this writer."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def fsync_directory(directory: PathLike) -> None:
    """Make a rename in ``directory`` durable (no-op where directories cannot be fsync-ed)."""
    if os.name == "nt":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


@contextmanager
def atomic_file(path: PathLike) -> Iterator[BinaryIO]:
    """Open a temporary file for binary writing; when the block ends without an error it
    is flushed, fsync-ed and renamed to ``path``; on an error it is removed."""
    path = check_file_target(path)
    temp = temporary_name(path)
    try:
        file = open(temp, "xb")
    except OSError as exc:  # no permission
        raise UnwritablePathError(f"cannot write {path}: {exc.strerror}") from None
    try:
        with file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def check_file_target(path: PathLike) -> Path:
    """``path`` as a file to write, its folder made where missing; a folder at ``path``,
    or a file where one of its folders should be, is an :class:`UnwritablePathError`
    naming it."""
    path = Path(path)
    found = _first_existing(path.parent)
    if found is not None and not found.is_dir():
        raise UnwritablePathError(f"cannot write {path}: {found} is a file, not a folder")
    if path.is_dir():
        raise UnwritablePathError(f"cannot write {path}: it is a folder; name a file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UnwritablePathError(f"cannot write {path}: {exc.strerror}") from None
    return path


def check_folder_target(path: PathLike, what: str = "folder") -> Path:
    """``path`` as a folder to make or write into (``what`` it is to be names it):
    an :class:`UnwritablePathError` where it, or one of the folders above it, is a
    file."""
    path = Path(path)
    found = _first_existing(path)
    if found is not None and not found.is_dir():
        if found == path:
            raise UnwritablePathError(f"{path} is a file, not a {what}")
        raise UnwritablePathError(f"{path} cannot be a {what}: {found} is a file")
    return path


def _first_existing(path: Path) -> Path | None:
    """``path`` or the nearest folder above it that exists."""
    return next((p for p in (path, *path.parents) if p.exists()), None)


def write_bytes_atomic(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see the module docstring)."""
    with atomic_file(path) as file:
        file.write(data)
    return Path(path)


def write_text_atomic(path: PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def remove_stale_temporaries(directory: PathLike, prefix: str = "") -> None:
    """Delete the temporary files of killed writers in ``directory`` (those whose target
    name starts with ``prefix``)."""
    directory = Path(directory)
    if not directory.is_dir():
        return
    for entry in directory.iterdir():
        if _TEMP_RE.match(entry.name) and entry.name[1:].startswith(prefix) and entry.is_file():
            entry.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- folders
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _renameat2() -> object | None:
    """libc's ``renameat2`` (Linux, glibc >= 2.28), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        function = libc.renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    function.restype = ctypes.c_int
    return function


_RENAMEAT2 = _renameat2()


def _exchange(a: Path, b: Path) -> bool:
    """Swap the paths ``a`` and ``b`` in one step; False where the system cannot."""
    if _RENAMEAT2 is None:
        return False
    result = _RENAMEAT2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False  # a file system without the exchange
    raise OSError(code, os.strerror(code), str(a))


def _sibling(path: Path, kind: str) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.{kind}")


@contextmanager
def atomic_directory(path: PathLike) -> Iterator[Path]:
    """Yield an empty hidden folder beside ``path`` to fill; when the block ends without
    an error, every file in it is fsync-ed and it replaces ``path`` (see the module
    docstring); on an error it is removed and ``path`` is left as it was. The caller
    keeps other writers of ``path`` out (a lock)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = _sibling(path, "tmp")
    temp.mkdir()
    try:
        yield temp
        for entry in temp.iterdir():
            if entry.is_file():
                with open(entry, "rb+") as file:
                    os.fsync(file.fileno())
        fsync_directory(temp)
        if path.is_dir() and not path.is_symlink():
            if _exchange(temp, path):  # temp now holds the old folder
                fsync_directory(path.parent)
                shutil.rmtree(temp, ignore_errors=True)
                return
            old = _sibling(path, "old")
            os.rename(path, old)
            os.rename(temp, path)
            fsync_directory(path.parent)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(temp, path)
            fsync_directory(path.parent)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise


def remove_stale_directories(path: PathLike) -> list[Path]:
    """Delete what killed :func:`atomic_directory` writers of ``path`` left beside it
    (hidden ``.NAME.<pid>.<token>.tmp`` and ``.old`` folders); call it holding the lock
    that keeps other writers of ``path`` out. Returns what was removed."""
    path = Path(path)
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.\d+\.[0-9a-f]{{8}}\.(tmp|old)$")
    removed = []
    if path.parent.is_dir():
        for entry in path.parent.iterdir():
            if pattern.match(entry.name) and entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
    return removed
