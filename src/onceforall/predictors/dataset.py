"""The accuracy dataset: measured top-1 of many sub-networks, one JSON line each.

Each row is ``{"arch": {...}, "resolution": r, "accuracy": top-1 percent, "macs": ...,
"params": ...}``, measured after BN recalibration on held-out *training* images (never the
test split). Rows are appended and flushed as they are measured, so an interrupted build
resumes without redoing finished rows; under torchrun each rank measures every
``world_size``-th arch into a file of its own and rank 0 merges them at the end.

A row also records what it was measured with (``"measured_with"``: the supernet's digest,
the numbers of calibration and evaluation images): rows measured otherwise are never mixed
into one file; resuming with other settings is refused (or, asked to, starts the file
over), so a predictor is never fitted on a mixture.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from ..arch import ArchValue, Space
from ..errors import ConfigError, FileFormatError, StaleResultError, check_whole_number
from ..evaluation import RUNTIMES, SubnetEvaluator
from ..models import Supernet
from ..storage.atomic import check_file_target, write_text_atomic
from ..storage.reading import loads_json, read_text
from ..storage.run_guard import run_lock
from ..storage.run_layout import RunLayout
from ..training.distributed import DistEnv, barrier

__all__ = [
    "accuracy_dataset_for_run",
    "build_accuracy_dataset",
    "dataset_archs",
    "measurement_settings",
    "pending_archs",
    "read_accuracy_dataset",
    "settings_differences",
]


def dataset_archs(space: Space, n: int, seed: int = 0) -> list[ArchValue]:
    """``n`` distinct archs: the smallest and largest at the lowest and highest
    resolution, then uniform random samples (all resolutions), fixed by ``seed``."""
    lo, hi = space.resolutions[0], space.resolutions[-1]
    fixed = [space.smallest(lo), space.largest(lo), space.smallest(hi), space.largest(hi)]
    archs: list[ArchValue] = []
    seen: set[ArchValue] = set()
    for arch in fixed:
        if space.canonical(arch) not in seen and len(archs) < n:
            archs.append(arch)
            seen.add(space.canonical(arch))
    rng = random.Random(f"ofa-acc-dataset-{seed}")
    attempts = 0
    while len(archs) < n:
        arch = space.sample(rng)
        attempts += 1
        if space.canonical(arch) not in seen:
            archs.append(arch)
            seen.add(space.canonical(arch))
        elif attempts > 100 * n:
            raise ValueError(f"the space holds fewer than {n} distinct archs")
    return archs


def _key(arch: Any) -> str:
    """The arch's identity in a dataset file (any family's arch value or its dict)."""
    if hasattr(arch, "to_dict"):
        arch = arch.to_dict()
    return json.dumps({k: v for k, v in arch.items() if k != "wid"}, sort_keys=True)


def pending_archs(archs: Sequence[ArchValue], path: str | os.PathLike) -> list[ArchValue]:
    """The ``archs`` that the dataset file ``path`` (if any) does not hold yet."""
    if not Path(path).is_file():
        return list(archs)
    done = {_key(row["arch"]) for row in read_accuracy_dataset(path)}
    return [a for a in archs if _key(a) not in done]


def read_accuracy_dataset(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a dataset file. A last line cut off by an interruption is ignored; any
    other unreadable line is an error naming it."""
    path = Path(path)
    lines = read_text(path, "accuracy dataset").splitlines()
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = loads_json(line)
        except json.JSONDecodeError as exc:
            if number == len(lines):
                break  # interrupted while writing the last row
            raise FileFormatError(f"{path}, line {number}: not a JSON row ({exc})") from exc
        if not isinstance(row, dict):
            raise FileFormatError(f"{path}, line {number}: not a JSON object ({line[:60]!r})")
        missing = {"arch", "accuracy"} - set(row)
        if missing:
            raise FileFormatError(f"{path}, line {number}: missing {sorted(missing)}")
        rows.append(row)
    return rows


def _rewrite_complete(path: Path, rows: list[dict[str, Any]]) -> None:
    """Drop a cut-off last line before appending to ``path``."""
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))


def _part_path(path: Path, rank: int) -> Path:
    return path.with_name(f"{path.stem}.rank{rank}{path.suffix}")


