"""Progressive shrinking on real Fashion-MNIST, at a tiny budget: the whole pipeline,
exact resume after SIGKILL, divergence detection, two workers under torchrun."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from onceforall.storage.checkpoint import list_checkpoints, load_latest_checkpoint
from onceforall.training import TrainConfig, Trainer, TrainingDiverged, train
from onceforall.training.metrics import TimedIterator, tensorboard_scalars
from tests.conftest import RESNET_TINY_STAGES, TINY_TRAINING, metric_records, needs_fashion_mnist

pytestmark = needs_fashion_mnist

TINY = {
    "supernet": "ofa_mbv3_w1.0",
    "resolutions": [24, 32],
    "eval_resolutions": [32],
    "batch_size": 16,
    "holdout_size": 48,
    "train_subset": 96,  # 6 steps per epoch
    "test_subset": 48,
    "num_workers": 0,
    "num_random_val_archs": 1,
    "bn_recal_images": 32,
    "checkpoint_every_steps": 2,
    "stages": [
        {"name": "full", "epochs": 1, "lr": 0.05, "distill": False},
        {"name": "kernel", "epochs": 1, "lr": 0.03, "kernel_sizes": [3, 5, 7]},
        {
            "name": "expand",
            "epochs": 1,
            "lr": 0.01,
            "subnets_per_step": 2,
            "kernel_sizes": [3, 5, 7],
            "depths": [2, 3, 4],
            "expand_ratios": [3, 4, 6],
            "sort_channels": True,
        },
    ],
}


def _final_weights(run: Path) -> dict[str, torch.Tensor]:
    found = load_latest_checkpoint(run / "supernet")
    assert found is not None
    return found[1]["model"]


def test_all_stages_run_and_leave_their_artefacts(tmp_path) -> None:
    results = train(TrainConfig.from_dict(TINY), "fashion-mnist", tmp_path, progress=False)
    assert list(results) == ["full", "kernel", "expand"]
    for validation in results.values():
        assert set(validation) == {"smallest@32", "largest@32", "random0@32"}
        assert all(0 <= v <= 100 for v in validation.values())
    records = metric_records(tmp_path)
    epochs = [r for r in records if r["type"] == "epoch"]
    assert [r["stage"] for r in epochs] == ["full", "kernel", "expand"]
    assert all(r["images_per_s"] > 0 and r["train_loss"] > 0 for r in epochs)
    assert all(0 < r["data_wait_fraction"] < 1 for r in epochs)
    assert len(list_checkpoints(tmp_path / "checkpoints")) == 2  # keep_checkpoints
    assert load_latest_checkpoint(tmp_path / "teacher") is not None
    weights = _final_weights(tmp_path)
    assert all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point())
    assert (tmp_path / "config.yaml").is_file()


def _tensorboard(run: Path) -> dict[str, dict[int, float]]:
    """Every scalar in the run's TensorBoard event files: tag -> {step: value}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def _tensorboard_writers() -> set[threading.Thread]:
    """The threads of the open TensorBoard writers (each writes its events to disk)."""
    return {t for t in threading.enumerate() if type(t).__module__.startswith("tensorboard")}


def _float32(value: float) -> float:
    """``value`` at TensorBoard's precision (a scalar event holds a float32)."""
    return torch.tensor(value, dtype=torch.float32).item()


def test_tensorboard_holds_every_scalar_of_the_metrics_log(tmp_path) -> None:
    """21 real steps: once ``run`` returns, the TensorBoard writer is closed (its thread
    stopped, every event on disk) and the event files hold the "train" record of step 20,
    each epoch's training loss and test-split top-1, and every other number of
    metrics.jsonl, each at its record's global step with the record's value."""
    pytest.importorskip("tensorboard")
    config = TrainConfig.from_dict(
        {
            **TINY,
            "train_subset": 320,  # 20 steps per epoch
            "checkpoint_every_steps": 100,
            "stages": [{"name": "full", "epochs": 1.05, "lr": 0.05, "distill": False}],
        }
    )
    writers = _tensorboard_writers()
    trainer = Trainer(config, "fashion-mnist", tmp_path, progress=False)
    trainer.run()
    assert _tensorboard_writers() <= writers, "a TensorBoard writer is still open"
    records, scalars = metric_records(tmp_path), _tensorboard(tmp_path)
    (step20,) = [r for r in records if r["type"] == "train"]
    assert step20["global_step"] == 20
    assert scalars["train/loss"] == {20: _float32(step20["loss"])}
    assert scalars["train/lr"] == {20: _float32(step20["lr"])}
    epochs = [r for r in records if r["type"] == "epoch"]
    assert [r["global_step"] for r in epochs] == [20, 21]
    expected = {r["global_step"]: _float32(r["train_loss"]) for r in epochs}
    assert scalars["epoch/train_loss"] == expected
    expected = {r["global_step"]: _float32(r["validation"]["largest@32"]) for r in epochs}
    assert scalars["epoch/validation/largest@32"] == expected
    assert scalars["done/full/smallest@32"] == {0: _float32(records[-1]["full"]["smallest@32"])}
    logged = 0
    for record in records:
        for tag, value in tensorboard_scalars(record):
            assert scalars[tag][record.get("global_step", 0)] == _float32(value), tag
            logged += 1
    assert logged == sum(len(steps) for steps in scalars.values())  # and nothing else


