"""Fitting the accuracy predictor, and the figures that say how well it fits.

:func:`fit_accuracy_predictor` trains an :class:`~.accuracy.AccuracyPredictor` (the MLP,
an ensemble of MLPs, or the linear model in closed form) on measured (arch, accuracy)
pairs and reports RMSE and Kendall tau on rows it held out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..arch import ArchInput, Space
from ..errors import ConfigError, check_whole_number
from .accuracy import AccuracyPredictor

__all__ = [
    "RIDGE_PENALTIES",
    "PredictorReport",
    "fit_accuracy_predictor",
    "kendall_tau",
    "label_sampling_sd",
    "pairwise_ranking_loss",
    "rmse",
]


# ------------------------------------------------------------------------ metrics


def rmse(predicted: np.ndarray, measured: np.ndarray) -> float:
    """Root-mean-square error, in the units of the inputs (percentage points)."""
    predicted, measured = np.asarray(predicted, float), np.asarray(measured, float)
    return float(np.sqrt(np.mean((predicted - measured) ** 2)))


def kendall_tau(a: np.ndarray, b: np.ndarray) -> float:
    """Kendall's tau-b rank correlation (ties counted as in scipy's default)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) != len(b) or len(a) < 2:
        raise ValueError("kendall_tau needs two sequences of equal length >= 2")
    i, j = np.triu_indices(len(a), k=1)
    da, db = np.sign(a[i] - a[j]), np.sign(b[i] - b[j])
    concordant_minus_discordant = float(np.sum(da * db))
    n_a, n_b = float(np.sum(da != 0)), float(np.sum(db != 0))
    if n_a == 0 or n_b == 0:
        return float("nan")
    return concordant_minus_discordant / math.sqrt(n_a * n_b)


@dataclass(frozen=True)
class PredictorReport:
    """Fit quality: RMSE in percentage points and Kendall tau, on the rows held out
    from training (``val_*``) and on the training rows."""

    n_train: int
    n_val: int
    base_accuracy: float
    train_rmse: float
    val_rmse: float
    val_kendall_tau: float
    val_accuracy_std: float  # spread of the measured accuracies, for scale
    label_images: int | None = None  # images each label was measured on, when known
    label_sd: float | None = None  # sampling sd of one label (label_sampling_sd)

    def __str__(self) -> str:
        text = (
            f"held-out RMSE {self.val_rmse:.2f} pp, Kendall tau {self.val_kendall_tau:.3f} "
            f"({self.n_val} archs; their accuracies spread {self.val_accuracy_std:.2f} pp); "
            f"training RMSE {self.train_rmse:.2f} pp ({self.n_train} archs)"
        )
        if self.label_images and self.label_sd is not None:
            text += (
                f"; each label is top-1 on {self.label_images:,} held-out images, binomial "
                f"sd {self.label_sd:.2f} pp (the part that differs from arch to arch, which "
                "ranking sees, is about 0.6 of it; BN calibration adds about 0.1 pp): RMSE "
                "and tau are measured against labels this noisy"
            )
        return text


def label_sampling_sd(accuracies: Sequence[float], images: int) -> float:
    """The sampling standard deviation (points) of one label: top-1 on ``images`` images
    is a binomial proportion, ``sqrt(p (1 - p) / n)``, averaged over the labels. The BN
    calibration sample adds noise of its own (``bench/label_noise.py`` measures both)."""
    check_whole_number("images", images, 1)
    p = np.clip(np.asarray(accuracies, float) / 100, 0.0, 1.0)
    return float(100 * np.sqrt(np.mean(p * (1 - p)) / images))


def pairwise_ranking_loss(predicted: torch.Tensor, measured: torch.Tensor) -> torch.Tensor:
    """Mean of ``log(1 + exp(-(p_i - p_j)))`` over the pairs with ``m_i > m_j``: zero
    when every pair is predicted in its measured order by a wide margin."""
    sign = torch.sign(measured[:, None] - measured[None, :])
    pairs = sign > 0
    if not pairs.any():
        return predicted.sum() * 0.0
    return nn.functional.softplus(-(predicted[:, None] - predicted[None, :]))[pairs].mean()


RIDGE_PENALTIES = tuple(float(a) for a in np.logspace(-2, 3, 11))


def _ridge(features: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, float]:
    """Ridge regression of ``targets`` on ``features``: the weights and the intercept,
    the penalty chosen among :data:`RIDGE_PENALTIES` by leave-one-out error (exact, from
    one SVD). The intercept is not penalised (features and targets are centred)."""
    x = features.astype(np.float64)
    y = targets.astype(np.float64)
    x_mean, y_mean = x.mean(0), y.mean()
    u, s, vt = np.linalg.svd(x - x_mean, full_matrices=False)
    uy = u.T @ (y - y_mean)
    best: tuple[float, float] | None = None
    for penalty in RIDGE_PENALTIES:
        shrink = s**2 / (s**2 + penalty)
        residual = (y - y_mean) - u @ (shrink * uy)
        leverage = (u**2) @ shrink + 1.0 / len(y)  # the intercept's share too
        if leverage.max() > 1.0 - 1e-9:  # a row fitted exactly: no leave-one-out error
            continue
        error = float(np.mean((residual / (1.0 - leverage)) ** 2))
        if best is None or error < best[0]:
            best = (error, penalty)
    if best is None:
        raise ConfigError(f"{len(y)} rows are too few to fit a linear predictor")
    weights = vt.T @ (s / (s**2 + best[1]) * uy)
    return weights.astype(np.float32), float(y_mean - x_mean @ weights)


