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
import os
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError, RunDirectoryError
from ..models import Supernet, create_supernet
from ..storage.atomic import write_text_atomic
from ..storage.checkpoint import checkpoint_digest, list_checkpoints, load_latest_checkpoint
from ..storage.run_guard import remove_run_directory
from ..storage.run_layout import RunLayout
from .config import TrainConfig
from .config_files import read_config_file

__all__ = [
    "DONE_FILE",
    "SAFE_TO_CHANGE",
    "build_supernet",
    "check_can_train",
    "config_differences",
    "load_run",
    "require_run",
    "start_over",
    "supernet_digest",
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


def _read_config(layout: RunLayout) -> TrainConfig:
    return TrainConfig.from_dict(read_config_file(layout.config))


def start_over(config: TrainConfig, data: str | os.PathLike, run_dir: str | Path) -> None:
    """``--fresh``: delete the run directory (only one; see
    :func:`~onceforall.storage.run_guard.remove_run_directory`), once the dataset it
    will train on is found, so a mistyped ``--data`` costs nothing."""
    config.open_splits(data)
    remove_run_directory(run_dir)


def require_run(run_dir: str | Path) -> RunLayout:
    """The layout of the training run directory ``run_dir``; a folder without a run's
    config is a :class:`RunDirectoryError`."""
    layout = RunLayout(run_dir)
    if not layout.config.is_file():
        raise RunDirectoryError(
            f"{layout.config} not found: is {layout.root} a training run directory?"
        )
    return layout


def load_run(run_dir: str | Path, weights: str = "supernet") -> tuple[TrainConfig, Supernet]:
    """The config and trained supernet of a run directory (``weights``: ``supernet`` after
    the last finished stage, ``teacher`` after the first, or ``checkpoints`` for the
    latest checkpoint)."""
    layout = require_run(run_dir)
    config = _read_config(layout)
    folder = layout.weights(weights)
    found = load_latest_checkpoint(folder)
    if found is None:
        raise RunDirectoryError(f"no {weights} weights in {folder}")
    state = found[1]["model"]
    net = build_supernet(config, num_classes=state["classifier.weight"].shape[0])
    net.load_state_dict(state)
    return config, net.eval()


def supernet_digest(run_dir: str | Path) -> str | None:
    """The SHA-256 (hex) of the run's newest supernet checkpoint, as its footer records
    it: files made from the supernet (accuracy dataset, predictor, exports) record it, so
    that they are refused once the supernet changed (training resumed, weights replaced).
    None while the run has no supernet."""
    for path in reversed(list_checkpoints(RunLayout(run_dir).supernet)):
        digest = checkpoint_digest(path)
        if digest is not None:
            return digest
    return None


# Config fields a resumed run may change: they do not change what it computes.
SAFE_TO_CHANGE = (
    "num_workers",
    "checkpoint_every_steps",
    "keep_checkpoints",
    "max_unreadable_images",
    "deterministic",  # which kernels, not what they compute: a GPU resume may turn it on
    "specialize",
)


def config_differences(stored: TrainConfig, now: TrainConfig) -> list[str]:
    """``field: stored -> now`` for every field outside :data:`SAFE_TO_CHANGE` that
    differs (a stage's fields as ``stages.NAME.FIELD``)."""
    before, after = stored.to_dict(), now.to_dict()
    diffs = []
    for key in before.keys() | after.keys():
        if key in SAFE_TO_CHANGE or key == "stages":
            continue
        if before.get(key) != after.get(key):
            diffs.append(f"{key}: {before.get(key)!r} -> {after.get(key)!r}")
    old = {s["name"]: s for s in before["stages"]}
    new = {s["name"]: s for s in after["stages"]}
    if list(old) != list(new):
        diffs.append(f"stages: {list(old)} -> {list(new)}")
    for name in old.keys() & new.keys():
        for field, value in old[name].items():
            if new[name].get(field) != value:
                diffs.append(f"stages.{name}.{field}: {value!r} -> {new[name].get(field)!r}")
    return sorted(diffs)


def check_can_train(run_dir: str | Path, config: TrainConfig, *, resume: bool, whole: bool) -> None:
    """Refuse what would lose or mix work, before anything is written: resuming a run
    that holds no checkpoint, or with a config that changes the result; training a whole
    run (``whole``) from the start over one that holds checkpoints or is finished."""
    layout = RunLayout(run_dir)
    checkpoints = list_checkpoints(layout.checkpoints)
    supernet = list_checkpoints(layout.supernet)
    if resume:
        if not checkpoints:
            raise RunDirectoryError(
                f"nothing to resume in {layout.root}: it holds no checkpoint; start the run "
                "without --resume"
            )
        if layout.config.is_file():
            diffs = config_differences(_read_config(layout), config)
            if diffs:
                raise ConfigError(
                    f"{layout.root} was trained with another config; resuming with this one "
                    f"would not continue it: {'; '.join(diffs)} (only "
                    f"{', '.join(SAFE_TO_CHANGE)} may change on resume)"
                )
    elif whole and (checkpoints or layout.training_done.is_file() or supernet):
        state = (
            "a finished training"
            if layout.training_done.is_file()
            else "checkpoints"
            if checkpoints
            else "a supernet (imported?)"
        )
        raise RunDirectoryError(
            f"{layout.root} already holds {state}: continue it with --resume, or start over "
            "with --fresh (which deletes it)"
        )