def test_tensorboard_files_are_complete_when_training_stops_with_an_error(tmp_path) -> None:
    """The event files are flushed and closed when ``run`` ends with an error, too."""
    pytest.importorskip("tensorboard")
    config = TrainConfig.from_dict(
        {**TINY, "stages": [{"name": "full", "epochs": 3, "lr": 1e12, "distill": False}]}
    )
    writers = _tensorboard_writers()
    trainer = Trainer(config, "fashion-mnist", tmp_path, progress=False)
    with pytest.raises(TrainingDiverged):
        trainer.run()
    assert _tensorboard_writers() <= writers, "a TensorBoard writer is still open"
    (start,) = [r for r in metric_records(tmp_path) if r["type"] == "stage_start"]
    assert _tensorboard(tmp_path)["stage_start/total_steps"] == {0: start["total_steps"]}


def test_timed_iterator_counts_the_wait_for_items_not_the_work_on_them() -> None:
    def slow_source():
        for item in range(3):
            time.sleep(0.05)  # producing each item takes at least 50 ms
            yield item

    items = TimedIterator(slow_source())
    start = time.perf_counter()
    seen = []
    for item in items:
        seen.append(item)
        time.sleep(0.05)  # the consumer's own work, which is not waiting
    total = time.perf_counter() - start
    assert seen == [0, 1, 2]
    assert items.waited >= 0.15
    assert items.waited <= total - 0.15


@pytest.mark.parametrize("zero", [True, False])
def test_a_fresh_run_starts_its_residual_blocks_as_identities(tmp_path, zero) -> None:
    config = TrainConfig.from_dict({**TINY, "zero_init_residual": zero})
    net = Trainer(config, "fashion-mnist", tmp_path, progress=False).net
    scales = torch.cat([norm.weight for norm in net.residual_norms()])
    assert len(scales) > 0 and bool((scales == 0).all()) is zero


def _cli(run: Path, config: Path, *extra: str, launcher: tuple[str, ...] = ()) -> list[str]:
    """``ofa train`` as a subprocess command, optionally under a launcher (torchrun)."""
    return [
        sys.executable,
        *launcher,
        "-m",
        "onceforall.cli",
        "train",
        "--config",
        str(config),
        "--out",
        str(run),
        *extra,
    ]


