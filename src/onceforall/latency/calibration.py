"""The calibration of a latency table: how a whole network's measured time relates to the
sum of its timed parts.

Timed alone, the blocks of a network add up to less (or more) than the network: a call
has an overhead, and a network whose weights do not fit in a core's cache streams them
from memory. The table times a few whole networks beside the parts and fits one of three
models to them, chosen by leave-one-out error.

The overhead may come out negative, and on fast runtimes it does: each part timed alone
pays a call's fixed cost (launch, input copy, output allocation) that the network pays
once, so the parts of a network of tens of blocks add up to more than the network by a
nearly constant amount. A fit is refused only where it is unphysical for a timed network:
a predicted time that is not positive, a scale <= 0 or a negative cost per parameter.
"""

from __future__ import annotations

import numpy as np

__all__ = ["fit_calibration"]

_MODELS = ((1,), (0, 1), (0, 1, 2))  # feature columns: overhead, scale, ms_per_mparam


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


def fit_calibration(
    features: np.ndarray, measured: np.ndarray
) -> tuple[float, float, float, float]:
    """(overhead, scale, ms_per_mparam, error) of the calibration model with the lowest
    leave-one-out mean relative error: scale only, overhead + scale, or both plus a cost
    per parameter (weights streamed from memory rather than from a core's cache). The
    simpler model wins ties; unphysical fits (scale <= 0, a negative cost per parameter,
    or a time <= 0 predicted for one of the timed networks, which include the smallest of
    each resolution) are skipped. ``error`` is the winner's leave-one-out error (NaN when
    unknown)."""
    best: tuple[float, float, float, float] | None = None
    for columns in _MODELS:
        if len(measured) < (1 if len(columns) == 1 else len(columns) + 1):
            continue
        solved = _solve(features, measured, columns)
        coef = dict(zip(columns, solved))
        if coef[1] <= 0 or coef.get(2, 0.0) < 0 or np.any(features[:, columns] @ solved <= 0):
            continue
        error = _loo_error(features, measured, columns)
        if best is None or error < best[3]:
            best = (coef.get(0, 0.0), coef[1], coef.get(2, 0.0), error)
    return best or (0.0, 1.0, 0.0, float("nan"))
