"""Training configuration: plain dataclasses, loaded from the YAML presets in ``configs/``.

A run is a list of stages (SPEC section 3): the full network first, then the elastic
dimensions opened one by one. Each stage names the choices it opens; everything else
(optimiser, loss, data, checkpoints) is shared by the run. The ``specialize:`` section
holds the settings of the steps after training (``ofa run``).

Everything is parsed and checked when the config is loaded (:meth:`TrainConfig.from_dict`),
so a typo fails at once rather than after an hour of training. Reading the YAML files and
presets, and the ``--set`` overrides, are :mod:`.config_files`'.
"""

from __future__ import annotations

import math
import os
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, Mapping

from ..errors import ConfigError, UnknownNameError
from .config_checks import check_stage_values, check_train_values

__all__ = ["SpecializeConfig", "StageConfig", "TrainConfig"]


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
    # Make the last sub-network of every step the smallest of the open space: with
    # train_largest, BigNAS's whole sandwich rule (largest, random ones, smallest).
    train_smallest: bool = False
    distill: bool = True  # distil from the frozen full network (not in the first stage)
    # BigNAS's in-place distillation: the step's largest sub-network (train_largest)
    # learns from the labels, the others from its detached predictions on the same
    # batch; no teacher stage is needed (so ``distill`` must be false).
    inplace_distill: bool = False


