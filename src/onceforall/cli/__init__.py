"""The ``ofa`` command: parses arguments, calls the library, prints. Nothing else."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Sequence

import torch

from . import __version__
from .arch import ArchError
from .models import create_supernet, list_supernets
from .report import arch_summary, format_table, profile_subnets, spread_archs


def _supernet_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--supernet",
        default="ofa_mbv3_w1.0",
        choices=list_supernets(),
        help="registered supernet (default: %(default)s)",
    )
    parser.add_argument("--num-classes", type=int, default=1000)


def _cmd_list(args: argparse.Namespace) -> int:
    rows = []
    for name in list_supernets():
        space = create_supernet(name).space
        rows.append(
            (
                name,
                f"{space.num_subnets(with_resolution=False):.2e}",
                f"{space.resolutions[0]}..{space.resolutions[-1]}",
            )
        )
    print(format_table(("supernet", "sub-networks", "resolutions"), rows))
    return 0


def _cmd_profile(args: argparse.Namespace) -> int:
    torch.manual_seed(args.seed)
    supernet = create_supernet(args.supernet, num_classes=args.num_classes).eval()
    archs = spread_archs(supernet, num_random=args.num_random, seed=args.seed)
    profiles = profile_subnets(
        supernet,
        archs,
        latency=not args.no_latency,
        batch_size=args.batch_size,
        threads=args.threads,
        repeats=args.repeats,
    )
    threads = args.threads or torch.get_num_threads()
    print(
        f"{args.supernet}: {len(profiles)} sub-networks, smallest to largest; latency is "
        f"the median of {args.repeats} eval-mode runs, batch {args.batch_size}, "
        f"CPU, {threads} threads"
    )
    rows = [
        (
            arch_summary(supernet.space, p.arch),
            f"{p.macs / 1e6:.1f}",
            f"{p.params / 1e6:.2f}",
            "-" if p.latency_ms is None else f"{p.latency_ms:.1f}",
        )
        for p in profiles
    ]
    print(format_table(("arch", "MMACs", "Mparams", "latency ms"), rows))
    if args.json:
        records = [
            {
                "arch": p.arch.to_dict(),
                "macs": p.macs,
                "params": p.params,
                "latency_ms": p.latency_ms,
            }
            for p in profiles
        ]
        Path(args.json).write_text(json.dumps(records, indent=1))
        print(f"wrote {args.json}")
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    supernet = create_supernet(args.supernet, num_classes=args.num_classes)
    path = Path(args.arch)
    if path.is_file():
        text = path.read_text()
    elif args.arch.lstrip().startswith("{"):
        text = args.arch
    else:
        print(f"ofa: {args.arch!r} is neither a file nor arch JSON text", file=sys.stderr)
        return 2
    arch = supernet.parse_arch(text)
    print(f"arch     {arch.to_json()}")
    print(f"summary  {arch_summary(supernet.space, arch)}")
    print(f"MACs     {supernet.macs(arch) / 1e6:.2f} M at {arch.r}x{arch.r}")
    print(f"params   {supernet.params(arch) / 1e6:.3f} M")
    return 0


def _parse_overrides(pairs: Sequence[str]) -> dict:
    import yaml

    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"ofa: --set expects KEY=VALUE, got {pair!r}")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def _cmd_train(args: argparse.Namespace) -> int:
    from .training import TrainingDiverged, load_config, train

    config = load_config(args.config, **_parse_overrides(args.set))
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
    from .predictors import accuracy_dataset_for_run

    out, rows = accuracy_dataset_for_run(
        args.run,
        args.data,
        out=args.out,
        num_archs=args.num_archs,
        calibration_images=args.calibration_images,
        eval_images=args.eval_images,
        seed=args.seed,
        device=args.device,
    )
    if rows:
        accs = [r["accuracy"] for r in rows]
        print(
            f"{len(rows)} archs in {out}: top-1 {min(accs):.2f} to {max(accs):.2f} % "
            f"(mean {sum(accs) / len(accs):.2f})"
        )
    return 0


def _cmd_train_predictor(args: argparse.Namespace) -> int:
    from .predictors import fit_accuracy_predictor, read_accuracy_dataset
    from .training import load_run

    _, net = load_run(args.run)
    dataset = Path(args.dataset or Path(args.run) / "accuracy_dataset.jsonl")
    rows = read_accuracy_dataset(dataset)
    predictor, report = fit_accuracy_predictor(
        net.space,
        [r["arch"] for r in rows],
        [r["accuracy"] for r in rows],
        val_fraction=args.val_fraction,
        epochs=args.epochs,
        seed=args.seed,
    )
    out = predictor.save(args.out or Path(args.run) / "accuracy_predictor.pt")
    print(f"accuracy predictor: {report}")
    print(f"wrote {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ofa", description="Once-for-All supernets: build, inspect, profile."
    )
    parser.add_argument("--version", action="version", version=f"onceforall {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="registered supernets and the size of their spaces")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser(
        "profile", help="extract sub-networks from smallest to largest; MACs, params, latency"
    )
    _supernet_arg(p)
    p.add_argument(
        "--num-random", type=int, default=3, help="random sub-networks between smallest and largest"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--no-latency", action="store_true", help="skip latency measurement")
    p.add_argument("--json", help="also write the rows to this JSON file")
    p.set_defaults(func=_cmd_profile)

    p = sub.add_parser("train", help="progressive shrinking on a dataset; resumable")
    p.add_argument(
        "--config",
        required=True,
        help="YAML file, or a preset: imagenet, fashion-mnist, fashion-mnist-quick",
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
    p.add_argument("--device", help="cpu, cuda (default: cuda when available)")
    p.add_argument("--max-steps", type=int, help="stop after this many optimiser steps")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set batch_size=32",
    )
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "acc-dataset",
        help="measure the accuracy of many sub-networks of a trained supernet (resumable)",
    )
    p.add_argument("--run", required=True, help="training run directory")
    p.add_argument("--data", default="fashion-mnist", help="the dataset the run trained on")
    p.add_argument("--out", help="JSONL file (default: RUN/accuracy_dataset.jsonl)")
    p.add_argument("--num-archs", type=int, default=1000)
    p.add_argument(
        "--calibration-images",
        type=int,
        help="held-out images for BN recalibration (default: the run's bn_recal_images)",
    )
    p.add_argument(
        "--eval-images", type=int, help="held-out images to measure on (default: the rest)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help="cpu, cuda (default: cuda when available)")
    p.set_defaults(func=_cmd_acc_dataset)

    p = sub.add_parser("train-predictor", help="fit the accuracy predictor on the dataset")
    p.add_argument("--run", required=True, help="training run directory")
    p.add_argument("--dataset", help="JSONL file (default: RUN/accuracy_dataset.jsonl)")
    p.add_argument("--out", help="predictor file (default: RUN/accuracy_predictor.pt)")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_train_predictor)

    p = sub.add_parser("inspect", help="validate an arch (JSON text or file); MACs and params")
    _supernet_arg(p)
    p.add_argument("arch", help="arch JSON, or a file holding it")
    p.set_defaults(func=_cmd_inspect)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ArchError as exc:
        print(f"ofa: invalid architecture: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
