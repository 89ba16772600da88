"""``ofa predict`` (what a predictor and a latency table say of one arch) and
``ofa export-predictor`` (our predictor in the authors' file format)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..storage.run_layout import RunLayout
from .args import load_arch_text


def _cmd_predict(args: argparse.Namespace) -> int:
    from ..deploy.report import arch_summary
    from ..deploy.run_inputs import load_predictor_and_table
    from ..training import load_run

    _, supernet = load_run(args.run)
    predictor, table = load_predictor_and_table(
        RunLayout(args.run),
        supernet,
        predictor_path=args.predictor,
        table_path=args.latency_table,
    )
    arch = supernet.parse_arch(load_arch_text(args.arch))
    record = {
        "predicted_accuracy": float(predictor.predict([arch])[0]),
        "macs": int(supernet.macs(arch)),
        "params": int(supernet.params(arch)),
        "latency_ms": None if table is None else float(table.predict(arch)),
    }
    if args.json:
        print(json.dumps(record))
        return 0
    latency = "-" if table is None else f"{record['latency_ms']:.3f} ms"
    print(f"arch             {arch_summary(supernet.space, arch)}  {arch.to_json()}")
    print(f"predicted top-1  {record['predicted_accuracy']:.3f} %  ({predictor.describe()})")
    print(f"MACs             {record['macs'] / 1e6:.2f} M at {arch.r}x{arch.r}")
    print(f"params           {record['params'] / 1e6:.3f} M")
    print(f"latency          {latency}" + ("" if table is None else f"  ({table.describe()})"))
    return 0


def _cmd_export_predictor(args: argparse.Namespace) -> int:
    from ..compat.predictors import write_authors_predictor
    from ..predictors import AccuracyPredictor

    if not (args.predictor or args.run):
        raise ConfigError("export-predictor needs the predictor: give --run or --predictor")
    source = Path(args.predictor or RunLayout(args.run).accuracy_predictor)
    predictor = AccuracyPredictor.load(source)
    out = write_authors_predictor(predictor, args.out)
    print(
        f"wrote {out}: {source} as the authors' tutorial predictor (an nn.Sequential state "
        "dict, 128 features, top-1 as a fraction)"
    )
    return 0


def add_predict_commands(sub: Any) -> None:
    p = sub.add_parser(
        "predict", help="predicted top-1, MACs, params and table latency of one arch"
    )
    p.add_argument("--run", "--run-dir", dest="run", required=True, help="run directory")
    p.add_argument("--arch", required=True, help="arch JSON, or a file holding it")
    p.add_argument(
        "--predictor",
        help="default: RUN/accuracy_predictor.pt; the authors' .pth files are read as they are",
    )
    p.add_argument(
        "--latency-table",
        help="default: RUN/latency_table.json if present; or a folder of the authors' "
        "<r>_lookup_table.yaml files",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser(
        "export-predictor", help="our accuracy predictor as the authors' predictor file"
    )
    p.add_argument("--run", "--run-dir", dest="run", help="run directory (its predictor)")
    p.add_argument("--predictor", help="predictor file (default: RUN/accuracy_predictor.pt)")
    p.add_argument("--out", required=True, help="file to write, e.g. acc_predictor.pth")
    p.set_defaults(func=_cmd_export_predictor)
