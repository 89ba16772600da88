"""Crash-safe, verified training checkpoints that never execute code from the file.

Training runs last days, so a kill at any instant (SIGKILL, OOM killer, power loss) must cost
at most the work since the last checkpoint, and a damaged or hostile file must be detected
and refused rather than loaded.

File format (one self-contained file per checkpoint, ``ckpt-{counter:08d}-{step_tag}.pt``)::

    header   16 bytes   b"OFACKPT\\0", format version (u32 LE, = 1), reserved (u32, = 0)
    payload  L bytes    the output of ``torch.save(state)`` (a zip archive)
    footer   48 bytes   L (u64 LE), SHA-256 of header + payload (32 bytes), b"OFACKEND"

The integrity record is a footer rather than a sidecar so that a single atomic rename
publishes the payload and its checksum together: there is never a window in which a payload
exists without its record, and retention deletes one file.  The header tells "not a
checkpoint" apart from "truncated" (header present, footer missing or lengths disagree).

Writing: the file is written to a hidden temporary name in the same directory (hashing as it
streams, no second pass), flushed, ``os.fsync``-ed, ``os.replace``-d to its final name and the
directory is fsync-ed.  Older checkpoints are deleted only after that, so the newest ``keep``
complete checkpoints always exist.  Retention counts only files that look complete (header,
footer and length agree: 64 bytes read); one that does not, and one that failed a full check
when the writer resumed, is moved aside as ``NAME.corrupt`` (kept for inspection, never
listed, never counted), so a damaged or foreign file cannot displace a good checkpoint.
Temporary files left by a killed writer are never listed and are removed by the next save.
One writer per directory is assumed; readers may run concurrently.

Loading reads the whole file into memory, verifies length and SHA-256, and unpickles exactly
those verified bytes (no time-of-check/time-of-use gap) with
``torch.load(weights_only=True, map_location="cpu")``, which refuses any pickle that would
construct arbitrary objects or call functions.  Peak memory is about twice the file size.
Because of that, ``save_checkpoint`` refuses (with the offending key path) any value that
``weights_only`` loading would reject, e.g. a ``numpy.float64``: better to fail at save
time than after days of training, when resuming.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
import struct
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any, BinaryIO, Union

import numpy as np
import torch

from ..errors import OnceForAllError
from .atomic import atomic_file, remove_stale_temporaries

__all__ = [
    "CheckpointError",
    "CheckpointWarning",
    "list_checkpoints",
    "checkpoint_digest",
    "load_checkpoint",
    "load_latest_checkpoint",
    "save_checkpoint",
]

PathLike = Union[str, "os.PathLike[str]"]

_MAGIC = b"OFACKPT\x00"
_VERSION = 1
_HEADER = struct.Struct("<8sII")  # magic, version, reserved
_END_MAGIC = b"OFACKEND"
_FOOTER = struct.Struct("<Q32s8s")  # payload length, sha256(header + payload), end magic

_NAME_RE = re.compile(r"^ckpt-(\d{8,})-([A-Za-z0-9._-]+)\.pt$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,99}$")


class CheckpointError(OnceForAllError, RuntimeError):
    """A checkpoint file is missing, truncated, corrupted, or not loadable safely."""

    def __init__(self, path: PathLike, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"checkpoint {self.path}: {reason}")


class CheckpointWarning(UserWarning):
    """A checkpoint was skipped by :func:`load_latest_checkpoint` (the message says why)."""


# ----------------------------------------------------------------------------- listing


def list_checkpoints(directory: PathLike) -> list[Path]:
    """Complete checkpoints in ``directory``, oldest first, newest last.

    Only final names count; temporary files of an interrupted writer are ignored.  Files are
    not verified here (that needs a full read); a missing directory gives ``[]``.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for entry in directory.iterdir():
        match = _NAME_RE.match(entry.name)
        if match and entry.is_file():
            found.append((int(match.group(1)), entry.name, entry))
    found.sort()
    return [entry for _, _, entry in found]


# ----------------------------------------------------------------------------- saving


class _HashingWriter:
    """File-like sink for ``torch.save`` that hashes and counts the bytes it writes."""

    def __init__(self, file: BinaryIO, digest: Any) -> None:
        self._file = file
        self._digest = digest
        self.nbytes = 0

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self._digest.update(view)
        self._file.write(view)
        self.nbytes += view.nbytes
        return view.nbytes

    def flush(self) -> None:
        self._file.flush()


_LEAF_TYPES = (type(None), bool, int, float, str, bytes, torch.dtype)


