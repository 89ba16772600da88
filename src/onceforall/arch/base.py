"""What generic code (training, search, deployment) may assume of any family's arch values,
spaces and genomes. Each family's space module implements these; code outside a family is
typed against them and never asks which family it holds."""

from __future__ import annotations

import random
from typing import Any, Iterable, Mapping, Protocol, Sequence, Union

import numpy as np

from ..errors import OnceForAllError

__all__ = [
    "ArchError",
    "ArchInput",
    "ArchValue",
    "Genome",
    "MIN_RESOLUTION",
    "Space",
    "choices_text",
    "describe_resolutions",
    "is_int",
]


MIN_RESOLUTION = 16  # below, the stem and first stride-2 stages leave no spatial extent


class ArchError(OnceForAllError, ValueError):
    """An architecture that does not belong to a space; the message names the field,
    the index, the bad value and the allowed values."""


def is_int(value: Any) -> bool:
    """An integer of any kind, but not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


class ArchValue(Protocol):
    """A validated, immutable, hashable architecture: a sub-network of one space."""

    r: int

    def to_dict(self) -> dict[str, list]: ...

    def to_json(self) -> str: ...


ArchInput = Union[ArchValue, Mapping[str, Any], str]


class Genome(Protocol):
    """A space's archs as rows of an integer gene matrix (see :mod:`.genes`)."""

    cardinality: np.ndarray

    @property
    def n_genes(self) -> int: ...

    def genes_of(self, archs: Iterable[Any]) -> np.ndarray: ...

    def decode(self, genes: np.ndarray, canonical: bool = False) -> list[Any]: ...

    def encode(self, genes: np.ndarray) -> np.ndarray: ...

    def network_keys(self, genes: np.ndarray) -> np.ndarray: ...

    def first_occurrences(self, genes: np.ndarray) -> np.ndarray: ...

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray: ...


class Space(Protocol):
    """The choices of one supernet: validates, samples, counts, encodes architectures.

    ``elastic_dimensions`` names the choice sets a training stage may open (fields of
    ``StageConfig``: ``kernel_sizes``, ``expand_ratios``, ``depths``, ``width_mults``);
    :meth:`restrict` returns the part of the space a stage has opened, whose samples
    are archs of this space.
    """

    resolutions: tuple[int, ...]
    elastic_dimensions: tuple[str, ...]
    encoding_type: str

    def parse(self, arch: Any) -> Any: ...

    def canonical(self, arch: Any) -> Any: ...

    def sample(self, rng: random.Random | int | None = None) -> Any: ...

    def largest(self, resolution: int | None = None) -> Any: ...

    def smallest(self, resolution: int | None = None) -> Any: ...

    def num_subnets(self, with_resolution: bool = True) -> int: ...

    def active_slots(self, arch: Any) -> list[int]: ...

    def encode(self, arch: Any) -> np.ndarray: ...

    def encoding_layout(self) -> dict[str, Any]: ...

    def summary(self, arch: Any) -> str: ...

    def genome(self) -> Genome: ...

    def restrict(self, **opened: Sequence[Any]) -> Any: ...


def choices_text(choices: Sequence[Any]) -> str:
    """``3, 5, 7``: allowed values as error messages list them."""
    return ", ".join(str(c) for c in choices)


def describe_resolutions(resolutions: Sequence[int]) -> str:
    """``128 to 224 in steps of 4`` for an even grid, else the list."""
    res = tuple(resolutions)
    steps = {b - a for a, b in zip(res, res[1:])}
    if len(res) > 3 and len(steps) == 1:
        return f"{res[0]} to {res[-1]} in steps of {steps.pop()}"
    return choices_text(res)
