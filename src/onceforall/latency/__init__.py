"""Latency on the device at hand: measuring a model on a backend (:mod:`.measure`), the
parts a per-block table times (:mod:`.parts`), the table itself (:mod:`.table`) and what
search needs of any table, ours or the authors' (:mod:`.base`)."""

from .base import LatencyModel, LatencyTableError, MissingResolutionError
from .measure import BACKENDS, LatencyStats, device_description, measure_latency
from .table import LatencyTable

__all__ = [
    "BACKENDS",
    "LatencyModel",
    "LatencyStats",
    "LatencyTable",
    "LatencyTableError",
    "MissingResolutionError",
    "device_description",
    "measure_latency",
]