def _check_loadable(value: Any, where: str) -> None:
    """Raise TypeError naming the key path of the first value ``weights_only`` would refuse.

    Exact type checks on purpose: e.g. ``numpy.float64`` subclasses ``float`` but is pickled
    as a numpy global, which ``torch.load(weights_only=True)`` rejects.
    """
    kind = type(value)
    if kind in (torch.Tensor, torch.nn.Parameter) or kind in _LEAF_TYPES:
        return
    if kind is torch.Size:
        return
    if kind in (dict, OrderedDict):
        for key, item in value.items():
            _check_loadable(key, f"{where} (a key)")
            _check_loadable(item, f"{where}[{key!r}]")
        return
    if kind in (list, tuple):
        for index, item in enumerate(value):
            _check_loadable(item, f"{where}[{index}]")
        return
    hint = ""
    if isinstance(value, np.ndarray):
        hint = "; convert it with torch.from_numpy(...) or .tolist()"
    elif isinstance(value, np.generic):
        hint = "; convert it with .item()"
    elif isinstance(value, torch.Tensor):
        hint = "; save a plain tensor (e.g. tensor.detach().clone())"
    raise TypeError(
        f"state{where} is a {kind.__module__}.{kind.__qualname__}, which "
        f"torch.load(weights_only=True) cannot load{hint}. Allowed: tensors, dict, list, "
        "tuple, str, bytes, int, float, bool, None, torch.Size, torch.dtype."
    )


def save_checkpoint(directory: PathLike, step_tag: str, state: dict, keep: int = 2) -> Path:
    """Atomically write ``state`` as the newest checkpoint in ``directory``; return its path.

    ``step_tag`` (letters, digits, ``._-``) only labels the file; order comes from a counter
    one above the newest existing checkpoint.  After the new file is durable, all but the
    newest ``keep`` checkpoints are deleted.  Raises TypeError, before writing anything, if
    ``state`` holds a value that ``weights_only`` loading would refuse.
    """
    if not isinstance(step_tag, str) or not _TAG_RE.match(step_tag):
        raise ValueError(
            f"step_tag {step_tag!r} must be 1-100 characters of letters, digits, '.', '_', '-' "
            "and must not start with '.' or '-'"
        )
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ValueError(f"keep must be an int >= 1, got {keep!r}")
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict, got {type(state).__qualname__}")
    _check_loadable(state, "")

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(directory, prefix="ckpt-")
    existing = _complete_checkpoints(directory)
    counter = int(_NAME_RE.match(existing[-1].name).group(1)) + 1 if existing else 1
    final = directory / f"ckpt-{counter:08d}-{step_tag}.pt"
    with atomic_file(final) as file:
        digest = hashlib.sha256()
        header = _HEADER.pack(_MAGIC, _VERSION, 0)
        file.write(header)
        digest.update(header)
        writer = _HashingWriter(file, digest)
        torch.save(state, writer)
        file.write(_FOOTER.pack(writer.nbytes, digest.digest(), _END_MAGIC))

    for old in _complete_checkpoints(directory)[:-keep]:
        try:
            old.unlink()
        except FileNotFoundError:
            pass
    return final


def _looks_complete(path: Path) -> bool:
    """Header, footer and length agree (reads 64 bytes; the checksum is not computed)."""
    try:
        size = path.stat().st_size
        if size < _HEADER.size + _FOOTER.size:
            return False
        with path.open("rb") as f:
            magic, version, _ = _HEADER.unpack(f.read(_HEADER.size))
            f.seek(size - _FOOTER.size)
            length, _, end_magic = _FOOTER.unpack(f.read(_FOOTER.size))
    except OSError:
        return False
    expected = _HEADER.size + length + _FOOTER.size
    return magic == _MAGIC and version == _VERSION and end_magic == _END_MAGIC and expected == size


def _move_aside(path: Path) -> None:
    """Rename a damaged checkpoint to ``NAME.corrupt`` (out of listing and retention)."""
    try:
        os.replace(path, path.with_name(path.name + ".corrupt"))
    except FileNotFoundError:
        pass


def _complete_checkpoints(directory: Path) -> list[Path]:
    """The checkpoints that look complete, oldest first; the others are moved aside."""
    found = []
    for path in list_checkpoints(directory):
        if _looks_complete(path):
            found.append(path)
        else:
            _move_aside(path)
    return found


