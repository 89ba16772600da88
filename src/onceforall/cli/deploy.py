"""``ofa search``, ``ofa specialize``, ``ofa export``, ``ofa run``."""

from __future__ import annotations

import argparse
from typing import Any

from ..deploy.quantized import MIN_AGREEMENT
from ..deploy.report import arch_summary, format_runtimes, format_table
from ..errors import ConfigError
from ..storage.run_layout import RunLayout
from .args import count, device, fraction, load_arch_text, positive, resolution

EXPORT_BACKENDS = (
    "onnxruntime",
    "onnxruntime-int8",
    "openvino",
    "openvino-int8",
    "litert",
    "litert-int8",
)  # the model files an export can hold


def _predictor_and_table(args: argparse.Namespace, config: Any, supernet: Any) -> tuple[Any, Any]:
    """The run's predictor and latency table (``--predictor``, ``--latency-table``,
    ``--backend``)."""
    from ..deploy.run_inputs import load_predictor_and_table, targets_need_latency

    return load_predictor_and_table(
        RunLayout(args.run),
        supernet,
        predictor_path=args.predictor,
        table_path=args.latency_table,
        need_table=targets_need_latency(args.target),
        backend=args.backend,
        config=config,
    )


def _cmd_search(args: argparse.Namespace) -> int:
    from ..deploy.steps import search_step
    from ..training import load_run

    config, supernet = load_run(args.run)
    predictor, table = _predictor_and_table(args, config, supernet)
    results = search_step(
        supernet,
        predictor,
        args.target,
        latency_table=table,
        random=args.random,
        population=args.population,
        generations=args.generations,
        seed=args.seed,
        out=args.out,
    )
    rows = [
        (
            r.target,
            arch_summary(supernet.space, r.arch),
            f"{r.predicted_accuracy:.2f}",
            f"{r.costs['macs'] / 1e6:.1f}",
            f"{r.costs['params'] / 1e6:.2f}",
            f"{r.costs['latency_ms']:.2f}" if "latency_ms" in r.costs else "-",
            f"{r.wall_time_s:.2f}",
        )
        for r in results
    ]
    headers = ("target", "arch", "pred. top-1", "MMACs", "Mparams", "table ms", "search s")
    print(format_table(headers, rows))
    searched = results[0].resolutions if results else ()
    if searched and tuple(searched) != tuple(supernet.space.resolutions):
        listed = ", ".join(map(str, searched))
        print(f"searched resolutions {listed}: those the predictor and the table cover")
    if args.out:
        print(f"wrote {args.out}")
    return 0