def _train_member(
    mlp: nn.Module,
    base: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    epochs: int,
    lr: float,
    weight_decay: float,
    batch_size: int,
    seed: int,
    ranking_weight: float,
) -> None:
    """Train one MLP of the predictor alone: Adam, cosine decay, squared error (plus the
    ranking loss), its own batch order from ``seed`` (member 0's seed is the fit's)."""
    optimizer = torch.optim.Adam(mlp.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch_size):
            batch = perm[start : start + batch_size]
            out = base + mlp(x[batch]).squeeze(-1)
            loss = nn.functional.mse_loss(out, y[batch])
            if ranking_weight:
                loss = loss + ranking_weight * pairwise_ranking_loss(out, y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        scheduler.step()


def fit_accuracy_predictor(
    space: Space,
    archs: Sequence[ArchInput],
    accuracies: Sequence[float],
    *,
    val_fraction: float = 0.2,
    epochs: int = 300,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    batch_size: int = 256,
    seed: int = 0,
    ranking_weight: float = 0.0,
    members: int = 1,
    layers: int = 3,
) -> tuple[AccuracyPredictor, PredictorReport]:
    """Train an :class:`AccuracyPredictor` on measured accuracies (percent).

    The loss is the squared error (the paper's), plus ``ranking_weight`` times a pairwise
    ranking loss: the mean logistic loss of every ordered pair of a batch, which rewards
    ranking two archs in the order of their labels (what the search relies on).
    With ``members > 1`` each MLP of the ensemble is trained alone on the same rows, from
    its own initialisation and batch order, and the report scores their mean. With
    ``layers=0`` the predictor is linear and fitted in closed form (:func:`_ridge`);
    the training settings (epochs, lr, ...) do not apply to it.
    A ``val_fraction`` of the rows, chosen by ``seed``, is held out and used only to
    report RMSE and Kendall tau (no early stopping on it, so the figures are unbiased).
    """
    if len(archs) != len(accuracies):
        raise ValueError(f"{len(archs)} archs but {len(accuracies)} accuracies")
    if not (isinstance(val_fraction, (int, float)) and 0 <= val_fraction < 1):
        raise ConfigError(f"val_fraction must be a number in [0, 1), not {val_fraction!r}")
    check_whole_number("epochs", epochs, 1)
    check_whole_number("layers", layers, 0)
    if layers == 0 and members != 1:
        raise ConfigError(
            f"a linear predictor (layers 0) is fitted in closed form: an ensemble of "
            f"{members} would hold {members} equal copies; use members 1"
        )
    if not (isinstance(ranking_weight, (int, float)) and ranking_weight >= 0):
        raise ConfigError(f"ranking_weight must be a number >= 0, not {ranking_weight!r}")
    n_val = int(round(len(archs) * val_fraction))
    if len(archs) - n_val < 2 or (val_fraction > 0 and n_val < 2):
        raise ConfigError(
            f"{len(archs)} rows are too few to fit and validate a predictor "
            f"(val_fraction {val_fraction}): measure more archs (ofa acc-dataset --num-archs)"
        )
    features = np.stack([space.encode(a) for a in archs])
    targets = np.asarray(accuracies, dtype=np.float32)
    order = np.random.default_rng(seed).permutation(len(archs))
    val_idx, train_idx = order[:n_val], order[n_val:]
    torch.manual_seed(seed)
    base = float(targets[train_idx].mean())
    predictor = AccuracyPredictor(space, base_accuracy=base, members=members, layers=layers)
    if layers == 0:
        weights, intercept = _ridge(features[train_idx], targets[train_idx])
        with torch.no_grad():
            predictor.mlp[0].weight.copy_(torch.from_numpy(weights).reshape(1, -1))
            predictor.base_accuracy.fill_(intercept)
    else:
        x = torch.from_numpy(features[train_idx])
        y = torch.from_numpy(targets[train_idx])
        predictor.train()
        for k, mlp in enumerate(predictor.member_mlps()):
            _train_member(mlp, predictor.base_accuracy, x, y, epochs, lr, weight_decay,
                          batch_size, seed + 7919 * k, ranking_weight)  # fmt: skip
    predictor.eval()
    train_pred = predictor.predict_features(features[train_idx])
    val_pred = predictor.predict_features(features[val_idx]) if n_val else np.array([])
    report = PredictorReport(
        n_train=len(train_idx),
        n_val=n_val,
        base_accuracy=base,
        train_rmse=rmse(train_pred, targets[train_idx]),
        val_rmse=rmse(val_pred, targets[val_idx]) if n_val else float("nan"),
        val_kendall_tau=kendall_tau(val_pred, targets[val_idx]) if n_val else float("nan"),
        val_accuracy_std=float(targets[val_idx].std()) if n_val else float("nan"),
    )
    return predictor, report
