"""``ofa train``, ``ofa acc-dataset``, ``ofa train-predictor``."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Any

from ..errors import ConfigError
from .args import count, device, fraction, positive

CHECK_DATA_HELP = (
    "before anything else, decode every image the run reads and refuse if any does not "
    "(without it, unreadable images are skipped with a warning, up to "
    "max_unreadable_images)"
)


def _cmd_train(args: argparse.Namespace) -> int:
    from ..training import TrainingDiverged, load_config, train
    from ..training.config_files import parse_overrides

    config = load_config(args.config, parse_overrides(args.set))
    if args.fresh and args.resume:
        raise ConfigError("--fresh starts over and --resume continues: choose one")
    if args.check_data:  # before anything is deleted or trained
        checked = config.check_images(args.data)
        if int(os.environ.get("RANK", "0")) == 0:
            print(checked, flush=True)
    if args.fresh and int(os.environ.get("RANK", "0")) == 0:
        from ..training.run_dir import start_over

        start_over(config, args.data, args.out)
    try:
        results = train(
            config,
            args.data,
            args.out,
            stages=args.stage,
            resume=args.resume,
            device=args.device,
            max_steps=args.max_steps,
        )
    except TrainingDiverged as exc:
        print(f"ofa: training stopped: {exc}", file=sys.stderr)
        return 3
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under torchrun, rank 0 reports
    for stage, validation in results.items():
        if stage == "stopped_at":
            print(f"stopped at {validation} (--max-steps); continue with --resume")
            continue
        parts = "  ".join(f"{k} {v:.1f}" for k, v in (validation or {}).items())
        print(f"{stage:10s} test top-1: {parts}")
    print(f"run directory: {args.out}")
    return 0


def _cmd_acc_dataset(args: argparse.Namespace) -> int:
    from ..deploy.steps import accuracy_dataset_step
    from ..storage.run_layout import RunLayout

    dataset = accuracy_dataset_step(
        RunLayout(args.run),
        args.data,
        out=args.out,
        num_archs=args.num_archs,
        calibration_images=args.calibration_images,
        eval_images=args.eval_images,
        seed=args.seed,
        device=args.device,
        runtime=args.runtime,
    )
    if dataset.rows:
        accs = [r["accuracy"] for r in dataset.rows]
        print(
            f"{len(accs)} archs in {dataset.path}: top-1 {min(accs):.2f} to {max(accs):.2f} % "
            f"(mean {sum(accs) / len(accs):.2f})"
        )
    return 0


def _cmd_train_predictor(args: argparse.Namespace) -> int:
    from ..deploy.steps import predictor_step
    from ..predictors import read_accuracy_dataset
    from ..storage.run_layout import RunLayout
    from ..training import load_run

    layout = RunLayout(args.run)
    config, net = load_run(layout.root)
    rows = read_accuracy_dataset(args.dataset or layout.accuracy_dataset)
    kind = args.kind or config.specialize.predictor
    members = args.members or (1 if args.kind else config.specialize.predictor_members)
    fitted = predictor_step(
        layout,
        net.space,
        rows,
        out=args.out,
        val_fraction=args.val_fraction,
        epochs=args.epochs,
        members=members,
        kind=kind,
        seed=args.seed,
    )
    print(f"accuracy predictor: {fitted.report}")
    print(f"wrote {fitted.path}")
    return 0


def _cmd_finetune(args: argparse.Namespace) -> int:
    from ..deploy.finetune_step import finetune_step, finetune_work_dir
    from ..storage.run_layout import RunLayout
    from ..training import TrainingDiverged, load_run
    from ..training.finetune import FinetuneSettings
    from .args import load_arch_text

    if (args.arch is None) == (args.start_from is None):
        raise ConfigError("give --arch (a sub-network of the run) or --from (an export)")
    settings = FinetuneSettings(epochs=args.epochs, lr=args.lr, warmup_epochs=args.warmup_epochs)
    config, supernet = load_run(args.run)
    if args.deterministic:
        config = dataclasses.replace(config, deterministic=True)
    try:
        result = finetune_step(
            supernet,
            config,
            RunLayout(args.run),
            args.out,
            settings,
            data=args.data,
            arch=None if args.arch is None else load_arch_text(args.arch),
            start_from=args.start_from,
            distill=not args.no_distill,
            resume=args.resume,
            device=args.device,
            max_steps=args.max_steps,
            threads=args.threads,
        )
    except TrainingDiverged as exc:
        print(f"ofa: fine-tuning stopped: {exc}", file=sys.stderr)
        return 3
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under torchrun, rank 0 reports
    work = finetune_work_dir(RunLayout(args.run), args.out)
    if result is None:
        print(f"stopped (--max-steps); continue with --resume (checkpoints in {work})")
        return 0
    record = result.metadata["finetune"]
    print(
        f"test top-1 {record['top1_before']:.2f} % -> {record['top1_after']:.2f} % after "
        f"{record['steps']} steps ({args.epochs:g} epochs, lr {args.lr:g})"
    )
    print(f"wrote {result.out_dir} (metrics and checkpoints: {work})")
    return 0


def add_training_commands(sub: Any) -> None:
    from ..evaluation import RUNTIMES
    from ..training.config_files import preset_names

    p = sub.add_parser("train", help="progressive shrinking on a dataset; resumable")
    p.add_argument(
        "--config",
        required=True,
        help=f"YAML file, or a preset: {', '.join(preset_names())}",
    )
    p.add_argument(
        "--data",
        default="fashion-mnist",
        help="'fashion-mnist', a folder of its IDX files, or an ImageNet-style "
        "folder with train/ and val/ (default: %(default)s)",
    )
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument(
        "--stage", action="append", help="run only this stage (repeatable; default: all)"
    )
    p.add_argument(
        "--resume", action="store_true", help="continue from the last complete checkpoint in --out"
    )
    p.add_argument(
        "--fresh",
        action="store_true",
        help="delete the run directory --out and start over (only a run directory)",
    )
    p.add_argument("--device", type=device, help="cpu, cuda (default: cuda when available)")
    p.add_argument("--max-steps", type=positive, help="stop after this many optimiser steps")
    p.add_argument("--check-data", action="store_true", help=CHECK_DATA_HELP)
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field: a top-level key (--set batch_size=32), a stage's "
        "field (--set stages.kernel.lr=0.01) or a specialize setting "
        "(--set specialize.num_targets=2); repeatable",
    )
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "finetune", help="train one sub-network on by itself (distilled), then export it"
    )
    p.add_argument("--run", "--run-dir", dest="run", required=True, help="training run directory")
    p.add_argument("--arch", help="the sub-network: arch JSON, or a file holding it")
    p.add_argument(
        "--from", dest="start_from", help="start from this export folder instead of --arch"
    )
    p.add_argument("--out", required=True, help="the export folder to write")
    p.add_argument("--data", default="fashion-mnist", help="the dataset the run trained on")
    p.add_argument(
        "--epochs", type=float, default=3.0, help="may be fractional (3: docs/benchmarks.md)"
    )
    p.add_argument("--lr", type=float, default=0.005, help="peak, per 64 images")
    p.add_argument("--warmup-epochs", type=float, default=0.0)
    p.add_argument(
        "--no-distill", action="store_true", help="no teacher (the run's largest sub-network)"
    )
    p.add_argument("--resume", action="store_true", help="continue a killed fine-tuning")
    p.add_argument("--device", type=device, help="cpu, cuda (default: cuda when available)")
    p.add_argument(
        "--deterministic",
        action="store_true",
        help="GPU: deterministic kernels only, so that --resume ends bit-identical (slower; "
        "the run's config.yaml may already say so)",
    )
    p.add_argument("--max-steps", type=positive, help="stop after this many optimiser steps")
    p.add_argument("--threads", type=positive, help="CPU threads for the latency measurement")
    p.set_defaults(func=_cmd_finetune)

    p = sub.add_parser(
        "acc-dataset",
        help="measure the accuracy of many sub-networks of a trained supernet (resumable)",
    )
    p.add_argument("--run", "--run-dir", dest="run", required=True, help="training run directory")
    p.add_argument("--data", default="fashion-mnist", help="the dataset the run trained on")
    p.add_argument("--out", help="JSONL file (default: RUN/accuracy_dataset.jsonl)")
    p.add_argument("--num-archs", type=positive, default=1000)
    p.add_argument(
        "--calibration-images",
        type=positive,
        help="held-out images for BN recalibration (default: the run's bn_recal_images)",
    )
    p.add_argument(
        "--eval-images", type=positive, help="held-out images to measure on (default: the rest)"
    )
    p.add_argument("--seed", type=count, default=0)
    p.add_argument("--device", type=device, help="cpu, cuda (default: cuda when available)")
    p.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default="torch",
        help="what runs each sub-network: torch, or onnxruntime (CPU; same labels to float "
        "rounding, 2.4-3.4x as fast per arch)",
    )
    p.set_defaults(func=_cmd_acc_dataset)

    p = sub.add_parser("train-predictor", help="fit the accuracy predictor on the dataset")
    p.add_argument("--run", "--run-dir", dest="run", required=True, help="training run directory")
    p.add_argument("--dataset", help="JSONL file (default: RUN/accuracy_dataset.jsonl)")
    p.add_argument("--out", help="predictor file (default: RUN/accuracy_predictor.pt)")
    p.add_argument(
        "--val-fraction", type=fraction, default=0.2, help="rows held out to validate the fit"
    )
    p.add_argument("--epochs", type=positive, default=300)
    p.add_argument(
        "--kind",
        choices=("mlp", "linear"),
        help="linear (ridge) or mlp (the paper's); default: the run's specialize.predictor",
    )
    p.add_argument(
        "--members",
        type=positive,
        help="MLPs averaged in the predictor (1: the paper's; default: the run's "
        "specialize.predictor_members)",
    )
    p.add_argument("--seed", type=count, default=0)
    p.set_defaults(func=_cmd_train_predictor)
