"""Argument types of the ``ofa`` commands: a number out of range is refused by argparse,
in one line naming the option and the value (``argument --repeats: must be a whole
number >= 1, not '0'``)."""

from __future__ import annotations

import argparse
import math
from typing import Callable

from ..arch.base import MIN_RESOLUTION


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
