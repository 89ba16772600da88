"""Checking a state dict against the tensors a network expects, before loading it.

Exports, the authors' checkpoints and their specialised nets are all loaded by name; a
file that does not fit is refused with every missing key, unexpected key and wrong
shape named, and nothing is loaded.
"""

from __future__ import annotations

from typing import Mapping

import torch

__all__ = ["state_dict_problems"]


def _listing(names: list[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def state_dict_problems(
    expected: Mapping[str, torch.Size], given: Mapping[str, torch.Tensor]
) -> list[str]:
    """What keeps ``given`` from loading where ``expected`` shapes are wanted (both keyed
    the same way): missing keys, unexpected keys, shape mismatches. Empty if it fits."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    shapes = sorted(
        f"{k} {tuple(given[k].shape)} (network: {tuple(shape)})"
        for k, shape in expected.items()
        if k in given and given[k].shape != shape
    )
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {_listing(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches ({len(shapes)}): {_listing(shapes)}")
    return problems
