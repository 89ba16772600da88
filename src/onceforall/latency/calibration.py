"""The calibration of a latency table: how a whole network's measured time relates to the
sum of its timed parts.

Timed alone, the blocks of a network add up to less (or more) than the network: a call
has an overhead, and a network whose weights do not fit in a core's cache streams them
from memory. The table times a few whole networks beside the parts and fits one of four
models to them, chosen by leave-one-out error.

Each part timed alone pays a call's fixed cost (launch, input copy, output allocation,
layout transposes at its boundaries) that the network pays once. Networks of one
resolution differ in depth, so that cost is a term per part, not one constant: the
``ms_per_part`` model fits it (it comes out negative: a refund per part). The overhead
may come out negative too. A fit is refused only where it is unphysical for a timed
network: a predicted time that is not positive, a scale <= 0 or a negative cost per
parameter.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Calibration", "TERMS", "candidate_fits", "fit_calibration"]

# The terms of a model, one per column of a network's feature row (1, sum of the parts'
# ms, of their M params, number of parts), and the candidate models as the columns each
# uses: scale; overhead + scale; those plus a cost per parameter; those plus one per part.
TERMS = ("overhead", "scale", "mparams", "parts")
_MODELS = ((1,), (0, 1), (0, 1, 2), (0, 1, 3))


@dataclass(frozen=True)
class Calibration:
    """``network_ms = overhead_ms + scale * sum(part ms) + ms_per_mparam * sum(part
    mparams) + ms_per_part * parts``; ``error``: the leave-one-out mean relative error on
    the timed networks (NaN when unknown)."""

    overhead_ms: float = 0.0
    scale: float = 1.0
    ms_per_mparam: float = 0.0
    ms_per_part: float = 0.0
    error: float = float("nan")

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Predicted ms of the networks whose feature rows are ``features``."""
        terms = (self.overhead_ms, self.scale, self.ms_per_mparam, self.ms_per_part)
        return features @ np.array(terms[: features.shape[1]])


def _solve(features: np.ndarray, measured: np.ndarray, columns: tuple[int, ...]) -> np.ndarray:
    """Least squares of the relative error of ``features[:, columns] @ coef``."""
    w = 1.0 / measured
    coef, *_ = np.linalg.lstsq(features[:, columns] * w[:, None], measured * w, rcond=None)
    return coef


def _loo_error(features: np.ndarray, measured: np.ndarray, columns: tuple[int, ...]) -> float:
    """Mean relative error on each network of the model fitted to the others."""
    n = len(measured)
    if n <= len(columns):
        return float("nan")
    keep = ~np.eye(n, dtype=bool)
    errors = [
        abs(features[i, columns] @ _solve(features[keep[i]], measured[keep[i]], columns) - y) / y
        for i, y in enumerate(measured)
    ]
    return float(np.mean(errors))


def candidate_fits(features: np.ndarray, measured: np.ndarray) -> list[tuple[str, Calibration]]:
    """Every candidate model that can be fitted to the timed networks and is physical,
    named by its terms (``"overhead+scale+parts"``), with its leave-one-out error
    (``features``: one row per network, columns as :data:`TERMS`; a row of three
    columns has no part count and gets no cost per part). Skipped: a model with as many
    terms as networks, and unphysical fits (scale <= 0, a negative cost per parameter,
    or a time <= 0 predicted for one of the timed networks, which include the smallest
    of each resolution)."""
    fits = []
    for columns in _MODELS:
        if max(columns) >= features.shape[1]:
            continue
        if len(measured) < (1 if len(columns) == 1 else len(columns) + 1):
            continue
        solved = _solve(features, measured, columns)
        coef = dict(zip(columns, solved))
        if coef[1] <= 0 or coef.get(2, 0.0) < 0 or np.any(features[:, columns] @ solved <= 0):
            continue
        terms = (float(coef.get(i, 0.0)) for i in range(len(TERMS)))
        fit = Calibration(*terms, _loo_error(features, measured, columns))
        fits.append(("+".join(TERMS[c] for c in columns), fit))
    return fits


def fit_calibration(features: np.ndarray, measured: np.ndarray) -> Calibration:
    """The candidate model (:func:`candidate_fits`) with the lowest leave-one-out mean
    relative error on the timed networks; the simpler model wins ties; a scale of 1 when
    none can be fitted."""
    best: Calibration | None = None
    for _, fit in candidate_fits(features, measured):
        if best is None or fit.error < best.error:
            best = fit
    return best or Calibration()
