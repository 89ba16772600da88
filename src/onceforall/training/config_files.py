"""Training configs as files: the YAML presets in ``configs/``, a user's YAML file, and
the ``--set KEY=VALUE`` overrides applied to either before it is parsed
(:meth:`~onceforall.training.config.TrainConfig.from_dict`).

An override names a top-level key, a stage's field (``stages.kernel.lr``) or a
specialisation setting (``specialize.num_targets``).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from ..errors import ConfigError, InputNotFoundError
from ..storage.reading import read_text
from .config import SpecializeConfig, StageConfig, TrainConfig, field_names, refuse_unknown

__all__ = [
    "PRESETS_DIR",
    "apply_overrides",
    "load_config",
    "parse_overrides",
    "preset_names",
    "preset_path",
    "read_config_file",
    "yaml_problem",
]

PRESETS_DIR = Path(__file__).resolve().parent.parent / "configs"


def preset_path(name: str) -> Path:
    return PRESETS_DIR / f"{name}.yaml"


def preset_names() -> list[str]:
    """The presets shipped with the package (the YAML files in ``configs/``), sorted."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def load_config(
    path_or_preset: str | Path,
    overrides: Mapping[str, Any] | None = None,
    **top_level: Any,
) -> TrainConfig:
    """Load a YAML config file, or a preset by name (``imagenet``, ``fashion-mnist``,
    ``fashion-mnist-quick``), with ``overrides`` (see :func:`apply_overrides`) and then
    the ``top_level`` keyword overrides applied."""
    path = Path(path_or_preset)
    if not path.is_file():
        preset = preset_path(str(path_or_preset))
        if not preset.is_file():
            raise InputNotFoundError(
                f"no config file {str(path)!r} and no preset of that name; "
                f"presets: {', '.join(preset_names())}"
            )
        path = preset
    data = apply_overrides(read_config_file(path), {**(overrides or {}), **top_level})
    return TrainConfig.from_dict(data)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping a YAML config file holds (an empty file: none); a file that is not
    text, not YAML or not a mapping is a :class:`ConfigError` naming it."""
    text = read_text(path, "config file")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {yaml_problem(exc)}") from None
    except RecursionError:
        raise ConfigError(f"{path} is not valid YAML: nested too deeply") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path} holds a {type(data).__name__}, not a config: expected a mapping of "
            "config keys (batch_size: 64, stages: [...])"
        )
    return data


def yaml_problem(exc: yaml.YAMLError) -> str:
    """What a YAML parser says is wrong, in one line (with the line and column)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).strip().splitlines()[0]
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return f"{problem}{where}"


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` pairs as a dict, each VALUE read as YAML (the keys are checked
    by :func:`apply_overrides`); a pair without ``=`` or a key, or a value that is not
    YAML, is a :class:`ConfigError` naming it."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects KEY=VALUE, got {pair!r}")
        try:
            overrides[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(
                f"--set {pair!r}: the value is not YAML: {yaml_problem(exc)}"
            ) from None
    return overrides


def apply_overrides(data: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``data`` (a config as read from YAML) with ``overrides`` applied in
    order: ``KEY`` replaces a top-level value, ``stages.NAME.FIELD`` one field of the
    stage called NAME, ``specialize.KEY`` one setting of the steps after training. An
    unknown key, stage or field is refused (:class:`ConfigError`) listing what exists."""
    data = copy.deepcopy(dict(data))
    for key, value in overrides.items():
        section, dot, rest = key.partition(".")
        if not dot:
            refuse_unknown("config key", {key: value}, field_names(TrainConfig))
            data[key] = value
        elif section == "stages":
            name, dot, name_field = rest.partition(".")
            if not dot or not name or "." in name_field:
                raise ConfigError(f"override {key!r}: a stage's field is stages.NAME.FIELD")
            stage = _stage_dict(data, name, key)
            refuse_unknown(f"stage {name!r} field", {name_field: value}, field_names(StageConfig))
            stage[name_field] = value
        elif section == "specialize":
            if "." in rest:
                raise ConfigError(f"override {key!r}: a specialize setting is specialize.KEY")
            refuse_unknown("specialize key", {rest: value}, field_names(SpecializeConfig))
            data["specialize"] = {**(data.get("specialize") or {}), rest: value}
        else:
            refuse_unknown("config key", {section: value}, field_names(TrainConfig))
            raise ConfigError(
                f"override {key!r}: only stages.NAME.FIELD and specialize.KEY take a dotted "
                f"key; {section!r} is a single value"
            )
    return data


def _stage_dict(data: dict[str, Any], name: str, key: str) -> dict[str, Any]:
    """The raw stage called ``name`` in ``data``."""
    raw = data.get("stages")
    stages = [s for s in raw if isinstance(s, dict)] if isinstance(raw, list) else []
    for stage in stages:
        if stage.get("name") == name:
            return stage
    known = ", ".join(str(s.get("name")) for s in stages) or "none"
    raise ConfigError(f"override {key!r}: no stage {name!r}; stages: {known}")
