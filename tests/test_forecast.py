"""The run's forecast: the work counted for each part of a run, the arithmetic that turns
measured speed into seconds, and the forecast a real tiny training run prints and logs.
Nothing here depends on how fast this machine is: the tests check what is counted and
how, never how close a forecast came."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from onceforall.training import TrainConfig, Trainer
from onceforall.training.forecast import (
    TRAIN_PASS,
    Forecast,
    PlannedWork,
    TrainingWork,
    format_minutes,
    stage_step_units,
)
from onceforall.training.run_dir import build_supernet
from onceforall.training.schedule import stage_space, step_archs
from tests.conftest import needs_fashion_mnist
from tests.test_training import TINY


@pytest.fixture(scope="module")
def tiny() -> tuple[TrainConfig, object]:
    config = TrainConfig.from_dict(TINY)
    supernet = build_supernet(config, num_classes=10)
    return config, supernet


def _macs(supernet, arch, resolutions) -> float:
    return sum(supernet.macs(dataclasses.replace(arch, r=r)) for r in resolutions) / len(
        resolutions
    )


@pytest.mark.parametrize("index", [0, 1, 2])
def test_a_step_costs_its_subnetworks_passes_and_the_teachers_forward(tiny, index) -> None:
    config, supernet = tiny
    stage = config.stages[index]
    space = stage_space(supernet.space, stage)
    steps = [0, 1, 5]
    expected = 0.0
    for step in steps:
        archs = step_archs(space, stage, config.seed, index, step)
        assert len(archs) == stage.subnets_per_step
        trained = sum(_macs(supernet, a, config.resolutions) for a in archs)
        teacher = _macs(supernet, space.largest(), config.resolutions) if stage.distill else 0
        expected += config.batch_size * (TRAIN_PASS * trained + teacher)
    got = stage_step_units(supernet, space, stage, index, config, steps)
    assert got == pytest.approx(expected / len(steps), rel=1e-12)


def test_the_plan_counts_what_is_left_from_the_position(tiny) -> None:
    config, supernet = tiny
    steps_per_epoch = 6
    work = TrainingWork(supernet, config, steps_per_epoch, 48, lambda space: {
        "largest": space.largest(), "smallest": space.smallest()
    })  # fmt: skip
    names = [s.name for s in config.stages]
    whole = {w.name: w for w in work.plan(0, 0, 0, names)}
    assert list(whole) == names
    for index, name in enumerate(names):
        assert whole[name].train_units == pytest.approx(work.step_units(index) * steps_per_epoch)
        assert whole[name].forward_units == pytest.approx(work.validation_units(index))
    # Half-way through the first stage's only epoch: half its steps and its validation.
    part = {w.name: w for w in work.plan(0, 3, 0, names)}
    assert part[names[0]].train_units == pytest.approx(whole[names[0]].train_units / 2)
    assert part[names[0]].forward_units == whole[names[0]].forward_units
    assert part[names[1]] == whole[names[1]]
    # Only the stages asked for, from the current one on.
    assert [w.name for w in work.plan(1, 0, 0, [names[0], names[2]])] == [names[2]]
    # Validation: each arch at each evaluation resolution, on calibration + test images.
    space = stage_space(supernet.space, config.stages[0])
    images = config.bn_recal_images + 48
    expected = sum(
        images * supernet.macs(dataclasses.replace(a, r=r))
        for a in (space.largest(), space.smallest())
        for r in config.eval_resolutions
    )
    assert work.validation_units(0) == pytest.approx(expected)


def test_measured_speed_turns_work_into_seconds() -> None:
    forecast = Forecast(
        training=[PlannedWork("kernel", train_units=300.0, forward_units=50.0)],
        later=[PlannedWork("latency table", fixed_s=7.0), PlannedWork("idle")],
    )
    assert not forecast.measured
    # Before any validation, a forward pass is a third of a training pass.
    forecast.observe_training((0, 0), seconds=6.0, units=200.0)
    assert forecast.rates() == pytest.approx((0.03, 0.01))
    assert forecast.remaining() == pytest.approx({"kernel": 9.5, "latency table": 7.0})
    # A validation measures the forward rate; a fuller measurement of the same epoch
    # replaces the early one.
    forecast.observe_forward((0, 0), seconds=2.0, units=100.0)
    forecast.observe_training((0, 0), seconds=12.0, units=600.0)
    assert forecast.rates() == pytest.approx((0.02, 0.02))
    assert forecast.remaining()["kernel"] == pytest.approx(300 * 0.02 + 50 * 0.02)
    forecast.finish("kernel", 8.0)
    assert forecast.remaining() == pytest.approx({"latency table": 7.0})
    assert "latency table 7 s" in forecast.line() and "kernel" not in forecast.line()
    assert forecast.summary() == "kernel 8 s; total 8 s"
    record = forecast.record()
    assert record["total_remaining_s"] == 7.0 and record["train_s_per_gmac_image"] == 2e7


def test_minutes_read_naturally() -> None:
    assert [format_minutes(s) for s in (42, 450, 3900)] == ["42 s", "7.5 min", "1 h 05 min"]


@needs_fashion_mnist
def test_a_training_run_forecasts_then_says_what_each_stage_took(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config = TrainConfig.from_dict(TINY)  # 6 steps per epoch
    names = [s.name for s in config.stages]
    trainer = Trainer(config, "fashion-mnist", tmp_path / "run", progress=True)
    trainer.forecast_window = (2, 4)  # the first forecast times steps 2 to 4
    trainer.run()
    captured = capsys.readouterr()
    printed = captured.out + captured.err
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    forecasts = [r for r in records if r["type"] == "forecast"]
    # The first after step 4 of the first stage (names every stage), then one at the
    # start of each later stage, each without the stages already done.
    assert [list(f["remaining_s"]) for f in forecasts] == [names, names[1:], names[2:]]
    for f in forecasts:
        assert all(math.isfinite(s) and s > 0 for s in f["remaining_s"].values())
        assert f["train_s_per_gmac_image"] > 0 and f["forward_s_per_gmac_image"] > 0
    assert "forecast: about" in printed
    assert set(trainer.forecast.done) == set(names)
    assert f"training took {names[0]} " in printed


@needs_fashion_mnist
def test_the_forecasts_probes_leave_the_training_unchanged(tmp_path: Path) -> None:
    """The later steps' probe builds and times networks (drawing from torch's random
    stream); the run trains exactly as without it (its data augmentation draws from
    that stream here: num_workers 0)."""
    from onceforall.deploy.forecast import later_steps
    from onceforall.storage.run_layout import RunLayout

    config = TrainConfig.from_dict({**TINY, "specialize": {"latency_repeats": 1}})
    weights = []
    for name, probe in (("plain", False), ("probed", True)):
        layout = RunLayout(tmp_path / name)
        later = (lambda net, n, run=layout: later_steps(config, net, run, n)) if probe else None
        trainer = Trainer(
            config, "fashion-mnist", layout.root, progress=False, max_steps=3, forecast_later=later
        )
        trainer.run()
        weights.append({k: v.clone() for k, v in trainer.net.state_dict().items()})
        if probe:
            assert {w.name for w in trainer.forecast.later} >= {"latency table", "export"}
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
