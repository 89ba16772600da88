"""The package's error types.

Every error a user can cause (a bad architecture, config, file or run directory, a
target no sub-network meets) is an :class:`OnceForAllError`; the ``ofa`` command prints
those in one line and exits with status 2. Each also derives from the built-in type that
describes it (``ValueError``, ``FileNotFoundError``, ...), so ``except ValueError`` keeps
working. Errors that belong to one subject live beside the code that raises them and are
re-exported at the package's top level (``onceforall.ArchError``, ...):

=============================  ===========================================================
``ArchError``                  an arch outside its space (names field, index, choices)
``ConfigError``                a training or specialisation config that does not parse
``FileFormatError``            a file that is truncated, unreadable or of another format
``UnknownNameError``           an unknown supernet, stage or preset name (lists the known)
``InputNotFoundError``         a file or folder the user named that is not there
``UnwritablePathError``        a path to write that cannot be (a file where a folder goes)
``RunDirectoryError``          a run directory that lacks what a step needs
``StaleResultError``           a result made from another supernet or with other settings
``DatasetNotFoundError``       no dataset where it was looked for
``UnreadableImagesError``      images that do not decode (too many in a run, --check-data)
``CheckpointError``            a checkpoint that is truncated, corrupted or unsafe
``ExportError``                an export that fails its checks or cannot be loaded
``MissingDependencyError``     an optional package is not installed
``LatencyTableError``          a latency table of another supernet or device, or unreadable
``MissingResolutionError``     an arch at a resolution the latency table has no entries for
``PredictorMismatchError``     a predictor trained on another encoding
``InfeasibleConstraintError``  a target that no sub-network of the space meets
``ReferenceCheckpointError``   an authors' checkpoint that does not fit the supernet
``NetConfigError``             an authors' net.config that is not one of our sub-networks
``TrainingDiverged``           the loss became NaN or infinite (exit status 3)
=============================  ===========================================================
"""

from __future__ import annotations

import numbers
from typing import Any

__all__ = [
    "ConfigError",
    "FileFormatError",
    "InputNotFoundError",
    "MissingDependencyError",
    "OnceForAllError",
    "RunDirectoryError",
    "StaleResultError",
    "UnknownNameError",
    "UnwritablePathError",
    "check_whole_number",
]


class OnceForAllError(Exception):
    """Base of every error a user of the library or the CLI can cause."""


class ConfigError(OnceForAllError, ValueError):
    """A config (YAML file, preset, ``--set`` override, supernet setting) or a setting
    of a step (a target, a population, a number of images) that does not parse or is
    out of range; the message names the key."""


class FileFormatError(OnceForAllError, ValueError):
    """A file (or a dataset folder) that is not what it should be: unreadable,
    truncated, of another format or layout; the message names it."""


class UnknownNameError(OnceForAllError, KeyError):
    """A name (supernet, stage, preset) that is not among the known ones; the message
    lists them."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class InputNotFoundError(OnceForAllError, FileNotFoundError):
    """A file or folder the user pointed at does not exist or is not what was expected;
    the message names the path."""


class UnwritablePathError(OnceForAllError, OSError):
    """A path the user named to write to that cannot be written: a folder where a file
    goes, a file where a folder goes, no permission; the message names it."""


class RunDirectoryError(InputNotFoundError):
    """A run directory that lacks what a step needs (its config, weights, predictor,
    latency table); the message names the path and the command that makes it."""


class StaleResultError(RunDirectoryError):
    """A file of a run made from another supernet than the run's, or measured with other
    settings (an accuracy dataset, a predictor); the message names the file, what
    differs and how to make it again."""


class MissingDependencyError(OnceForAllError, ImportError):
    """An optional package is not installed; the message names the extra to install."""


def check_whole_number(name: str, value: Any, at_least: int) -> None:
    """Raise :class:`ConfigError` naming ``name`` unless ``value`` is a whole number
    (not a bool) of at least ``at_least``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < at_least:
        raise ConfigError(f"{name} must be a whole number >= {at_least}, not {value!r}")