@dataclass
class SpecializeConfig:
    """What happens after training (the ``specialize:`` section of a config): the
    accuracy dataset, predictor, latency table, specialisation and export of ``ofa run``."""

    acc_dataset_archs: int = 1000
    acc_eval_images: int | None = None  # held-out images per arch (default: all left)
    # What runs each sub-network for the accuracy dataset: torch (eager) or onnxruntime
    # (CPU; the same labels to float rounding, 2.4-3.4x as fast per arch; ofa run on a
    # GPU uses torch there).
    acc_eval_runtime: str = "torch"
    predictor_epochs: int = 300
    # The accuracy predictor: "linear" (ridge regression on the one-hot encoding, closed
    # form) or "mlp" (the paper's, 3 x 400); with "mlp", predictor_members > 1 averages
    # that many MLPs. Linear ranked best at every size from 100 to 1,000 archs on the
    # fashion-mnist preset (bench/predictor_compare.py, docs/benchmarks.md).
    predictor: str = "linear"
    predictor_members: int = 1
    latency_backend: str = "torch"
    latency_threads: int | None = None
    latency_repeats: int = 30
    targets: list[str] = field(default_factory=list)  # empty: spread over latency range
    num_targets: int = 3
    random_baseline: int = 5  # random archs measured per target, for comparison
    generations: int = 500
    export: bool = True
    export_int8: bool = False  # also model.int8.onnx (ONNX Runtime INT8) in each export
    # Fine-tune each chosen sub-network for this many epochs after its export (0: none),
    # into RUN/exports/<target>_finetuned; lr per 64 images, as the stages'.
    finetune_epochs: float = 0.0
    finetune_lr: float = 0.005

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> SpecializeConfig:
        """Parse the section (absent or empty: the defaults); an unknown key or a value
        of the wrong kind is refused, naming it."""
        if isinstance(data, SpecializeConfig):
            return data
        data = {} if data is None else data
        refuse_unknown("specialize key", data, field_names(cls))
        config = cls(**data)
        config.check()
        return config

    def check(self) -> None:
        """Raise :class:`ConfigError` for a value no step could use."""
        from ..evaluation import RUNTIMES
        from ..latency.measure import BACKENDS
        from ..search.constraints import check_target

        counts = ("acc_dataset_archs", "predictor_epochs", "latency_repeats", "num_targets")
        for name in (*counts, "random_baseline", "generations", "acc_eval_images"):
            value = getattr(self, name)
            optional = name == "acc_eval_images"
            if not (optional and value is None) and not _is_count(value):
                raise ConfigError(f"specialize.{name} must be a whole number >= 0, not {value!r}")
        from ..predictors.accuracy import PREDICTOR_KINDS

        if self.predictor not in PREDICTOR_KINDS:
            raise ConfigError(
                f"specialize.predictor {self.predictor!r} is unknown; known: "
                f"{', '.join(PREDICTOR_KINDS)}"
            )
        if not (_is_count(self.predictor_members) and self.predictor_members >= 1):
            raise ConfigError(
                "specialize.predictor_members must be a whole number >= 1, not "
                f"{self.predictor_members!r}"
            )
        if self.predictor == "linear" and self.predictor_members != 1:
            raise ConfigError(
                "specialize.predictor_members must be 1 with predictor linear (it is fitted "
                f"in closed form), not {self.predictor_members!r}; set predictor: mlp"
            )
        if not (self.latency_threads is None or _is_count(self.latency_threads)):
            raise ConfigError(
                f"specialize.latency_threads must be a whole number, not {self.latency_threads!r}"
            )
        if self.latency_backend not in BACKENDS:
            raise ConfigError(
                f"specialize.latency_backend {self.latency_backend!r} is unknown; "
                f"known: {', '.join(BACKENDS)}"
            )
        if self.acc_eval_runtime not in RUNTIMES:
            raise ConfigError(
                f"specialize.acc_eval_runtime {self.acc_eval_runtime!r} is unknown; "
                f"known: {', '.join(RUNTIMES)}"
            )
        if not isinstance(self.targets, list) or not all(isinstance(t, str) for t in self.targets):
            raise ConfigError(
                "specialize.targets must be a list of targets, e.g. "
                f"['latency_ms<=5', 'macs<=20M,params<=3M'], not {self.targets!r}"
            )
        for target in self.targets:  # their syntax now, not after training
            try:
                check_target(target)
            except ConfigError as exc:
                raise ConfigError(f"specialize.targets: {exc}") from None
        for name in ("export", "export_int8"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(
                    f"specialize.{name} must be true or false, not {getattr(self, name)!r}"
                )
        for name in ("finetune_epochs", "finetune_lr"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not (math.isfinite(value) and value >= 0)
            ):
                raise ConfigError(f"specialize.{name} must be a number >= 0, not {value!r}")
        if self.finetune_epochs > 0 and self.finetune_lr <= 0:
            raise ConfigError("specialize.finetune_lr must be above 0 to fine-tune")


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


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
    # Start every residual block as the identity (last BN scale zero): the network then
    # begins as a shallow one, which short schedules train to a better top-1
    # (docs/benchmarks.md, bench/init_probe.py).
    zero_init_residual: bool = True
    # data
    crop_scale_min: float = 0.08
    holdout_size: int = 10000  # held-out training images (BN recalibration, accuracy data)
    train_subset: int | None = None  # use only this many training images (quick runs)
    test_subset: int | None = None  # report on this many test images (quick runs)
    num_workers: int = 2
    # Images that do not decode are skipped (with a warning) up to this many per split, as
    # counted by each process reading them (main process, each loader worker); one more
    # stops the run. --check-data decodes them all before training.
    max_unreadable_images: int = 100
    # validation and checkpoints
    num_random_val_archs: int = 2
    bn_recal_images: int = 2000
    checkpoint_every_steps: int = 200
    keep_checkpoints: int = 2
    seed: int = 0
    channels_last: bool = True  # much faster convolutions on CPU
    amp_dtype: str | None = None  # "bfloat16" for autocast on GPU
    deterministic: bool = False  # GPU: deterministic kernels, resumes end bit-identical
    # the steps after training (ofa run)
    specialize: SpecializeConfig = field(default_factory=SpecializeConfig)

    def __post_init__(self) -> None:
        # A plain mapping (the Python API before the section was typed) is parsed here.
        if not isinstance(self.specialize, SpecializeConfig):
            self.specialize = SpecializeConfig.from_dict(self.specialize)

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
            max_unreadable_images=self.max_unreadable_images,
        )

    def check_images(self, data: str | os.PathLike, *, progress: bool = True) -> str:
        """``--check-data``: decode every image of the run's splits of ``data`` (under
        torchrun, this worker's share: RANK of WORLD_SIZE) before anything is trained or
        deleted; raise :class:`~onceforall.data.UnreadableImagesError` naming how many and
        which do not decode. Returns a line saying what was checked."""
        rank, world_size = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
        splits = self.open_splits(data)
        count = splits.check_images(progress=progress, rank=rank, world_size=world_size)
        if count == 0:
            return (
                f"--check-data: {data} holds its images in memory, read and checked whole "
                "when opened (IDX headers and sizes); nothing to decode"
            )
        share = f" (worker {rank}'s share of {world_size})" if world_size > 1 else ""
        return f"--check-data: all {count} images of {data} the run reads decode{share}"

    def to_dict(self) -> dict[str, Any]:
        """Plain values only (the ``specialize:`` section a mapping), for YAML."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Parse and check a config as read from YAML; unknown keys are refused by name."""
        refuse_unknown("config key", data, field_names(cls))
        data = dict(data)
        stage_keys = field_names(StageConfig)
        raw_stages = data.pop("stages", None) or []
        if not isinstance(raw_stages, list):
            raise ConfigError(f"stages must be a list of stages, not {raw_stages!r}")
        stages = []
        for i, raw in enumerate(raw_stages):
            refuse_unknown(f"stages[{i}] key", raw, stage_keys)
            missing = [
                f.name for f in fields(StageConfig) if f.default is MISSING and f.name not in raw
            ]
            if missing:
                raise ConfigError(f"stages[{i}] lacks {', '.join(missing)}: {raw!r}")
            stages.append(StageConfig(**raw))
        specialize = SpecializeConfig.from_dict(data.pop("specialize", None))
        config = cls(**data, stages=stages, specialize=specialize)
        if not config.stages:
            raise ConfigError("config has no stages")
        check_train_values(config)
        for i, stage in enumerate(config.stages):
            check_stage_values(stage, i)
        names = [s.name for s in config.stages]
        if len(set(names)) != len(names):
            raise ConfigError(f"stage names must be unique: {names}")
        return config


def field_names(cls: type) -> set[str]:
    """The field names of the config dataclass ``cls``: the keys its mapping may hold."""
    return {f.name for f in fields(cls)}


def refuse_unknown(what: str, data: Any, known: set[str]) -> None:
    """Raise :class:`ConfigError` unless ``data`` is a mapping whose keys are all in
    ``known``; the message names the unknown keys and lists the known."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"expected a mapping of {what}s, got {data!r}")
    unknown = sorted(str(k) for k in set(data) - known)
    if unknown:
        raise ConfigError(
            f"unknown {what}(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
