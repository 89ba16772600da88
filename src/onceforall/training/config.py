"""Training configuration: plain dataclasses, loaded from the YAML presets in ``configs/``.

A run is a list of stages (SPEC section 3): the full network first, then the elastic
dimensions opened one by one. Each stage names the choices it opens; everything else
(optimiser, loss, data, checkpoints) is shared by the run.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError, InputNotFoundError, UnknownNameError

__all__ = ["StageConfig", "TrainConfig", "load_config", "PRESETS_DIR", "preset_path"]

PRESETS_DIR = Path(__file__).resolve().parent.parent / "configs"


@dataclass
class StageConfig:
    """One progressive-shrinking stage.

    ``lr`` is per 64-image batch and scales linearly with the global batch size.
    ``epochs`` may be fractional (quick CPU runs train on part of an epoch).
    """

    name: str
    epochs: float
    lr: float
    warmup_epochs: float = 0.0
    subnets_per_step: int = 1
    # The choices the stage opens; left out, only the supernet's largest. MBConv families:
    # kernel sizes, expand ratios, depths. OFA-ResNet: expand ratios (0.2 ...), extra
    # depths (0, 1, 2) and width multipliers (0.65 ...); kernel sizes do not apply.
    kernel_sizes: list[int] | None = None
    expand_ratios: list[float] | None = None
    depths: list[int] | None = None
    width_mults: list[float] | None = None
    sort_channels: bool = False  # sort hidden channels by importance before this stage
    # Make the first sub-network of every step the largest of the open space (the
    # "sandwich rule" of BigNAS). Not in the paper's recipe; short schedules use it to
    # keep the largest sub-network where the full stage left it.
    train_largest: bool = False
    distill: bool = True  # distil from the frozen full network (not in the first stage)


@dataclass
class TrainConfig:
    """Everything a training run needs besides the data path and the run directory."""

    supernet: str = "ofa_mbv3_w1.0"
    resolutions: list[int] = field(default_factory=lambda: list(range(128, 225, 4)))
    eval_resolutions: list[int] = field(default_factory=lambda: [160, 224])
    stages: list[StageConfig] = field(default_factory=list)
    # optimisation
    batch_size: int = 64  # per worker
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 3e-5  # not applied to BN parameters and biases
    label_smoothing: float = 0.1
    kd_ratio: float = 1.0
    dropout: float = 0.1
    bn_momentum: float = 0.1
    bn_eps: float = 1e-5
    # Start every residual block as the identity (last BN scale zero): the quick preset's
    # full stage, 0.4 epoch, 82.7 % against 79.1 % top-1 over 3 seeds (bench/init_probe.py).
    zero_init_residual: bool = True
    # data
    crop_scale_min: float = 0.08
    holdout_size: int = 10000  # held-out training images (BN recalibration, accuracy data)
    train_subset: int | None = None  # use only this many training images (quick runs)
    test_subset: int | None = None  # report on this many test images (quick runs)
    num_workers: int = 2
    # validation and checkpoints
    num_random_val_archs: int = 2
    bn_recal_images: int = 2000
    checkpoint_every_steps: int = 200
    keep_checkpoints: int = 2
    seed: int = 0
    channels_last: bool = True  # much faster convolutions on CPU
    amp_dtype: str | None = None  # "bfloat16" for autocast on GPU
    # steps after training (ofa run): see onceforall.deploy.pipeline.SpecializeConfig
    specialize: dict[str, Any] = field(default_factory=dict)

    def stage(self, name: str) -> StageConfig:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise UnknownNameError(
            f"no stage {name!r}; stages: {', '.join(s.name for s in self.stages)}"
        )

    def open_splits(self, data: str | os.PathLike) -> Any:
        """The run's train / held-out / test splits of ``data``: every step after
        training (accuracy dataset, specialisation, export) opens them through this, so
        none measures on images the supernet was trained on."""
        from ..data import open_splits

        return open_splits(
            data,
            holdout_size=self.holdout_size,
            seed=self.seed,
            train_subset=self.train_subset,
            test_subset=self.test_subset,
            crop_scale_min=self.crop_scale_min,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown config key(s): {', '.join(unknown)}")
        data = dict(data)
        stage_keys = {f.name for f in fields(StageConfig)}
        stages = []
        for i, raw in enumerate(data.pop("stages", [])):
            bad = sorted(set(raw) - stage_keys)
            if bad:
                raise ConfigError(f"stages[{i}] has unknown key(s): {', '.join(bad)}")
            stages.append(StageConfig(**raw))
        config = cls(**data, stages=stages)
        if not config.stages:
            raise ConfigError("config has no stages")
        names = [s.name for s in config.stages]
        if len(set(names)) != len(names):
            raise ConfigError(f"stage names must be unique: {names}")
        return config


def preset_path(name: str) -> Path:
    return PRESETS_DIR / f"{name}.yaml"


def load_config(path_or_preset: str | Path, **overrides: Any) -> TrainConfig:
    """Load a YAML config file, or a preset by name (``imagenet``, ``fashion-mnist``,
    ``fashion-mnist-quick``), with top-level ``overrides`` applied."""
    path = Path(path_or_preset)
    if not path.is_file():
        preset = preset_path(str(path_or_preset))
        if not preset.is_file():
            presets = sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))
            raise InputNotFoundError(
                f"no config file {str(path)!r} and no preset of that name; "
                f"presets: {', '.join(presets)}"
            )
        path = preset
    data = yaml.safe_load(path.read_text()) or {}
    data.update(overrides)
    return TrainConfig.from_dict(data)
