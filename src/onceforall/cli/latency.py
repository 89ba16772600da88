"""``ofa latency-table`` (on this device, or from a bundle's results) and
``ofa latency-bundle`` (models and a runner for a device without PyTorch)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..storage.atomic import check_folder_target
from ..storage.run_layout import RunLayout
from .args import positive, resolution

__all__ = ["add_latency_commands"]


def _cmd_latency_table(args: argparse.Namespace) -> int:
    from ..deploy.run_inputs import run_table_path
    from ..deploy.steps import latency_table_step
    from ..models import create_supernet
    from ..training import load_run

    if args.from_bundle:
        return _table_from_bundle(args)
    authors = args.format == "authors"
    if authors and not args.out:
        raise ConfigError("--format authors writes a folder of YAML files; name it with --out")
    if authors:  # a folder of YAML files: refused now if it cannot be one, not after timing
        check_folder_target(args.out)
    if args.run:
        config, supernet = load_run(args.run)
        backend = args.backend or config.specialize.latency_backend
        default = run_table_path(RunLayout(args.run), config, backend)
    else:
        sizes = {"resolutions": args.resolutions} if args.resolutions else {}
        supernet = create_supernet(args.supernet, num_classes=args.num_classes, **sizes)
        backend, default = args.backend or "torch", None
    # In the authors' format the table is also kept as ours: in the run, else in --out.
    out = (default or Path(args.out) / "latency_table.json") if authors else args.out or default
    if not out:
        raise ConfigError("--out is required without --run")
    result = latency_table_step(
        supernet,
        out,
        reuse=authors and not args.extend,  # convert a table measured before
        extend=args.extend,
        backend=backend,
        threads=args.threads,
        batch_size=args.batch_size,
        resolutions=args.resolutions,
        repeats=args.repeats,
        run=RunLayout(args.run) if args.run else None,
    )
    _print_table(result, supernet)
    if authors:
        _write_authors_tables(result.table, supernet, args.out)
    return 0


def _print_table(result: Any, supernet: Any) -> None:
    table = result.table
    # at the sizes the table covers (--resolutions may be fewer than the supernet's)
    smallest = supernet.space.smallest(min(table.resolutions))
    largest = supernet.space.largest(max(table.resolutions))
    print(f"latency table {table.describe()}")
    print(
        f"{len(table.entries)} entries, timed in {table.build_seconds:.0f} s, calibration "
        f"error {table.calibration_error:.1%}; predicted smallest "
        f"{table.predict(smallest):.2f} ms, largest {table.predict(largest):.2f} ms"
    )
    print(f"{'reused' if result.reused else 'wrote'} {result.path}")


def _write_authors_tables(table: Any, supernet: Any, folder: str) -> None:
    from ..compat.latency_tables import write_authors_tables

    files = write_authors_tables(table, supernet, folder)
    names = ", ".join(f.name for f in files)
    print(f"wrote the authors' lookup-table format to {folder}: {names}")


def _table_from_bundle(args: argparse.Namespace) -> int:
    from ..deploy.latency_steps import latency_table_from_bundle_step
    from ..training import load_run

    if not args.run:
        raise ConfigError("--from-bundle needs --run: the run that made the bundle")
    if args.extend:
        raise ConfigError("--from-bundle makes a whole table; --extend does not apply")
    authors = args.format == "authors"
    if authors and not args.out:
        raise ConfigError("--format authors writes a folder of YAML files; name it with --out")
    _, supernet = load_run(args.run)
    run = RunLayout(args.run)
    out = None if authors else args.out
    result = latency_table_from_bundle_step(
        supernet, args.from_bundle, run, out, statistic=args.statistic
    )
    _print_table(result, supernet)
    if authors:
        _write_authors_tables(result.table, supernet, args.out)
    return 0


def _cmd_latency_bundle(args: argparse.Namespace) -> int:
    from ..deploy.latency_steps import latency_bundle_step
    from ..training import load_run

    _, supernet = load_run(args.run)
    info = latency_bundle_step(
        supernet,
        args.out,
        RunLayout(args.run),
        backend=args.backend,
        resolutions=args.resolutions,
        batch_size=args.batch_size,
        repeats=args.repeats,
        calibration_archs=args.calibration_archs,
    )
    print(
        f"wrote {info.path}: {info.models} models, {info.size_bytes / 1e6:.1f} MB (manifest "
        f"{info.sha256[:12]}, kept in {RunLayout(args.run).latency_bundles})"
    )
    print("on the device (Python 3.8+ with numpy and onnxruntime, no PyTorch):")
    print(f"  unzip {info.path.name} -d ofa-bundle && cd ofa-bundle")
    print("  python measure.py --out results.json      (python measure.py --help: Android, boards)")
    print("then here:")
    print(f"  ofa latency-table --run {args.run} --from-bundle results.json")
    return 0


def add_latency_commands(sub: Any) -> None:
    from ..latency.bundle import BUNDLE_BACKENDS
    from ..latency.measure import BACKENDS

    p = sub.add_parser("latency-table", help="measure per-block latencies on this device")
    p.add_argument(
        "--run",
        "--run-dir",
        dest="run",
        help="training run directory (its supernet and resolutions)",
    )
    p.add_argument("--supernet", default="ofa_mbv3_w1.0", help="without --run")
    p.add_argument("--num-classes", type=positive, default=1000, help="without --run")
    p.add_argument("--resolutions", type=resolution, nargs="+", help="default: the supernet's")
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        help="the runtime to time on (default: with --run, the run's "
        "specialize.latency_backend; else torch). A run keeps one table per backend",
    )
    p.add_argument("--threads", type=positive, help="intra-op threads (default: the backend's)")
    p.add_argument("--batch-size", type=positive, default=1)
    p.add_argument("--repeats", type=positive, default=30)
    p.add_argument("--extend", action="store_true", help="only measure what --out lacks")
    p.add_argument(
        "--format",
        choices=("onceforall", "authors"),
        default="onceforall",
        help="authors: also write the authors' <r>_lookup_table.yaml files into the folder "
        "--out (a table the run already has is converted, not measured again)",
    )
    p.add_argument(
        "--from-bundle",
        metavar="RESULTS",
        help="make the table from the results file of a latency bundle this run made "
        "(measure.py --out), timed on another device (needs --run)",
    )
    p.add_argument(
        "--statistic",
        choices=("median", "min"),
        default="median",
        help="with --from-bundle: of each model's timed rounds",
    )
    p.add_argument(
        "--out",
        help="JSON file (default: RUN/latency_table.json for the run's own backend, "
        "RUN/latency_tables/BACKEND.json for another)",
    )
    p.set_defaults(func=_cmd_latency_table)

    p = sub.add_parser(
        "latency-bundle",
        help="models and a stand-alone runner to time a latency table on another device",
    )
    p.add_argument("--run", "--run-dir", dest="run", required=True, help="training run directory")
    p.add_argument("--backend", choices=BUNDLE_BACKENDS, default="onnxruntime")
    p.add_argument("--resolutions", type=resolution, nargs="+", help="default: the supernet's")
    p.add_argument("--batch-size", type=positive, default=1)
    p.add_argument("--repeats", type=positive, default=30, help="the runner's default rounds")
    p.add_argument(
        "--calibration-archs",
        type=positive,
        default=12,
        help="whole networks timed per resolution to calibrate the table",
    )
    p.add_argument("--out", required=True, help="the bundle (a zip file)")
    p.set_defaults(func=_cmd_latency_bundle)
