"""What a training run directory holds, and reading a finished one back::

    RUN_DIR/config.yaml          the config the run was started with
    RUN_DIR/checkpoints/         the last complete checkpoints (atomic, verified on load)
    RUN_DIR/teacher/             the full network after the first stage (frozen teacher)
    RUN_DIR/supernet/            the supernet weights after the last finished stage
    RUN_DIR/metrics.jsonl        one JSON record per log interval and per validation
    RUN_DIR/training_done.json   the final validation, once every stage has finished

Everything else there is written by the steps after training (``ofa run``).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from ..errors import RunDirectoryError
from ..models import Supernet, create_supernet
from ..storage.checkpoint import load_latest_checkpoint
from .config import TrainConfig

__all__ = ["DONE_FILE", "build_supernet", "load_run"]

DONE_FILE = "training_done.json"  # written when every stage has finished


def build_supernet(config: TrainConfig, num_classes: int) -> Supernet:
    """The (untrained) supernet ``config`` describes, for ``num_classes`` classes."""
    return create_supernet(
        config.supernet,
        num_classes=num_classes,
        resolutions=config.resolutions,
        dropout=config.dropout,
        bn_momentum=config.bn_momentum,
        bn_eps=config.bn_eps,
    )


def load_run(run_dir: str | Path, weights: str = "supernet") -> tuple[TrainConfig, Supernet]:
    """The config and trained supernet of a run directory (``weights``: ``supernet`` after
    the last finished stage, ``teacher`` after the first, or ``checkpoints`` for the
    latest checkpoint)."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise RunDirectoryError(f"{config_path} not found: is {run_dir} a training run directory?")
    config = TrainConfig.from_dict(yaml.safe_load(config_path.read_text()))
    found = load_latest_checkpoint(run_dir / weights)
    if found is None:
        raise RunDirectoryError(f"no {weights} weights in {run_dir / weights}")
    state = found[1]["model"]
    net = build_supernet(config, num_classes=state["classifier.weight"].shape[0])
    net.load_state_dict(state)
    return config, net.eval()