def _cmd_specialize(args: argparse.Namespace) -> int:
    from ..deploy.run_inputs import evaluator_for_run
    from ..deploy.specialize import format_specialized
    from ..deploy.steps import specialize_step
    from ..training import load_run

    config, supernet = load_run(args.run)
    predictor, table = _predictor_and_table(args, config, supernet)
    result = specialize_step(
        RunLayout(args.run),
        supernet,
        predictor,
        args.target,
        evaluator=evaluator_for_run(config, args.data),
        latency_table=table,
        random_baseline=args.random_baseline,
        seed=args.seed,
        population=args.population,
        generations=args.generations,
        out=args.out,
    )
    print(format_specialized(supernet.space, result.chosen))
    print(f"wrote {result.path}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from ..deploy.run_inputs import evaluator_for_run
    from ..deploy.steps import export_step
    from ..training import load_run

    backends = set(args.backend or ["onnxruntime"])
    if args.no_onnx and args.backend:
        raise ConfigError("--no-onnx writes the weights only; it cannot go with --backend")
    config, supernet = load_run(args.run)
    arch = supernet.parse_arch(load_arch_text(args.arch))
    # The same calibration and test images as `ofa specialize`: the same accuracy.
    result = export_step(
        supernet,
        arch,
        args.out,
        evaluator=evaluator_for_run(config, args.data),
        onnx=not args.no_onnx,
        threads=args.threads,
        run=RunLayout(args.run),
        runtimes=sorted(backends),
        int8_min_agreement=args.int8_min_agreement,
    )
    top1 = "-" if result.top1 is None else f"{result.top1:.2f} %"
    print(
        f"{arch_summary(supernet.space, arch)}: test top-1 {top1}, "
        f"{result.macs / 1e6:.1f} MMACs, {result.params / 1e6:.2f} M params, "
        f"{result.latency_ms:.2f} ms on this CPU (PyTorch)"
    )
    for name, record in result.metadata["runtimes"].items():
        top1 = "-" if record["top1"] is None else f"{record['top1']:.2f} %"
        agreement = record.get("agreement_top1")
        agrees = "" if agreement is None else f", agrees with FP32 on {agreement:.1%}"
        print(
            f"  {name}: {record['runtime']} {record['precision']}, "
            f"{record['latency_ms']:.2f} ms, test top-1 {top1}{agrees}"
        )
    files = ", ".join(sorted(result.metadata["files"]))
    print(f"wrote {result.out_dir} ({files}, metadata.json)")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from ..deploy.pipeline import run_pipeline
    from ..deploy.specialize import format_specialized
    from ..training import load_config
    from ..training.config_files import parse_overrides

    config = load_config(args.config, parse_overrides(args.set))
    summary = run_pipeline(
        config,
        args.data,
        args.out,
        fresh=args.fresh,
        device=args.device,
        predictor=args.predictor,
        latency_table=args.latency_table,
        check_data=args.check_data,
    )
    print()
    print(format_specialized(summary.space, summary.chosen))
    print(
        "top-1: test split after BN recalibration; random top-1: mean of random "
        "sub-networks meeting the same target; latency: measured on this device"
    )
    runtimes = format_runtimes(summary.exports)
    if runtimes:
        print("\nthe exports' model files on this CPU (batch 1, ms; test top-1, %):")
        print(runtimes)
    if summary.plot:
        print(f"Pareto plot: {summary.plot}")
    for path in summary.exports:
        print(f"exported: {path}")
    if summary.took:
        print(f"took on this machine: {summary.took_line}")
    return 0


def _cmd_import_subnet(args: argparse.Namespace) -> int:
    from ..compat.specialized import import_reference_subnet

    result = import_reference_subnet(
        args.net_config,
        args.weights,
        args.out,
        args.resolution,
        onnx=not args.no_onnx,
        threads=args.threads,
    )
    meta = result.metadata
    print(f"{meta['supernet']} sub-network {result.arch}")
    print(
        f"MACs {result.macs / 1e6:.1f}M  params {result.params / 1e6:.2f}M  "
        f"latency {result.latency_ms:.2f} ms on this CPU"
    )
    print(f"exported: {result.out_dir}")
    return 0


def _cmd_import_reference(args: argparse.Namespace) -> int:
    from ..compat.checkpoints import import_reference

    run = import_reference(args.path, args.name, args.out, config=args.config)
    print(f"imported {args.path} ({args.name}) into the run directory {run}")
    return 0


def _run_args(p: argparse.ArgumentParser) -> None:
    from ..latency.measure import BACKENDS

    p.add_argument("--run", "--run-dir", dest="run", required=True, help="training run directory")
    p.add_argument(
        "--predictor",
        help="default: RUN/accuracy_predictor.pt; the authors' .pth files are read as they are",
    )
    p.add_argument(
        "--latency-table",
        help="default: RUN/latency_table.json; or a folder of the authors' "
        "<r>_lookup_table.yaml files (e.g. their note10/)",
    )
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        help="search (and measure) on the run's latency table of this runtime "
        "(ofa latency-table --backend); default: the run's own table",
    )
    p.add_argument(
        "--target",
        action="append",
        required=True,
        help="constraints, e.g. 'latency_ms<=5' or 'macs<=20M,params<=3M' (repeatable)",
    )
    p.add_argument("--generations", type=count, default=500)
    p.add_argument("--population", type=positive, default=100, help="search population")
    p.add_argument("--seed", type=count, default=0)


