"""Progressive-shrinking training of supernets (SPEC section 3)."""

from .bn import SubnetEvaluator, evaluate, recalibrate_bn
from .config import StageConfig, TrainConfig, load_config
from .trainer import Trainer, TrainingDiverged, load_run, stage_space, train

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
