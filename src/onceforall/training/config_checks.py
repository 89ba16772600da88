"""The checks of a training config's values, run when it is parsed: each field's type and
range, named by field (``batch_size``, ``stages[1].lr``), so nonsense fails at once
instead of as a Python error an hour into training. Whether a stage's choices exist in
the supernet is checked when the supernet is built (:class:`~.trainer.Trainer`)."""

from __future__ import annotations

import re
from typing import Any, Callable

from ..arch.base import MIN_RESOLUTION
from ..errors import ConfigError

__all__ = ["check_stage_values", "check_train_values"]

STAGE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$")  # a file-name-safe tag
AMP_DTYPES = ("bfloat16", "float16")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# (kind, allowed values described, check of an already well-typed value)
Rule = tuple[str, str, Callable[[Any], bool]]


def _int(at_least: int) -> Rule:
    return ("an integer", f">= {at_least}", lambda v: v >= at_least)


def _number(text: str, ok: Callable[[float], bool]) -> Rule:
    return ("a number", text, ok)


BOOL: Rule = ("true or false", "", lambda v: True)
TRAIN_RULES: dict[str, Rule] = {
    "batch_size": _int(1),
    "momentum": _number("in [0, 1)", lambda v: 0 <= v < 1),
    "nesterov": BOOL,
    "weight_decay": _number(">= 0", lambda v: v >= 0),
    "label_smoothing": _number("in [0, 1)", lambda v: 0 <= v < 1),
    "kd_ratio": _number(">= 0", lambda v: v >= 0),
    "dropout": _number("in [0, 1)", lambda v: 0 <= v < 1),
    "bn_momentum": _number("in (0, 1]", lambda v: 0 < v <= 1),
    "bn_eps": _number("> 0", lambda v: v > 0),
    "zero_init_residual": BOOL,
    "crop_scale_min": _number("in (0, 1]", lambda v: 0 < v <= 1),
    "holdout_size": _int(1),
    "num_workers": _int(0),
    "max_unreadable_images": _int(0),
    "num_random_val_archs": _int(0),
    "bn_recal_images": _int(1),
    "checkpoint_every_steps": _int(0),
    "keep_checkpoints": _int(1),
    "seed": _int(0),
    "channels_last": BOOL,
    "deterministic": BOOL,
}
OPTIONAL_COUNTS = ("train_subset", "test_subset")  # None, or at least 1
STAGE_RULES: dict[str, Rule] = {
    "epochs": _number("> 0", lambda v: v > 0),
    "lr": _number(">= 0", lambda v: v >= 0),  # 0: a stage that only moves BN statistics
    "warmup_epochs": _number(">= 0", lambda v: v >= 0),
    "subnets_per_step": _int(1),
    "sort_channels": BOOL,
    "train_largest": BOOL,
    "train_smallest": BOOL,
    "distill": BOOL,
    "inplace_distill": BOOL,
}
STAGE_CHOICES = ("kernel_sizes", "expand_ratios", "depths", "width_mults")


KINDS: dict[str, Callable[[Any], bool]] = {
    "an integer": _is_int,
    "a number": _is_number,
    "true or false": lambda v: isinstance(v, bool),
}


def _check(where: str, value: Any, rule: Rule) -> None:
    kind, allowed, ok = rule
    if not KINDS[kind](value) or not ok(value):
        must = f"{kind} {allowed}".strip()
        raise ConfigError(f"{where} must be {must}, not {value!r}")


def _check_resolutions(where: str, values: Any) -> None:
    if (
        not isinstance(values, list)
        or not values
        or not all(_is_int(v) and v >= MIN_RESOLUTION for v in values)
    ):
        raise ConfigError(
            f"{where} must be a non-empty list of integers >= {MIN_RESOLUTION} (input "
            f"sizes in pixels), not {values!r}"
        )
    if len(set(values)) != len(values):
        raise ConfigError(f"{where} lists a resolution twice: {values!r}")


def check_train_values(config: Any) -> None:
    """Check every top-level field of a :class:`~.config.TrainConfig`."""
    if not isinstance(config.supernet, str) or not config.supernet:
        raise ConfigError(f"supernet must be a supernet's name, not {config.supernet!r}")
    _check_resolutions("resolutions", config.resolutions)
    _check_resolutions("eval_resolutions", config.eval_resolutions)
    outside = [r for r in config.eval_resolutions if r not in config.resolutions]
    if outside:
        raise ConfigError(
            f"eval_resolutions {outside} are not among the training resolutions "
            f"{config.resolutions}: the supernet is measured only where it was trained"
        )
    for name, rule in TRAIN_RULES.items():
        _check(name, getattr(config, name), rule)
    for name in OPTIONAL_COUNTS:
        value = getattr(config, name)
        if value is not None:
            _check(name, value, _int(1))
    if config.bn_recal_images > config.holdout_size:
        raise ConfigError(
            f"bn_recal_images ({config.bn_recal_images}) must not exceed holdout_size "
            f"({config.holdout_size}): BN recalibration draws from the held-out images"
        )
    if config.amp_dtype is not None and config.amp_dtype not in AMP_DTYPES:
        raise ConfigError(
            f"amp_dtype must be one of {', '.join(AMP_DTYPES)} or null, not {config.amp_dtype!r}"
        )


def check_stage_values(stage: Any, index: int) -> None:
    """Check the fields of the ``index``-th :class:`~.config.StageConfig`."""
    where = f"stages[{index}]"
    if not isinstance(stage.name, str) or not STAGE_NAME.match(stage.name):
        raise ConfigError(
            f"{where}.name must be 1-64 letters, digits, '.', '_' or '-' (it names files), "
            f"not {stage.name!r}"
        )
    where = f"stages[{index}] ({stage.name})"
    for name, rule in STAGE_RULES.items():
        _check(f"{where}.{name}", getattr(stage, name), rule)
    _check_sandwich(stage, where)
    if stage.warmup_epochs > stage.epochs:
        raise ConfigError(
            f"{where}.warmup_epochs ({stage.warmup_epochs}) exceeds its epochs ({stage.epochs})"
        )
    for name in STAGE_CHOICES:
        values = getattr(stage, name)
        if values is None:
            continue
        if (
            not isinstance(values, list)
            or not values
            or not all(_is_number(v) and v >= 0 for v in values)
        ):
            raise ConfigError(
                f"{where}.{name} must be a non-empty list of numbers >= 0 (or left out), "
                f"not {values!r}"
            )


def _check_sandwich(stage: Any, where: str) -> None:
    """The sandwich rule and in-place distillation need room in the step for them."""
    if stage.train_smallest and stage.subnets_per_step < 2:
        raise ConfigError(
            f"{where}.train_smallest needs subnets_per_step >= 2 (the smallest is the step's "
            f"last sub-network, after the others), not {stage.subnets_per_step}"
        )
    if not stage.inplace_distill:
        return
    if not stage.train_largest or stage.subnets_per_step < 2:
        raise ConfigError(
            f"{where}.inplace_distill needs train_largest: true and subnets_per_step >= 2 "
            "(the step's largest sub-network is the teacher of the others)"
        )
    if stage.distill:
        raise ConfigError(
            f"{where}: inplace_distill and distill both name a teacher; set distill: false "
            "(in-place distillation needs no teacher stage)"
        )
