"""A run directory knows it is one, and has one writer at a time.

A run directory holds days of work, so two rules guard it:

- **Marker.** ``RUN/.onceforall-run`` (JSON: format version, when it was created) says
  the folder is a run directory. A command that writes into a folder claims it first
  (:func:`claim_run_directory`): a new or empty folder gets the marker, a run written
  before markers existed (it holds ``config.yaml``) is adopted, and any other non-empty
  folder is refused. ``--fresh`` deletes only a folder carrying the marker, or an empty
  one (:func:`remove_run_directory`).
- **Lock.** Every command that writes into a run holds an exclusive advisory lock on
  ``RUN/.lock`` while it runs (:func:`run_lock`). The operating system releases it when
  the process ends, however it ends, so a killed run never leaves the folder locked. A
  second writer is refused at once, naming the process that holds the lock. Readers
  (search, predict) take no lock. The lock is re-entrant within a process (``ofa run``
  holds it and the training inside takes it again).

A file or folder outside a run that is replaced as a whole (an export, see
:func:`onceforall.storage.atomic.atomic_directory`; a latency table) is locked the same
way through a hidden ``.NAME.lock`` file beside it (:func:`lock_beside`).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import ContextManager, Iterator

from ..errors import RunDirectoryError
from .atomic import write_text_atomic
from .run_layout import PathLike, RunLayout

try:
    import fcntl
except ImportError:  # Windows: no advisory locks here; the marker still guards --fresh
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "MARKER_FORMAT",
    "claim_run_directory",
    "exclusive_lock",
    "holds_files",
    "lock_beside",
    "remove_run_directory",
    "run_lock",
]

MARKER_FORMAT = 1
_held: dict[Path, tuple[int, int]] = {}  # resolved root -> (file descriptor, depth)


def _is_run_from_before_markers(layout: RunLayout) -> bool:
    return layout.config.is_file()


def holds_files(layout: RunLayout) -> bool:
    """Whether the folder of ``layout`` holds anything but its lock file (which a
    refused or finished writer leaves)."""
    return layout.root.is_dir() and any(p != layout.lock for p in layout.root.iterdir())


def claim_run_directory(root: PathLike) -> RunLayout:
    """Make sure ``root`` is a run directory (creating it, marking an empty folder,
    adopting an unmarked run); refuse any other non-empty folder."""
    layout = RunLayout(root)
    marker = layout.marker
    if marker.is_file():
        try:
            version = json.loads(marker.read_text())["format"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise RunDirectoryError(
                f"{marker} is damaged ({exc}); it marks {root} as a run"
            ) from exc
        if not isinstance(version, int) or version > MARKER_FORMAT:
            raise RunDirectoryError(
                f"{root} is a run directory of format {version}; this version of onceforall "
                f"reads format {MARKER_FORMAT} and older: upgrade onceforall"
            )
        return layout
    if layout.root.exists() and not layout.root.is_dir():
        raise RunDirectoryError(f"{root} is a file, not a run directory")
    if holds_files(layout):
        if not _is_run_from_before_markers(layout):
            raise RunDirectoryError(
                f"{root} is not empty and is not a run directory (no {marker.name}): "
                "choose a new or empty folder for the run"
            )
    layout.root.mkdir(parents=True, exist_ok=True)
    record = {"format": MARKER_FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_text_atomic(marker, json.dumps(record) + "\n")
    return layout


def remove_run_directory(root: PathLike) -> None:
    """Delete the run directory ``root`` (``--fresh``): only a folder that carries the
    marker, or an empty one; anything else is refused, untouched."""
    layout = RunLayout(root)
    if not layout.root.exists():
        return
    if not layout.root.is_dir():
        raise RunDirectoryError(f"--fresh refuses to delete {root}: it is a file")
    if not layout.marker.is_file() and holds_files(layout):
        raise RunDirectoryError(
            f"--fresh refuses to delete {root}: it is not a run directory (no "
            f"{layout.marker.name}); delete it yourself if it is one from an older version"
        )
    with run_lock(layout.root):  # not while another process writes into it
        shutil.rmtree(layout.root)


def _holder(lock: Path) -> str:
    try:
        text = lock.read_text().strip()
    except OSError:
        return "another process"
    return text or "another process"


@contextmanager
def run_lock(root: PathLike) -> Iterator[None]:
    """Hold the exclusive lock of the run directory ``root`` (created if missing) for
    the block; raise RunDirectoryError at once if another process holds it."""
    layout = RunLayout(root)
    layout.root.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(layout.lock, str(root)):
        yield


def lock_beside(path: PathLike) -> ContextManager[None]:
    """The lock of a file or folder that is replaced as a whole (an export, a latency
    table outside a run): a hidden ``.NAME.lock`` file beside it, since the path itself
    is swapped."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return exclusive_lock(path.with_name(f".{path.name}.lock"), str(path))


@contextmanager
def exclusive_lock(lock: Path, subject: str) -> Iterator[None]:
    """Hold an exclusive advisory lock on the file ``lock`` (created if missing) for the
    block, re-entrant within this process; raise RunDirectoryError naming ``subject`` and
    the holder at once if another process holds it."""
    key = lock.resolve()
    if key in _held:
        fd, depth = _held[key]
        _held[key] = (fd, depth + 1)
        try:
            yield
        finally:
            fd, depth = _held[key]
            _held[key] = (fd, depth - 1)
        return
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RunDirectoryError(
                    f"{subject} is in use by {_holder(lock)}: one command at a time "
                    "writes into it; wait for that one to finish or stop it"
                ) from None
        os.ftruncate(fd, 0)
        command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:200]
        os.write(fd, f"process {os.getpid()} ({command})\n".encode())
        _held[key] = (fd, 1)
        try:
            yield
        finally:
            del _held[key]
    finally:
        os.close(fd)  # releases the lock
