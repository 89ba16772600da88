"""Configs are parsed and checked when loaded: overrides of a stage's field or of a
specialisation setting apply, unknown names are refused by name, old run configs load."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from onceforall.deploy.pipeline import SpecializeConfig as ReExported
from onceforall.errors import ConfigError
from onceforall.training import TrainConfig, load_config
from onceforall.training.config import SpecializeConfig
from onceforall.training.config_files import parse_overrides

STAGES = [
    {"name": "full", "epochs": 1, "lr": 0.05, "distill": False},
    {"name": "kernel", "epochs": 1, "lr": 0.03, "kernel_sizes": [3, 5, 7]},
]


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_dotted_overrides_set_a_stage_field_and_a_specialize_setting(tmp_path) -> None:
    path = _write(tmp_path, {"stages": STAGES, "specialize": {"num_targets": 5}})
    overrides = parse_overrides(
        ["stages.kernel.lr=0.01", "specialize.num_targets=2", "batch_size=32"]
    )
    config = load_config(path, overrides)
    assert config.stage("kernel").lr == 0.01
    assert config.stage("full").lr == 0.05  # the other stage keeps its value
    assert config.specialize.num_targets == 2
    assert config.batch_size == 32
    # A specialize override without a specialize: section in the file starts one.
    config = load_config(_write(tmp_path, {"stages": STAGES}), {"specialize.generations": 7})
    assert config.specialize.generations == 7
    assert config.specialize.num_targets == SpecializeConfig().num_targets
    # The preset itself is left as it was.
    assert load_config("fashion-mnist-quick", {"stages.kernel.lr": 1.0}).stage("kernel").lr == 1
    assert load_config("fashion-mnist-quick").stage("kernel").lr != 1


@pytest.mark.parametrize(
    ("key", "named", "listed"),
    [
        ("stages.kernal.lr", "'kernal'", "full, kernel"),
        ("stages.kernel.learning_rate", "learning_rate", "warmup_epochs"),
        ("specialize.num_target", "num_target", "num_targets"),
        ("batch", "batch", "batch_size"),
        ("optimizer.lr", "optimizer", "weight_decay"),
    ],
)
def test_unknown_override_is_refused_by_name(tmp_path, key, named, listed) -> None:
    path = _write(tmp_path, {"stages": STAGES})
    with pytest.raises(ConfigError) as info:
        load_config(path, {key: 1})
    assert named in str(info.value) and listed in str(info.value)


def test_malformed_dotted_overrides_are_refused(tmp_path) -> None:
    path = _write(tmp_path, {"stages": STAGES})
    for key in ("stages.kernel", "batch_size.x", "specialize.targets.0"):
        with pytest.raises(ConfigError, match="override"):
            load_config(path, {key: 1})
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_overrides(["batch_size"])


def test_a_typo_in_the_specialize_section_fails_at_load_time(tmp_path) -> None:
    path = _write(tmp_path, {"stages": STAGES, "specialize": {"num_target": 2}})
    with pytest.raises(ConfigError, match=r"unknown specialize key\(s\): num_target; known: "):
        load_config(path)
    bad_values = [
        {"latency_backend": "tensorrt"},
        {"targets": "latency_ms<=5"},
        {"generations": -1},
        {"acc_dataset_archs": 1.5},
        {"export": "yes"},
    ]
    for bad in bad_values:
        with pytest.raises(ConfigError, match=f"specialize.{next(iter(bad))}"):
            load_config(_write(tmp_path, {"stages": STAGES, "specialize": bad}))


def test_old_run_configs_load(tmp_path) -> None:
    """config.yaml written before the section was typed: a partial plain mapping, an
    empty one, or none at all."""
    partial = TrainConfig.from_dict({"stages": STAGES, "specialize": {"num_targets": 1}})
    assert partial.specialize == SpecializeConfig(num_targets=1)
    for absent in ({"stages": STAGES, "specialize": {}}, {"stages": STAGES}):
        assert TrainConfig.from_dict(absent).specialize == SpecializeConfig()
    # The Python API still takes a plain mapping.
    assert TrainConfig(specialize={"generations": 3}).specialize.generations == 3
    assert ReExported is SpecializeConfig


def test_to_dict_round_trips_through_plain_yaml(tmp_path) -> None:
    config = load_config(
        "fashion-mnist-quick", {"specialize.targets": ["latency_ms<=1", "macs<=8M,params<=3M"]}
    )
    data = config.to_dict()
    assert isinstance(data["specialize"], dict)
    text = yaml.safe_dump(data)  # safe_dump refuses anything but plain values
    assert TrainConfig.from_dict(yaml.safe_load(text)) == config
    assert yaml.safe_load(text)["specialize"]["targets"] == ["latency_ms<=1", "macs<=8M,params<=3M"]


BASE = {"resolutions": [24, 32], "eval_resolutions": [32], "stages": STAGES}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"batch_size": "sixteen"}, "batch_size must be an integer >= 1, not 'sixteen'"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1, not 0"),
        ({"resolutions": [7]}, r"resolutions must be a non-empty list of integers >= 16"),
        ({"resolutions": []}, "resolutions must be a non-empty list"),
        ({"eval_resolutions": [40]}, r"eval_resolutions \[40\] are not among"),
        ({"label_smoothing": 1.5}, r"label_smoothing must be a number in \[0, 1\)"),
        ({"kd_ratio": -1}, "kd_ratio must be a number >= 0"),
        ({"nesterov": "yes"}, "nesterov must be true or false"),
        ({"num_workers": -1}, "num_workers must be an integer >= 0"),
        ({"test_subset": 0}, "test_subset must be an integer >= 1"),
        ({"bn_recal_images": 20000}, r"bn_recal_images \(20000\) must not exceed holdout_size"),
        ({"amp_dtype": "int8"}, "amp_dtype must be one of bfloat16, float16"),
    ],
)
def test_a_nonsense_value_is_refused_naming_its_field(change: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_dict({**BASE, **change})


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("epochs", -1, r"stages\[1\] \(kernel\)\.epochs must be a number > 0, not -1"),
        ("epochs", 0, r"\.epochs must be a number > 0"),
        ("lr", "fast", r"\.lr must be a number >= 0, not 'fast'"),
        ("lr", -0.1, r"\.lr must be a number >= 0, not -0.1"),
        ("subnets_per_step", 0, r"\.subnets_per_step must be an integer >= 1"),
        ("warmup_epochs", 2, r"\.warmup_epochs \(2\) exceeds its epochs \(1\)"),
        ("kernel_sizes", [], r"\.kernel_sizes must be a non-empty list"),
        ("kernel_sizes", "3,5", r"\.kernel_sizes must be a non-empty list"),
        ("name", "a/b", r"stages\[1\]\.name must be 1-64 letters"),
        ("name", "", r"stages\[1\]\.name must be"),
    ],
)
def test_a_nonsense_stage_value_is_refused_naming_stage_and_field(field, value, message) -> None:
    stages = [dict(s) for s in STAGES]
    stages[1][field] = value
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_dict({**BASE, "stages": stages})


def test_every_preset_passes_the_checks() -> None:
    from onceforall.training.config_files import PRESETS_DIR

    presets = sorted(PRESETS_DIR.glob("*.yaml"))
    assert len(presets) >= 4
    for path in presets:
        load_config(path)
