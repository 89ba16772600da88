"""Atomic file writes: readers see the old file or the complete new one, never a part.

A file is written under a hidden temporary name unique to the writer (process id and a
random token, so two processes writing the same path never share one), flushed,
``fsync``-ed, renamed over the target and the directory ``fsync``-ed. A writer killed
midway leaves only its temporary file, which :func:`remove_stale_temporaries` clears.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator, Union

__all__ = [
    "atomic_file",
    "fsync_directory",
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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = temporary_name(path)
    try:
        with open(temp, "xb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


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
        if _TEMP_RE.match(entry.name) and entry.name[1:].startswith(prefix):
            entry.unlink(missing_ok=True)
