"""What a training run directory holds, writing its config and final results, and
reading a finished one back. Every path comes from
:class:`~onceforall.storage.run_layout.RunLayout`::

    RUN_DIR/config.yaml          the config the run was started with
    RUN_DIR/checkpoints/         the last complete checkpoints (atomic, verified on load)
    RUN_DIR/teacher/             the full network after the first stage (frozen teacher)
    RUN_DIR/supernet/            the supernet weights after the last finished stage
    RUN_DIR/metrics.jsonl        one JSON record per log interval and per validation
    RUN_DIR/tensorboard/         the same scalars as TensorBoard event files
    RUN_DIR/training_done.json   the final test-split top-1, once every stage has finished

Everything else there is written by the steps after training (``ofa run``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from ..errors import RunDirectoryError
from ..models import Supernet, create_supernet
from ..storage.atomic import write_text_atomic
from ..storage.checkpoint import load_latest_checkpoint
from ..storage.run_layout import RunLayout
from .config import TrainConfig

__all__ = [
    "DONE_FILE",
    "build_supernet",
    "load_run",
    "write_run_config",
    "write_training_done",
]

# The name of RunLayout.training_done, for code that joins it to a run directory itself.
DONE_FILE = RunLayout(".").training_done.name


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


def write_run_config(run_dir: str | Path, config: TrainConfig) -> Path:
    """Write ``config`` to ``RUN_DIR/config.yaml`` atomically (a reader, or a run killed
    mid-write, never leaves half a config) and return its path."""
    return write_text_atomic(RunLayout(run_dir).config, yaml.safe_dump(config.to_dict()))


def write_training_done(run_dir: str | Path, results: dict[str, Any]) -> Path:
    """Write the final results of a run (the test-split top-1 per stage) to
    ``RUN_DIR/training_done.json`` atomically; its presence marks the training done."""
    text = json.dumps(results, indent=1) + "\n"
    return write_text_atomic(RunLayout(run_dir).training_done, text)


def load_run(run_dir: str | Path, weights: str = "supernet") -> tuple[TrainConfig, Supernet]:
    """The config and trained supernet of a run directory (``weights``: ``supernet`` after
    the last finished stage, ``teacher`` after the first, or ``checkpoints`` for the
    latest checkpoint)."""
    layout = RunLayout(run_dir)
    if not layout.config.is_file():
        raise RunDirectoryError(
            f"{layout.config} not found: is {layout.root} a training run directory?"
        )
    config = TrainConfig.from_dict(yaml.safe_load(layout.config.read_text()))
    folder = layout.weights(weights)
    found = load_latest_checkpoint(folder)
    if found is None:
        raise RunDirectoryError(f"no {weights} weights in {folder}")
    state = found[1]["model"]
    net = build_supernet(config, num_classes=state["classifier.weight"].shape[0])
    net.load_state_dict(state)
    return config, net.eval()
