"""Progressive-shrinking training of supernets (SPEC section 3)."""

from .bn import SubnetEvaluator, evaluate, recalibrate_bn
from .config import StageConfig, TrainConfig, load_config
from .run_dir import load_run
from .schedule import stage_space
from .trainer import Trainer, TrainingDiverged, train

__all__ = [
    "StageConfig",
    "SubnetEvaluator",
    "TrainConfig",
    "Trainer",
    "TrainingDiverged",
    "evaluate",
    "load_config",
    "load_run",
    "recalibrate_bn",
    "stage_space",
    "train",
]
