"""How long a run will take on this machine, told early and updated as it goes.

The work of every part of a run is counted ahead of time in one unit, the MAC-image (one
image through one multiply-accumulate of a forward pass): a training step of a stage is
``batch x (3 x MACs of each sub-network it trains + MACs of the teacher's forward)`` (a
backward pass costs about two forwards), a validation is ``images x MACs`` of each
sub-network it measures. The sub-networks a step trains are a pure function of the
position (:func:`.step_archs`), so they are known before the run starts; a sample of each
stage's steps is costed. The seconds per unit are then measured on this machine: for
training from the steps run so far, for forward passes from the validations run so far
(until the first one, a third of the training rate). Work that does not scale with MACs
(timing a latency table, exporting) comes as seconds measured by a probe
(:class:`PlannedWork` ``fixed_s``).

The model is deliberately simple; docs/benchmarks.md ("How long a run takes") compares
its forecasts with what the demo took.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from .config import StageConfig, TrainConfig
from .epoch import StagePlan
from .schedule import step_archs

__all__ = [
    "Forecast",
    "PlannedWork",
    "TrainingForecaster",
    "TrainingWork",
    "format_minutes",
    "stage_step_units",
    "validation_units",
]

TRAIN_PASS = 3.0  # a training pass (forward + backward) in forward-pass equivalents
SAMPLED_STEPS = 48  # steps costed per stage (all of them when a stage has fewer)


@dataclass(frozen=True)
class PlannedWork:
    """One part of a run: ``train_units`` run at the training rate, ``forward_units`` at
    the forward rate, ``fixed_s`` seconds measured by a probe."""

    name: str
    train_units: float = 0.0
    forward_units: float = 0.0
    fixed_s: float = 0.0


def _macs_at(supernet: Any, arch: Any, resolutions: Sequence[int]) -> float:
    """Mean MACs of ``arch`` over ``resolutions`` (a batch's resolution is drawn
    uniformly from them; a validation runs each)."""
    macs = [supernet.macs(dataclasses.replace(arch, r=r)) for r in resolutions]
    return sum(macs) / len(macs)


def stage_step_units(
    supernet: Any,
    space: Any,
    stage: StageConfig,
    stage_index: int,
    config: TrainConfig,
    steps: Iterable[int],
) -> float:
    """The mean work (MAC-images) of the given steps of ``stage`` (``space``: the part of
    the supernet's space the stage opens)."""
    resolutions = config.resolutions
    largest = _macs_at(supernet, space.largest(), resolutions)
    teacher = largest if stage.distill and config.kd_ratio > 0 else 0.0
    cache: dict[Any, float] = {}
    total, n = 0.0, 0
    for step in steps:
        trained = 0.0
        for arch in step_archs(space, stage, config.seed, stage_index, step):
            if arch not in cache:
                cache[arch] = _macs_at(supernet, arch, resolutions)
            trained += cache[arch]
        total += config.batch_size * (TRAIN_PASS * trained + teacher)
        n += 1
    return total / max(1, n)


def sampled_steps(total_steps: int, seed: int, stage_index: int) -> list[int]:
    """Up to :data:`SAMPLED_STEPS` step indices of a stage, drawn reproducibly."""
    if total_steps <= SAMPLED_STEPS:
        return list(range(total_steps))
    rng = random.Random(f"ofa-forecast-{seed}-{stage_index}")
    return sorted(rng.sample(range(total_steps), SAMPLED_STEPS))


def validation_units(supernet: Any, archs: Iterable[Any], config: TrainConfig, test_images: int):
    """The work of one validation: each arch at each evaluation resolution, BN
    recalibrated on ``bn_recal_images`` then run on ``test_images``."""
    images = config.bn_recal_images + test_images
    resolutions = config.eval_resolutions
    return sum(images * len(resolutions) * _macs_at(supernet, a, resolutions) for a in archs)


def format_minutes(seconds: float) -> str:
    """``42 s``, ``7.5 min``, ``1 h 05 min``."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    hours, rest = divmod(int(round(seconds / 60)), 60)
    return f"{hours} h {rest:02d} min"


@dataclass
class Forecast:
    """The planned work of the rest of a run and the rates measured so far.

    ``training`` is the plan of the training stages (the trainer replaces it as the run
    advances), ``later`` the steps after training (``ofa run``'s). Observations are kept
    per key (a stage's epoch, say), so a later, fuller measurement of the same key
    replaces an early one.
    """

    training: list[PlannedWork] = field(default_factory=list)
    later: list[PlannedWork] = field(default_factory=list)
    done: dict[str, float] = field(default_factory=dict)  # measured seconds per part
    _train: dict[Any, tuple[float, float]] = field(default_factory=dict)
    _forward: dict[Any, tuple[float, float]] = field(default_factory=dict)

    def observe_training(self, key: Any, seconds: float, units: float) -> None:
        self._train[key] = (seconds, units)

    def observe_forward(self, key: Any, seconds: float, units: float) -> None:
        self._forward[key] = (seconds, units)

    @property
    def measured(self) -> bool:
        return bool(self._train or self._forward)

    def rates(self) -> tuple[float, float]:
        """Seconds per unit for training and for forward passes."""
        t_s, t_u = map(sum, zip(*self._train.values())) if self._train else (0.0, 0.0)
        f_s, f_u = map(sum, zip(*self._forward.values())) if self._forward else (0.0, 0.0)
        train = t_s / t_u if t_u else TRAIN_PASS * f_s / f_u if f_u else 0.0
        forward = f_s / f_u if f_u else train / TRAIN_PASS
        return train, forward

    def seconds(self, work: PlannedWork) -> float:
        train, forward = self.rates()
        return work.train_units * train + work.forward_units * forward + work.fixed_s

    def finish(self, name: str, seconds: float) -> None:
        """Part ``name`` is done and took ``seconds``: it leaves the plan."""
        self.done[name] = self.done.get(name, 0.0) + seconds
        self.training = [w for w in self.training if w.name != name]
        self.later = [w for w in self.later if w.name != name]

    def remaining(self) -> dict[str, float]:
        """Forecast seconds of each part still planned, in order (parts of one name
        summed)."""
        out: dict[str, float] = {}
        for work in self.training + self.later:
            if not (work.train_units or work.forward_units or work.fixed_s):
                continue
            out[work.name] = out.get(work.name, 0.0) + self.seconds(work)
        return out

    def line(self) -> str:
        """``about 38.5 min left on this machine (full 9.1 min, kernel 7.2 min, ...)``."""
        parts = self.remaining()
        total = sum(parts.values())
        detail = ", ".join(f"{name} {format_minutes(s)}" for name, s in parts.items())
        return f"forecast: about {format_minutes(total)} left on this machine ({detail})"

    def record(self) -> dict[str, Any]:
        """The forecast as a metrics record (seconds per remaining part)."""
        parts = self.remaining()
        train, forward = self.rates()
        return {
            "type": "forecast",
            "remaining_s": {k: round(v, 1) for k, v in parts.items()},
            "total_remaining_s": round(sum(parts.values()), 1),
            "train_s_per_gmac_image": round(train * 1e9, 4),
            "forward_s_per_gmac_image": round(forward * 1e9, 4),
        }

    def summary(self, names: Sequence[str] | None = None, total_s: float | None = None) -> str:
        """``full 9.0 min, kernel 7.1 min; total 16.1 min``: what the finished parts
        (``names``, default all) took, and the total (default: their sum)."""
        took = {k: v for k, v in self.done.items() if names is None or k in names}
        parts = ", ".join(f"{k} {format_minutes(v)}" for k, v in took.items())
        total = sum(took.values()) if total_s is None else total_s
        return f"{parts}; total {format_minutes(total)}"


class TrainingWork:
    """The work of each stage of a training run, costed once per stage: its mean step
    and its validation (see the module docstring)."""

    def __init__(
        self,
        supernet: Any,
        config: TrainConfig,
        steps_per_epoch: int,
        test_images: int,
        test_archs: Callable[[Any], dict[str, Any]],
    ) -> None:
        self.supernet, self.config = supernet, config
        self.steps_per_epoch, self.test_images = steps_per_epoch, test_images
        self.test_archs = test_archs
        self._plans: dict[int, StagePlan] = {}
        self._step: dict[int, float] = {}
        self._validation: dict[int, float] = {}

    def _plan(self, index: int) -> StagePlan:
        """The stage's space and length, as the trainer plans it (its lr is not needed)."""
        if index not in self._plans:
            stage = self.config.stages[index]
            self._plans[index] = StagePlan.of(stage, self.supernet.space, 0.0, self.steps_per_epoch)
        return self._plans[index]

    def step_units(self, index: int) -> float:
        if index not in self._step:
            plan = self._plan(index)
            steps = sampled_steps(plan.total_steps, self.config.seed, index)
            self._step[index] = stage_step_units(
                self.supernet, plan.space, plan.stage, index, self.config, steps
            )
        return self._step[index]

    def validation_units(self, index: int) -> float:
        if index not in self._validation:
            archs = self.test_archs(self._plan(index).space).values()
            self._validation[index] = validation_units(
                self.supernet, archs, self.config, self.test_images
            )
        return self._validation[index]

    def plan(self, stage: int, stage_step: int, epoch: int, wanted: Sequence[str]) -> list:
        """The work left from (``stage``, ``stage_step``, ``epoch``) to the end of the
        stages in ``wanted``."""
        out = []
        for index in range(stage, len(self.config.stages)):
            name = self.config.stages[index].name
            if name not in wanted:
                continue
            plan = self._plan(index)
            steps_left = plan.total_steps - (stage_step if index == stage else 0)
            epochs_left = plan.num_epochs - (epoch if index == stage else 0)
            out.append(
                PlannedWork(
                    name,
                    train_units=self.step_units(index) * steps_left,
                    forward_units=self.validation_units(index) * epochs_left,
                )
            )
        return out


class TrainingForecaster:
    """The trainer's side of the forecast: what to measure when, and when to tell.

    The first forecast times ``window`` (steps, counted in this session's first epoch;
    the first steps, which start the data loader, are left out) and is told at once;
    the next at the start of every later stage, and at the end of an epoch after which
    its stage goes on. Without ``work`` (a worker process that does not report),
    nothing is measured or told.
    """

    def __init__(
        self,
        forecast: Forecast,
        work: TrainingWork | None,
        wanted: Sequence[str],
        tell: Callable[[Forecast], None],
        window: tuple[int, int] = (3, 13),
    ) -> None:
        self.forecast, self.work, self.wanted = forecast, work, list(wanted)
        self._tell, self.window = tell, window
        self.told = False
        self._window_start = 0.0

    def tell(self, stage: int, stage_step: int, epoch: int) -> None:
        """Print and log the forecast from this position."""
        if self.work is None:
            return
        self.forecast.training = self.work.plan(stage, stage_step, epoch, self.wanted)
        self._tell(self.forecast)
        self.told = True

    def stage_start(self, stage: int) -> None:
        if self.forecast.measured:
            self.tell(stage, 0, 0)

    def step(self, stage: int, stage_step: int, epoch: int, steps: int, elapsed: float) -> None:
        """After a step: ``steps`` taken and ``elapsed`` seconds in this epoch so far."""
        first, last = self.window
        if self.told or self.work is None:
            return
        if steps == first:
            self._window_start = elapsed
        elif steps == last:
            units = self.work.step_units(stage) * (last - first)
            self.forecast.observe_training((stage, epoch), elapsed - self._window_start, units)
            self.tell(stage, stage_step, epoch)

    def epoch_end(
        self,
        stage: int,
        epoch: int,
        stage_step: int,
        steps: int,
        elapsed: float,
        validation_s: float,
        goes_on: bool,
    ) -> None:
        """After epoch ``epoch`` of ``stage`` (``steps`` in ``elapsed`` seconds, ending
        at ``stage_step``) and its validation; ``goes_on``: the stage has epochs left."""
        if self.work is None:
            return
        key = (stage, epoch)  # replaces the first forecast's part-epoch measurement
        self.forecast.observe_training(key, elapsed, self.work.step_units(stage) * steps)
        self.forecast.observe_forward(key, validation_s, self.work.validation_units(stage))
        if not self.told and goes_on:
            self.tell(stage, stage_step, epoch + 1)