def settings_differences(
    rows: Sequence[Mapping[str, Any]], settings: Mapping[str, Any]
) -> list[str]:
    """How the rows' ``measured_with`` differ from ``settings`` (``name: theirs -> now``,
    each difference once); empty when every row was measured with ``settings``."""
    found: list[str] = []
    for row in rows:
        theirs = row.get("measured_with")
        if not isinstance(theirs, dict):
            note = "measured_with: not recorded (an older version wrote the row) -> recorded"
            found += [note] if note not in found else []
            continue
        for name in sorted(set(settings) | set(theirs)):
            if theirs.get(name) != settings.get(name):
                note = f"{name}: {theirs.get(name)!r} -> {settings.get(name)!r}"
                found += [note] if note not in found else []
    return found


def _check_settings(
    files: Sequence[Path], settings: Mapping[str, Any] | None, start_over: bool
) -> None:
    """Refuse (or, with ``start_over``, delete) dataset ``files`` whose rows were measured
    with other ``settings``."""
    if settings is None:
        return
    present = [p for p in files if p.is_file()]
    differences = [
        d for p in present for d in settings_differences(read_accuracy_dataset(p), settings)
    ]
    if differences and not start_over:
        shown = "; ".join(dict.fromkeys(differences))
        raise StaleResultError(
            f"{files[0]} holds rows measured with other settings ({shown}); adding rows "
            "would mix them: delete the file, write a new one (--out), or measure with the "
            "same settings"
        )
    for path in present if differences else ():
        path.unlink()


def build_accuracy_dataset(
    supernet: Supernet,
    evaluator: SubnetEvaluator,
    archs: Sequence[ArchValue],
    out: str | os.PathLike,
    *,
    env: DistEnv | None = None,
    progress: bool = True,
    settings: Mapping[str, Any] | None = None,
    start_over: bool = False,
) -> list[dict[str, Any]]:
    """Measure ``archs`` (skipping those already in ``out``) and return their rows.

    With ``settings`` (what the measurement depends on) each row records them, and rows
    already in ``out`` measured otherwise are refused with a StaleResultError, or, with
    ``start_over``, deleted first."""
    env = env or DistEnv()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    mine = out if env.world_size == 1 else _part_path(out, env.rank)
    if env.is_main:
        _check_settings(
            [out] + [_part_path(out, r) for r in range(env.world_size)], settings, start_over
        )
    barrier(env)
    done: set[str] = set()
    for path in [out] + [_part_path(out, r) for r in range(env.world_size)]:
        if path.is_file():
            rows = read_accuracy_dataset(path)
            done.update(_key(r["arch"]) for r in rows)
            lines = [
                line for line in read_text(path, "accuracy dataset").splitlines() if line.strip()
            ]
            if path == mine and len(lines) != len(rows):
                _rewrite_complete(path, rows)  # drop the row cut off by an interruption
    todo = [a for i, a in enumerate(archs) if i % env.world_size == env.rank]
    todo = [a for a in todo if _key(a) not in done]
    supernet.eval()
    bar = tqdm(
        total=len(todo),
        disable=not (progress and env.is_main),
        desc="accuracy dataset",
        dynamic_ncols=True,
    )
    with mine.open("a") as f:
        for arch in todo:
            accuracy = evaluator.evaluate_arch(supernet, arch)
            row = {
                "arch": arch.to_dict(),
                "resolution": arch.r,
                "accuracy": round(accuracy, 4),
                "images": len(evaluator.test_set),  # what the label's precision depends on
                "macs": supernet.macs(arch),
                "params": supernet.params(arch),
            }
            if settings is not None:
                row["measured_with"] = dict(settings)
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
            bar.update(1)
            bar.set_postfix(acc=f"{accuracy:.1f}", r=arch.r)
    bar.close()
    barrier(env)
    if env.world_size > 1 and env.is_main:
        rows = read_accuracy_dataset(out) if out.is_file() else []
        keys = {_key(r["arch"]) for r in rows}
        for rank in range(env.world_size):
            part = _part_path(out, rank)
            if part.is_file():
                for row in read_accuracy_dataset(part):
                    if _key(row["arch"]) not in keys:
                        rows.append(row)
                        keys.add(_key(row["arch"]))
        _rewrite_complete(out, rows)
        for rank in range(env.world_size):
            _part_path(out, rank).unlink(missing_ok=True)
    barrier(env)
    if not env.is_main:
        return []
    asked = {_key(a) for a in archs}  # the file may hold more (an earlier, larger build)
    return [r for r in read_accuracy_dataset(out) if _key(r["arch"]) in asked]


