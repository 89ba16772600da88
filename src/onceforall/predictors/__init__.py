"""Accuracy prediction for search: the accuracy dataset and the MLP predictor."""

from .accuracy import (
    PREDICTOR_KINDS,
    AccuracyPredictor,
    PredictorMismatchError,
    PredictorReport,
    fit_accuracy_predictor,
    kendall_tau,
    label_sampling_sd,
    rmse,
)
from .base import ArchPredictor
from .dataset import (
    accuracy_dataset_for_run,
    build_accuracy_dataset,
    dataset_archs,
    read_accuracy_dataset,
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
