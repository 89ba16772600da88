"""Argument types of the ``ofa`` commands: a number out of range is refused by argparse,
in one line naming the option and the value (``argument --repeats: must be a whole
number >= 1, not '0'``); and the ``--arch`` argument, JSON text or a file holding it."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Callable

from ..arch.base import MIN_RESOLUTION
from ..errors import ConfigError, FileFormatError, InputNotFoundError
from ..storage.reading import loads_json, read_text


def whole_number(at_least: int) -> Callable[[str], int]:
    """An argparse type: a whole number >= ``at_least``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < at_least:
            raise argparse.ArgumentTypeError(f"must be a whole number >= {at_least}, not {text!r}")
        return value

    return parse


positive = whole_number(1)
count = whole_number(0)
resolution = whole_number(MIN_RESOLUTION)  # an input size in pixels


def fraction(text: str) -> float:
    """An argparse type: a number in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1), not {text!r}")
    return value


def device(text: str) -> str:
    """An argparse type: a device torch knows and this machine has (cpu, cuda, cuda:N)."""
    from ..errors import ConfigError
    from ..training.distributed import parse_device

    try:
        parse_device(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def load_arch_text(text: str) -> str:
    """Arch JSON from ``text``: the JSON itself (text starting with ``{``), or a file
    holding an arch, or what ``ofa search --out`` / ``ofa specialize`` write for one
    target (its ``arch``)."""
    if text.lstrip().startswith("{"):
        return text  # not a file name (which may be too long for one)
    path = Path(text)
    if not _is_file(path):
        raise InputNotFoundError(f"{text!r} is neither a file nor arch JSON text")
    content = read_text(path, "arch file")
    try:
        data = loads_json(content)
    except json.JSONDecodeError as exc:
        raise FileFormatError(f"{path} is not JSON (an arch file): {exc}") from None
    if isinstance(data, list) and len(data) == 1 and isinstance(data[0], dict):
        data = data[0]
    if isinstance(data, list) and data and all(isinstance(r, dict) and "arch" in r for r in data):
        targets = ", ".join(str(r.get("target")) for r in data)
        raise ConfigError(f"{path} holds the archs of several targets ({targets}); give one")
    if isinstance(data, dict) and isinstance(data.get("arch"), dict):
        return json.dumps(data["arch"])
    return content


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # a name too long for a file
        return False
