"""Reading the files a user names: text that is not UTF-8, JSON nested deeper than
Python's parser recurses, PyTorch files that are not PyTorch files. Each fails with the
package's error, in one line naming the file, instead of the built-in error of whatever
read it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..errors import FileFormatError, InputNotFoundError

__all__ = ["loads_json", "read_text", "read_weights_only"]


def read_text(path: str | Path, what: str) -> str:
    """The text of the file ``path`` (``what`` it should be names it in errors): a
    file that is missing, a folder, unreadable or not UTF-8 text is an error."""
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"no {what} at {path}")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise FileFormatError(
            f"{path} is not a text file ({what}): byte {exc.start} is not UTF-8"
        ) from None
    except OSError as exc:
        raise FileFormatError(f"{path} cannot be read ({what}): {exc.strerror}") from None


def loads_json(text: str) -> Any:
    """``json.loads``; a document nested too deeply for Python's parser (which raises
    RecursionError) is a :class:`json.JSONDecodeError` like any other that does not
    parse."""
    try:
        return json.loads(text)
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply", text, 0) from None


def read_weights_only(path: str | Path, what: str) -> Any:
    """The contents of a PyTorch file, read with ``weights_only`` (a pickle that would
    build any other object is refused, not run); errors in one line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"no {what} at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, not a PyTorch file, or an unsafe pickle
        raise FileFormatError(
            f"{path} cannot be read as a weights-only PyTorch file ({what}): {_torch_problem(exc)}"
        ) from None


def _torch_problem(exc: Exception) -> str:
    """What ``torch.load`` says is wrong, in one short line: the unpickler's own reason
    for a file weights-only loading refuses (not the paragraph around it, which suggests
    loading without ``weights_only``), else the first sentence."""
    text = str(exc).strip()
    if "WeightsUnpickler error:" in text:
        reason = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation")[0]
        reason = " ".join(reason.split()) or "refused"
        return f"not a PyTorch file, or one holding objects it does not allow ({reason})"
    first = text.splitlines()[0] if text else type(exc).__name__
    return first.split(". ")[0]