def checkpoint_digest(path: PathLike) -> str | None:
    """The SHA-256 (hex) of the checkpoint's contents as its footer records it (64 bytes
    read, nothing verified), or None for a file that does not look complete. Files made
    from a checkpoint record it to say which weights they came from."""
    path = Path(path)
    if not _looks_complete(path):
        return None
    with path.open("rb") as f:
        f.seek(-_FOOTER.size, os.SEEK_END)
        _, digest, _ = _FOOTER.unpack(f.read(_FOOTER.size))
    return digest.hex()


# ----------------------------------------------------------------------------- loading


def _verified_payload(path: Path) -> memoryview:
    """Read ``path`` and return its payload after checking header, length and SHA-256."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(path, f"cannot be read ({exc.strerror or exc})") from exc
    size = len(data)
    head = _HEADER.size
    if size < len(_MAGIC):
        if _MAGIC.startswith(data):
            raise CheckpointError(path, f"truncated: only {size} bytes, header incomplete")
        raise CheckpointError(path, "not a checkpoint: missing the OFACKPT header")
    magic, version, _ = _HEADER.unpack_from(data) if size >= head else (data[:8], None, 0)
    if magic != _MAGIC:
        raise CheckpointError(
            path,
            "not a checkpoint written by onceforall (missing the OFACKPT header)",
        )
    if version is None or size < head + _FOOTER.size:
        raise CheckpointError(
            path, f"truncated: {size} bytes, too short to hold the payload and integrity footer"
        )
    if version != _VERSION:
        raise CheckpointError(path, f"unsupported format version {version} (expected 1)")
    length, recorded, end_magic = _FOOTER.unpack_from(data, size - _FOOTER.size)
    if end_magic != _END_MAGIC:
        raise CheckpointError(
            path,
            f"truncated or damaged: integrity footer missing at the end of the file "
            f"({size} bytes); the writer was probably interrupted",
        )
    expected = head + length + _FOOTER.size
    if expected != size:
        raise CheckpointError(
            path,
            f"truncated or corrupted: footer records a {length}-byte payload, so the file "
            f"should have {expected} bytes but has {size}",
        )
    view = memoryview(data)
    actual = hashlib.sha256(view[: head + length]).digest()
    if actual != recorded:
        raise CheckpointError(
            path,
            f"checksum mismatch: SHA-256 of the contents is {actual.hex()[:16]}..., the "
            f"footer records {recorded.hex()[:16]}...; the file is corrupted",
        )
    return view[head : head + length]


def load_checkpoint(path: PathLike) -> dict:
    """Verify ``path`` and load it onto the CPU without executing code from it.

    Raises CheckpointError naming the file and the problem: unreadable, not a checkpoint,
    truncated, checksum mismatch, or contents that ``weights_only`` loading refuses.
    """
    path = Path(path)
    payload = _verified_payload(path)
    try:
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            path,
            "refused: the checksum is valid but the contents hold objects that "
            f"torch.load(weights_only=True) does not allow ({first_line[:300]}); "
            "loading them could execute code",
        ) from exc
    except Exception as exc:  # a hostile or foreign payload can fail in many ways
        raise CheckpointError(
            path, f"payload is not loadable: {type(exc).__name__}: {str(exc)[:300]}"
        ) from exc
    if not isinstance(state, dict):
        raise CheckpointError(path, f"payload is a {type(state).__qualname__}, not a dict")
    return state


def load_latest_checkpoint(
    directory: PathLike, *, move_aside: bool = False
) -> tuple[Path, dict] | None:
    """The newest checkpoint in ``directory`` that verifies, as ``(path, state)``.

    A newer file that fails verification is skipped with a CheckpointWarning naming it and
    the reason; with ``move_aside`` (the directory's writer, resuming), once an older one
    verifies, the skipped ones are renamed ``NAME.corrupt`` so that they no longer count as
    checkpoints kept.  Returns None when there are no checkpoints (or no directory: a fresh
    run); raises CheckpointError (moving nothing) when checkpoints exist but none verifies.
    """
    candidates = list_checkpoints(directory)
    failures, failed = [], []
    for path in reversed(candidates):
        try:
            state = load_checkpoint(path)
        except CheckpointError as exc:
            failures.append(str(exc))
            failed.append(path)
            aside = f" (moving it aside to {path.name}.corrupt)" if move_aside else ""
            warnings.warn(
                f"skipping {exc}{aside}; falling back to an older checkpoint",
                CheckpointWarning,
                stacklevel=2,
            )
            continue
        for bad in failed if move_aside else ():
            _move_aside(bad)
        return path, state
    if not candidates:
        return None
    raise CheckpointError(
        Path(directory),
        f"none of the {len(candidates)} checkpoints verifies: " + "; ".join(failures),
    )
