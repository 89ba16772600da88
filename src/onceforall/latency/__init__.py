"""Latency on the device at hand: measuring a model on a backend (:mod:`.measure`), the
parts a per-block table times (:mod:`.parts`) and the table itself (:mod:`.table`)."""

from .measure import BACKENDS, LatencyStats, device_description, measure_latency
from .table import LatencyTable, LatencyTableError

__all__ = [
    "BACKENDS",
    "LatencyStats",
    "LatencyTable",
    "LatencyTableError",
    "device_description",
    "measure_latency",
]