@pytest.mark.slow  # two ofa train processes, about 30 s (make test-slow); the default run
# keeps tests/test_checkpoint.py's SIGKILL of a checkpoint writer
def test_sigkill_then_resume_continues_exactly(tmp_path) -> None:
    config = tmp_path / "tiny.json"  # JSON is YAML
    config.write_text(json.dumps(TINY))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    reference = tmp_path / "uninterrupted"
    subprocess.run(_cli(reference, config), check=True, env=env, capture_output=True)

    run = tmp_path / "killed"
    proc = subprocess.Popen(
        _cli(run, config), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    # Kill once the kernel stage (the second) has checkpointed mid-epoch.
    deadline = time.time() + 120
    while time.time() < deadline:
        names = [p.name for p in list_checkpoints(run / "checkpoints")]
        if any("-kernel-e0-b2-" in n or "-kernel-e0-b4-" in n for n in names):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = load_latest_checkpoint(run / "checkpoints")[1]["position"]
    assert killed_at["global_step"] > 0, "must resume from a checkpoint, not from scratch"

    done = subprocess.run(_cli(run, config, "--resume"), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    resume = [r for r in metric_records(run) if r["type"] == "resume"]
    assert len(resume) == 1 and resume[0]["global_step"] == killed_at["global_step"]
    # The resumed run ends with exactly the weights of the run that was never killed.
    expected, got = _final_weights(reference), _final_weights(run)
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


def test_divergence_stops_with_the_step_and_keeps_the_last_checkpoint(tmp_path) -> None:
    config = TrainConfig.from_dict(
        {
            **TINY,
            "checkpoint_every_steps": 1,
            "stages": [{"name": "full", "epochs": 3, "lr": 1e12, "distill": False}],
        }
    )
    with pytest.raises(TrainingDiverged) as info:
        train(config, "fashion-mnist", tmp_path, progress=False)
    match = re.search(r"at stage 'full', epoch \d+, global step (\d+)", str(info.value))
    assert match, str(info.value)
    step = int(match.group(1))
    assert step >= 1
    # The checkpoint of the last completed step is there, complete and verified.
    path, state = load_latest_checkpoint(tmp_path / "checkpoints")
    assert state["position"]["global_step"] == step
    assert str(tmp_path / "checkpoints") in str(info.value)


@pytest.mark.slow  # in CI: make test-slow (docs/benchmarks.md, "The test suite")
@pytest.mark.skipif(sys.platform != "linux", reason="gloo on linux")
def test_two_workers_stay_identical(tmp_path) -> None:
    config = tmp_path / "tiny.json"
    tiny = {**TINY, "train_subset": 128, "stages": TINY["stages"][:2]}
    config.write_text(json.dumps(tiny))
    run = tmp_path / "ddp"
    torchrun = ("-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29731")
    cmd = _cli(run, config, "--device", "cpu", launcher=torchrun)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    epochs = [r for r in metric_records(run) if r["type"] == "epoch"]
    assert len(epochs) == 2
    for record in epochs:
        # each worker's digest of its weights and of the archs it sampled, gathered
        params, archs = record["consistency"]["params"], record["consistency"]["archs"]
        assert len(params) == 2 and params[0] == params[1]
        assert len(archs) == 2 and archs[0] == archs[1]


def test_step_archs_are_seeded_and_train_largest_comes_first() -> None:
    from onceforall import MBConvSpace
    from onceforall.training.config import StageConfig
    from onceforall.training.schedule import step_archs

    space = MBConvSpace(resolutions=(24, 32))
    plain = StageConfig("s", 1, 0.1, subnets_per_step=3, kernel_sizes=[3, 5, 7])
    sandwich = StageConfig(
        "s", 1, 0.1, subnets_per_step=3, kernel_sizes=[3, 5, 7], train_largest=True
    )
    a = step_archs(space, plain, seed=0, stage_index=1, step=5)
    assert a == step_archs(space, plain, seed=0, stage_index=1, step=5)
    assert a != step_archs(space, plain, seed=0, stage_index=1, step=6)
    b = step_archs(space, sandwich, seed=0, stage_index=1, step=5)
    assert b[0] == space.largest() and b[1:] == a[1:]


def test_a_later_stage_alone_trains_on_from_the_earlier_stages(tmp_path) -> None:
    """``ofa train --stage kernel`` continues from RUN/supernet, not from a fresh init."""
    config = TrainConfig.from_dict(
        {
            **TINY,
            "stages": [
                TINY["stages"][0],
                {"name": "kernel", "epochs": 1, "lr": 0.0, "kernel_sizes": [3, 5, 7]},
            ],
        }
    )
    train(config, "fashion-mnist", tmp_path, stages=["full"], progress=False)
    after_full = _final_weights(tmp_path)
    # lr 0: the kernel stage changes no parameter, so it must end with the full stage's.
    train(config, "fashion-mnist", tmp_path, stages=["kernel"], progress=False)
    after_kernel = _final_weights(tmp_path)
    params = [k for k in after_full if "running" not in k and "num_batches" not in k]
    assert params and all(torch.equal(after_full[k], after_kernel[k]) for k in params)
    assert any(r["type"] == "continue" for r in metric_records(tmp_path))

    fresh = tmp_path / "fresh"
    with pytest.raises(FileNotFoundError, match="run the earlier stages first"):
        train(config, "fashion-mnist", fresh, stages=["kernel"], progress=False)


def test_stage_spaces_of_resnet_sample_archs_of_the_full_space() -> None:
    """An OFA-ResNet stage opens depths, expand ratios and widths; what it samples is
    written in the supernet's own space (``w`` indexes all its widths, ``d[0]`` runs or
    skips the stem block as the supernet reads it)."""
    from onceforall import create_supernet
    from onceforall.training.config import StageConfig
    from onceforall.training.schedule import stage_space, step_archs

    full = create_supernet("ofa_resnet50", num_classes=10).space
    first = StageConfig("full", 1, 0.1, depths=[2], expand_ratios=[0.35])
    assert stage_space(full, first).largest() == full.largest()
    assert stage_space(full, first).smallest(128) == full.largest(128)
    depth = StageConfig("depth", 1, 0.1, depths=[1, 2], expand_ratios=[0.35])
    width = StageConfig(
        "width", 1, 0.1, depths=[0, 1, 2], expand_ratios=[0.2, 0.35], width_mults=[0.8, 1.0]
    )
    seen_stem, seen_w = set(), set()
    for stage, n in ((depth, 60), (width, 60)):
        space = stage_space(full, stage)
        for step in range(n):
            for arch in step_archs(space, stage, seed=0, stage_index=1, step=step):
                assert full.parse(arch) == arch
                assert {arch.e[s] for s in full.active_slots(arch)} <= set(stage.expand_ratios)
                assert set(arch.d[1:]) <= set(stage.depths)
                seen_stem.add(arch.d[0])
                if stage is width:
                    seen_w |= {full.width_mults[i] for i in arch.w}
                else:
                    assert arch.w == full.largest().w
    assert seen_stem == {0, 2} and seen_w == {0.8, 1.0}
    with pytest.raises(ValueError, match=r"opens width_mults \[0.5\].*has \[0.65, 0.8, 1.0\]"):
        stage_space(full, StageConfig("bad", 1, 0.1, depths=[2], width_mults=[0.5]))
    mbv3 = create_supernet("ofa_mbv3_w1.0").space
    with pytest.raises(ValueError, match="opens width_mults, which this supernet does not have"):
        stage_space(mbv3, width)
    with pytest.raises(ValueError, match=r"opens kernel_sizes \[9\]"):
        stage_space(mbv3, StageConfig("bad", 1, 0.1, kernel_sizes=[9]))


@pytest.mark.parametrize(
    "preset", ["imagenet", "imagenet-resnet50", "fashion-mnist", "fashion-mnist-quick"]
)
def test_every_preset_opens_choices_its_supernet_has(preset) -> None:
    from onceforall import create_supernet
    from onceforall.training import load_config
    from onceforall.training.schedule import stage_space

    config = load_config(preset)
    space = create_supernet(config.supernet, resolutions=config.resolutions).space
    for stage in config.stages:
        opened = stage_space(space, stage)
        assert space.parse(opened.sample(0)) == opened.sample(0)


@pytest.mark.slow  # in CI: make test-slow (docs/benchmarks.md, "The test suite")
def test_resnet_trains_through_its_own_stages(tmp_path) -> None:
    """Real steps of OFA-ResNet50 on Fashion-MNIST: the full network, then depth, expand
    ratio (after the channel sort) and width opened together; the sub-networks each step
    trains are the stage's, and the weights they leave are finite and changed."""
    config = TrainConfig.from_dict(
        {
            **TINY,
            "supernet": "ofa_resnet50",
            "train_subset": 32,
            "holdout_size": 32,
            "test_subset": 32,
            "stages": RESNET_TINY_STAGES,
        }
    )
    results = train(config, "fashion-mnist", tmp_path, progress=False)
    assert list(results) == ["full", "elastic"]
    steps = [r for r in metric_records(tmp_path) if r["type"] == "epoch"]
    assert [r["stage"] for r in steps] == ["full", "elastic"]
    teacher = load_latest_checkpoint(tmp_path / "teacher")[1]["model"]
    weights = _final_weights(tmp_path)
    assert all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point())
    key = "classifier.weight"  # not permuted by the channel sort: changed by training
    assert not torch.equal(teacher[key], weights[key])


def test_no_weight_decay_on_biases_and_batch_norm() -> None:
    # Training and fine-tuning share this optimiser; the paper's recipe decays only the
    # convolution and linear weights.
    import onceforall
    from onceforall.training.loading import sgd

    supernet = onceforall.create_supernet("ofa_mbv3_w1.0", num_classes=10)
    net = supernet.extract(supernet.space.smallest())
    config = TrainConfig.from_dict({**TINY_TRAINING, "weight_decay": 3e-5})
    optimizer = sgd(net.parameters(), config, lr=0.1, state=None)
    decay_of = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    assert len(decay_of) == len(list(net.parameters()))
    for name, module in net.named_modules():
        for kind, param in module.named_parameters(recurse=False):
            is_weight = kind == "weight" and isinstance(module, (torch.nn.Conv2d, torch.nn.Linear))
            assert decay_of[id(param)] == (3e-5 if is_weight else 0.0), f"{name}.{kind}"
