"""Accuracy prediction for search: the accuracy dataset, the predictor (linear, MLP or
an ensemble of MLPs) and its fit."""

from .accuracy import PREDICTOR_KINDS, AccuracyPredictor, PredictorMismatchError
from .base import ArchPredictor
from .dataset import (
    accuracy_dataset_for_run,
    build_accuracy_dataset,
    dataset_archs,
    read_accuracy_dataset,
)
from .fit import (
    PredictorReport,
    fit_accuracy_predictor,
    kendall_tau,
    label_sampling_sd,
    rmse,
)

__all__ = [
    "PREDICTOR_KINDS",
    "ArchPredictor",
    "accuracy_dataset_for_run",
    "AccuracyPredictor",
    "PredictorMismatchError",
    "PredictorReport",
    "build_accuracy_dataset",
    "dataset_archs",
    "fit_accuracy_predictor",
    "kendall_tau",
    "label_sampling_sd",
    "read_accuracy_dataset",
    "rmse",
]
