"""onceforall: train one Once-for-All supernet, specialise it per device without retraining.

>>> import onceforall
>>> net = onceforall.create_supernet("ofa_mbv3_w1.0", num_classes=10)
>>> arch = net.space.sample(0)        # seeded random sub-network
>>> net.set_active(arch)            # forward now runs that sub-network
>>> subnet = net.extract(arch)      # an ordinary nn.Module with copied weights
>>> net.macs(arch), net.params(arch)

The packages, one concept each: ``arch`` (spaces and arch values), ``nn`` (static and
elastic layers), ``models`` (the families and the registry), ``training``, ``data``,
``evaluation``, ``predictors``, ``search``, ``latency``, ``deploy`` (specialisation,
export, the whole job), ``compat`` (the authors' files), ``storage`` (file formats), ``cli``.
Every error a user can cause is an :class:`OnceForAllError` (see :mod:`.errors`).
"""

from .arch import Arch, ArchError, MBConvSpace, ResNetArch, ResNetSpace
from .compat.checkpoints import NetConfigError, ReferenceCheckpointError
from .data.base import DatasetNotFoundError, UnreadableImagesError
from .errors import (
    ConfigError,
    FileFormatError,
    InputNotFoundError,
    MissingDependencyError,
    OnceForAllError,
    RunDirectoryError,
    StaleResultError,
    UnknownNameError,
    UnwritablePathError,
)
from .latency.table import LatencyTableError
from .models import (
    Supernet,
    build_subnet,
    create_supernet,
    list_supernets,
    register_supernet,
    supernet_config,
)
from .predictors.accuracy import PredictorMismatchError
from .search.constraints import InfeasibleConstraintError
from .storage.checkpoint import CheckpointError
from .storage.onnx_export import ExportError
from .training.trainer import TrainingDiverged

__all__ = [
    "Arch",
    "ArchError",
    "CheckpointError",
    "ConfigError",
    "DatasetNotFoundError",
    "ExportError",
    "FileFormatError",
    "InfeasibleConstraintError",
    "InputNotFoundError",
    "LatencyTableError",
    "MBConvSpace",
    "MissingDependencyError",
    "NetConfigError",
    "OnceForAllError",
    "PredictorMismatchError",
    "ReferenceCheckpointError",
    "ResNetArch",
    "ResNetSpace",
    "RunDirectoryError",
    "StaleResultError",
    "Supernet",
    "TrainingDiverged",
    "UnknownNameError",
    "UnreadableImagesError",
    "UnwritablePathError",
    "build_subnet",
    "create_supernet",
    "list_supernets",
    "register_supernet",
    "supernet_config",
]

__version__ = "0.1.0"