def add_deploy_commands(sub: Any) -> None:
    from .train import CHECK_DATA_HELP

    p = sub.add_parser("search", help="best predicted sub-network per target (no measuring)")
    _run_args(p)
    p.add_argument("--random", action="store_true", help="random search (baseline)")
    p.add_argument("--out", help="write the chosen archs to this JSON file")
    p.set_defaults(func=_cmd_search)

    p = sub.add_parser(
        "specialize", help="search per target, then measure accuracy and latency for real"
    )
    _run_args(p)
    p.add_argument("--data", default="fashion-mnist", help="the dataset the run trained on")
    p.add_argument("--random-baseline", type=count, default=5, help="random archs per target")
    p.add_argument("--out", help="JSON file (default: RUN/specialized.json)")
    p.set_defaults(func=_cmd_specialize)

    p = sub.add_parser("export", help="a sub-network as safetensors + ONNX, with metadata")
    p.add_argument("--run", "--run-dir", dest="run", required=True, help="training run directory")
    p.add_argument("--data", default="fashion-mnist", help="the dataset the run trained on")
    p.add_argument("--arch", required=True, help="arch JSON, or a file holding it")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--threads", type=positive, help="CPU threads for the latency measurement")
    p.add_argument(
        "--backend",
        action="append",
        choices=EXPORT_BACKENDS,
        help="a runtime's model file to write beside the safetensors weights (repeatable): "
        "onnxruntime (model.onnx, the default), onnxruntime-int8 (model.int8.onnx, "
        "ONNX Runtime's quantizer), openvino (model.xml and model.bin), openvino-int8 "
        "(model.int8.xml/.bin, NNCF's quantizer), litert (model.tflite) and litert-int8 "
        "(model.int8.tflite, litert-torch's quantizer); INT8 models "
        "are calibrated on the run's held-out images; each file is checked before it is "
        "kept",
    )
    p.add_argument(
        "--int8-min-agreement",
        type=fraction,
        default=MIN_AGREEMENT,
        help="refuse the INT8 model unless it predicts the FP32 network's class on at "
        f"least this share of the held-out images it was not calibrated on (default "
        f"{MIN_AGREEMENT})",
    )
    p.add_argument("--no-onnx", action="store_true", help="the safetensors weights only")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser(
        "import-reference", help="a supernet checkpoint saved by the authors' ofa package"
    )
    p.add_argument("path", help="their .pth file (read with weights_only: no code runs)")
    p.add_argument(
        "--name", required=True, help="their supernet name, e.g. ofa_mbv3_d234_e346_k357_w1.0"
    )
    p.add_argument("--out", required=True, help="run directory to create")
    p.add_argument(
        "--config",
        help="preset or YAML for data settings (default: imagenet, or imagenet-resnet50)",
    )
    p.set_defaults(func=_cmd_import_reference)

    p = sub.add_parser(
        "import-subnet",
        help="a specialised net of the authors (net.config + weights) as an export folder",
    )
    p.add_argument("net_config", help="their net.config JSON")
    p.add_argument("weights", help="their weights file, e.g. 'init' (read with weights_only)")
    p.add_argument(
        "--resolution",
        type=resolution,
        required=True,
        help="input size the net was specialised for (image_size in their run.config)",
    )
    p.add_argument("--out", required=True, help="export folder to write")
    p.add_argument("--threads", type=positive, help="CPU threads for the latency measurement")
    p.add_argument("--no-onnx", action="store_true")
    p.set_defaults(func=_cmd_import_subnet)

    p = sub.add_parser(
        "run", help="the whole job: train, accuracy dataset, predictor, latency, specialise, export"
    )
    p.add_argument("--config", required=True, help="YAML file or preset")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--fresh", action="store_true", help="delete --out and start over")
    p.add_argument("--device", type=device, help="cpu, cuda (default: cuda when available)")
    p.add_argument("--check-data", action="store_true", help=CHECK_DATA_HELP)
    p.add_argument(
        "--predictor",
        help="use this accuracy predictor (ours, or the authors' .pth as it ships) instead of "
        "measuring an accuracy dataset and fitting one",
    )
    p.add_argument(
        "--latency-table",
        help="use this latency table (ours, or a folder of the authors' YAML tables) instead "
        "of timing one on this device",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, as for ofa train (stages.NAME.FIELD, specialize.KEY)",
    )
    p.set_defaults(func=_cmd_run)
