"""What search, specialisation and ``ofa predict`` need of an accuracy predictor.

Our MLP (:class:`~.accuracy.AccuracyPredictor`) and a predictor read from the authors'
files (:mod:`onceforall.compat.predictors`) both provide it, so the code that uses a
predictor never asks where it came from: a file is recognised once, where it is read.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import numpy as np

from ..arch import ArchInput, Space

__all__ = ["ArchPredictor", "GenePredictor"]

# Predicted top-1 (percent) of every row of a gene matrix of one space.
GenePredictor = Callable[[np.ndarray], np.ndarray]


@runtime_checkable
class ArchPredictor(Protocol):
    """An accuracy predictor: predicted top-1 in percent.

    ``resolutions`` are the input sizes it can encode; search runs on those of the
    supernet's that it (and the latency table) covers. :meth:`check_supernet` raises a
    :class:`~onceforall.predictors.PredictorMismatchError` for a supernet it was not made
    for. :meth:`gene_predictor` returns the vectorised form search calls once per
    generation, for gene rows of ``space`` (the supernet's space, possibly at fewer
    resolutions)."""

    @property
    def resolutions(self) -> tuple[int, ...]: ...

    def describe(self) -> str: ...

    def check_supernet(self, supernet: Any) -> None: ...

    def predict(self, archs: Sequence[ArchInput]) -> np.ndarray: ...

    def gene_predictor(self, space: Space) -> GenePredictor: ...