def accuracy_dataset_for_run(
    run_dir: str | os.PathLike,
    data: str | os.PathLike,
    *,
    out: str | os.PathLike | None = None,
    num_archs: int = 1000,
    calibration_images: int | None = None,
    eval_images: int | None = None,
    seed: int = 0,
    device: str | None = None,
    num_workers: int | None = None,
    progress: bool = True,
    start_over: bool = False,
    runtime: str = "torch",
) -> tuple[Path, list[dict[str, Any]]]:
    """Build (or resume) the accuracy dataset of a training run directory, holding its
    lock.

    The run's held-out images are split in two: ``calibration_images`` (default: the
    run's ``bn_recal_images``) re-estimate each sub-network's BN statistics and the rest
    (at most ``eval_images``) measure its accuracy. Returns the file and the rows of the
    ``num_archs`` archs. Rows measured from another supernet or with other numbers of
    images are refused (with ``start_over``: measured again). Under torchrun the archs
    are shared out between ranks. ``runtime`` runs the sub-networks (``"torch"``, or
    ``"onnxruntime"`` on the CPU: the same labels to float rounding, 2.4-3.4x as fast).
    """
    from contextlib import nullcontext

    from ..training.distributed import init_distributed
    from ..training.run_dir import require_run

    require_run(run_dir)  # before its lock would make the folder
    if out is not None:
        check_file_target(out)
    check_whole_number("num_archs", num_archs, 1)
    for name, value in (("calibration_images", calibration_images), ("eval_images", eval_images)):
        if value is not None:
            check_whole_number(name, value, 1)
    if runtime not in RUNTIMES:
        raise ConfigError(f"runtime must be one of {', '.join(RUNTIMES)}, not {runtime!r}")
    env = init_distributed(device)
    if runtime == "onnxruntime":
        from ..storage.onnx_export import require_installed

        if env.device.type != "cpu":
            raise ConfigError(f"runtime onnxruntime measures on the CPU, not on {env.device}")
        require_installed("onnxruntime", "measuring sub-networks with onnxruntime")
    with run_lock(run_dir) if env.is_main else nullcontext():
        return _dataset_for_run(
            run_dir,
            data,
            env,
            out,
            num_archs,
            calibration_images,
            eval_images,
            seed,
            num_workers,
            progress,
            start_over,
            runtime,
        )


def measurement_settings(
    run_dir: str | os.PathLike, calibration_images: int, eval_images: int | None
) -> dict[str, Any]:
    """What the rows of a run's accuracy dataset depend on besides the arch."""
    from ..training.run_dir import supernet_digest

    return {
        "supernet_sha256": supernet_digest(run_dir),
        "calibration_images": calibration_images,
        "eval_images": eval_images or None,
    }


def _dataset_for_run(
    run_dir: str | os.PathLike,
    data: str | os.PathLike,
    env: DistEnv,
    out: str | os.PathLike | None,
    num_archs: int,
    calibration_images: int | None,
    eval_images: int | None,
    seed: int,
    num_workers: int | None,
    progress: bool,
    start_over: bool,
    runtime: str,
) -> tuple[Path, list[dict[str, Any]]]:
    from ..data import split_holdout, subset_for_budget
    from ..training import load_run

    config, net = load_run(run_dir)
    net = net.to(env.device)
    splits = config.open_splits(data)
    calibration_images = calibration_images or config.bn_recal_images
    if calibration_images >= len(splits.holdout):
        raise ConfigError(
            f"calibration_images ({calibration_images}) must be fewer than the run's "
            f"{len(splits.holdout)} held-out images (holdout_size), leaving some to measure on"
        )
    measure, calibration = split_holdout(splits.holdout, calibration_images, config.seed)
    if eval_images:
        measure = subset_for_budget(measure, eval_images, config.seed)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    evaluator = SubnetEvaluator(
        calibration,
        measure,
        calibration_images=calibration_images,
        num_workers=config.num_workers if num_workers is None else num_workers,
        seed=config.seed,
        device=env.device,
        memory_format=memory_format,
        runtime=runtime,
    )
    net = net.to(memory_format=memory_format)
    out = Path(out) if out else RunLayout(run_dir).accuracy_dataset
    archs = dataset_archs(net.space, num_archs, seed)
    settings = measurement_settings(run_dir, calibration_images, eval_images)
    rows = build_accuracy_dataset(
        net,
        evaluator,
        archs,
        out,
        env=env,
        progress=progress,
        settings=settings,
        start_over=start_over,
    )
    return out, rows
