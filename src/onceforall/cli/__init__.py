"""The ``ofa`` command: parses arguments, calls the library, prints. Nothing else."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

import torch

from .. import __version__
from ..arch import ArchError
from ..deploy.report import arch_summary, format_table, profile_subnets, spread_archs
from ..errors import OnceForAllError
from ..models import create_supernet, list_supernets
from ..storage.atomic import check_file_target, write_text_atomic
from .args import count, load_arch_text, positive
from .deploy import add_deploy_commands
from .latency import add_latency_commands
from .predict import add_predict_commands
from .train import add_training_commands


def _supernet_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--supernet",
        default="ofa_mbv3_w1.0",
        choices=list_supernets(),
        help="registered supernet (default: %(default)s)",
    )
    parser.add_argument("--num-classes", type=positive, default=1000)


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
    if args.json:
        check_file_target(args.json)  # now, not after the profiling
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
        write_text_atomic(args.json, json.dumps(records, indent=1))
        print(f"wrote {args.json}")
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    supernet = create_supernet(args.supernet, num_classes=args.num_classes)
    arch = supernet.parse_arch(load_arch_text(args.arch))
    print(f"arch     {arch.to_json()}")
    print(f"summary  {arch_summary(supernet.space, arch)}")
    print(f"MACs     {supernet.macs(arch) / 1e6:.2f} M at {arch.r}x{arch.r}")
    print(f"params   {supernet.params(arch) / 1e6:.3f} M")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ofa",
        description="Once-for-All supernets: train once, specialise for each device, export.",
        epilog="An error the input causes is printed in one line (ofa: ...) with exit status "
        "2; --debug, or the environment variable OFA_DEBUG=1, shows its traceback instead.",
    )
    parser.add_argument("--version", action="version", version=f"onceforall {__version__}")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="raise errors with their traceback instead of printing them in one line "
        "(also: OFA_DEBUG=1); give it before the command: ofa --debug train ...",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="registered supernets and the size of their spaces")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser(
        "profile", help="extract sub-networks from smallest to largest; MACs, params, latency"
    )
    _supernet_arg(p)
    p.add_argument(
        "--num-random",
        type=count,
        default=3,
        help="random sub-networks between smallest and largest",
    )
    p.add_argument("--seed", type=count, default=0)
    p.add_argument("--threads", type=positive, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--batch-size", type=positive, default=1)
    p.add_argument("--repeats", type=positive, default=20)
    p.add_argument("--no-latency", action="store_true", help="skip latency measurement")
    p.add_argument("--json", help="also write the rows to this JSON file")
    p.set_defaults(func=_cmd_profile)

    add_training_commands(sub)
    add_latency_commands(sub)
    add_deploy_commands(sub)
    add_predict_commands(sub)

    p = sub.add_parser("inspect", help="validate an arch (JSON text or file); MACs and params")
    _supernet_arg(p)
    p.add_argument("arch", help="arch JSON, or a file holding it")
    p.set_defaults(func=_cmd_inspect)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    debug = args.debug or os.environ.get("OFA_DEBUG", "") not in ("", "0")
    try:
        return args.func(args)
    except OnceForAllError as exc:  # every error a user can cause: one line, no traceback
        if debug:
            raise
        prefix = "invalid architecture: " if isinstance(exc, ArchError) else ""
        print(f"ofa: {prefix}{_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if debug:
            raise
        print("ofa: interrupted", file=sys.stderr)
        return 130


def _one_line(exc: BaseException) -> str:
    """The message of ``exc`` in one line (a message quoting another library's error
    may hold several)."""
    return " ".join(line.strip() for line in str(exc).splitlines() if line.strip())


if __name__ == "__main__":
    sys.exit(main())
