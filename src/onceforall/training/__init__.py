"""Progressive-shrinking training of supernets (SPEC section 3)."""

from .config import StageConfig, TrainConfig
from .config_files import load_config
from .run_dir import load_run
from .schedule import stage_space
from .trainer import Trainer, TrainingDiverged, train

__all__ = [
    "StageConfig",
    "TrainConfig",
    "Trainer",
    "TrainingDiverged",
    "load_config",
    "load_run",
    "stage_space",
    "train",
]
