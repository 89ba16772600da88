"""Fine-tuning the chosen sub-networks, against the same networks trained from scratch.

For every sub-network a run chose (``RUN/specialized.json``), with the run's data:
test top-1 after BN recalibration only, after fine-tuning (``ofa finetune``'s recipe:
distillation from the run's largest sub-network) for each ``--finetune`` setting, and
after training the same architecture from random weights, alone, for each
``--scratch`` setting (by default as many epochs as the whole supernet run took in
sub-network passes: the paper's claim is that OFA's sub-networks match or beat networks
trained alone); ``--no-finetune`` and ``--no-scratch`` leave one kind out. Every result
is appended to ``--results`` (JSON lines) as soon as it is measured, and every training
resumes from its checkpoints, so a killed benchmark goes on where it stopped when started
again. ``--archs-from`` takes the architectures of an earlier results file instead of
the run's winners (a run trained again, say); where the run's folder is gone,
``--config`` with ``--archs-from`` trains them from scratch under that config (scratch
training needs no supernet weights).

    OMP_NUM_THREADS=2 .venv/bin/python bench/finetune_recipe.py --run runs/demo \\
        --finetune 1:0.005 3:0.005 --no-scratch --results bench/results/finetune_demo.jsonl
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from onceforall.deploy.run_inputs import evaluator_for_run
from onceforall.evaluation import recalibrate_bn
from onceforall.storage.run_layout import RunLayout
from onceforall.training import load_config, load_run
from onceforall.training.distributed import parse_device
from onceforall.training.finetune import FinetuneSettings, finetune
from onceforall.training.run_dir import build_supernet


def supernet_passes(config) -> float:
    """Epochs of sub-network passes the supernet's training took (epochs x sub-networks
    per step, summed over the stages)."""
    return sum(stage.epochs * stage.subnets_per_step for stage in config.stages)


def settings(text: str, warmup: float) -> FinetuneSettings:
    epochs, lr = (float(v) for v in text.split(":"))
    return FinetuneSettings(epochs=epochs, lr=lr, warmup_epochs=min(warmup, epochs / 2))


def earlier_archs(results: str) -> list[dict]:
    """One row per target of an earlier results file: its target, arch and the extracted
    network's top-1, as ``RUN/specialized.json`` gives them."""
    rows = {}
    for line in Path(results).read_text().splitlines():
        row = json.loads(line)
        rows.setdefault(
            row["target"],
            {
                "target": row["target"],
                "arch": row["arch"],
                "measured_accuracy": row["top1_bn_recalibrated"],
            },
        )
    return list(rows.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--run", help="the run whose chosen sub-networks to train")
    where.add_argument("--config", help="a preset or YAML: scratch only, with --archs-from")
    parser.add_argument(
        "--archs-from", help="results JSON lines to take the archs from (not RUN's winners)"
    )
    parser.add_argument("--device", help="cpu, cuda (default: cuda when available)")
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--finetune", nargs="+", default=["1:0.005", "3:0.005"], help="EPOCHS:LR")
    parser.add_argument("--no-finetune", action="store_true", help="train from scratch only")
    parser.add_argument(
        "--scratch", nargs="+", help="EPOCHS:LR (default: the supernet's passes at its first lr)"
    )
    parser.add_argument("--no-scratch", action="store_true", help="fine-tune only")
    parser.add_argument("--targets", nargs="*", help="only these targets (default: all)")
    parser.add_argument("--results", required=True, help="JSON lines, appended to")
    args = parser.parse_args()

    if args.run:
        config, supernet = load_run(args.run)
        if args.archs_from:  # another run's winners, measured afresh on this one
            chosen = [{**row, "measured_accuracy": None} for row in earlier_archs(args.archs_from)]
        else:
            chosen = json.loads(RunLayout(args.run).specialized.read_text())
    else:
        if not (args.archs_from and args.no_finetune):
            parser.error("--config trains from scratch only: give --archs-from and --no-finetune")
        config = load_config(args.config)
        supernet = build_supernet(config, len(config.open_splits(args.data).classes))
        chosen = earlier_archs(args.archs_from)
    passes = f"{supernet_passes(config):g}:{config.stages[0].lr}"
    scratch = [] if args.no_scratch else args.scratch or [passes]
    finetunes = [] if args.no_finetune else args.finetune
    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if results.exists():
        rows = [json.loads(line) for line in results.read_text().splitlines()]
        done = {(r["target"], r["kind"], r["epochs"], r["lr"]) for r in rows}
    evaluator = evaluator_for_run(config, args.data) if args.run else None
    device = parse_device(args.device)
    trained_on = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    work = results.parent / (results.stem + "_work")
    for row in chosen:
        if args.targets and row["target"] not in args.targets:
            continue
        arch = supernet.parse_arch(row["arch"])
        if args.run:  # a trained supernet: its network and teacher, BN recalibrated
            calibration = evaluator.batches("calibration", arch.r)
            start = recalibrate_bn(supernet, arch, calibration, evaluator.calibration_images)
            teacher = recalibrate_bn(
                supernet, supernet.space.largest(), calibration, evaluator.calibration_images
            )
        plans = [("finetune", t) for t in finetunes] + [("scratch", t) for t in scratch]
        for kind, text in plans:
            recipe = settings(text, 0.0 if kind == "finetune" else config.stages[0].warmup_epochs)
            key = (row["target"], kind, recipe.epochs, recipe.lr)
            if key in done:
                continue
            if kind == "finetune":
                network, distil = copy.deepcopy(start), teacher
            else:
                network, distil = supernet.build_subnet(arch), None
            name = f"{row['target']}_{kind}_{recipe.epochs:g}_{recipe.lr:g}"
            folder = work / name.replace("<=", "_")
            started = time.perf_counter()
            outcome = finetune(
                network.train(),
                config,
                args.data,
                folder,
                recipe,
                teacher=distil,
                resume=True,
                device=args.device,
            )
            record = {
                "target": row["target"],
                "arch": arch.to_dict(),
                "kind": kind,
                "epochs": recipe.epochs,
                "lr": recipe.lr,
                "top1_bn_recalibrated": row.get("measured_accuracy"),
                "top1_before": outcome.top1_before,
                "top1_after": outcome.top1_after,
                "steps": outcome.steps,
                "seconds": time.perf_counter() - started,
                "device": trained_on,
            }
            with results.open("a") as f:
                f.write(json.dumps(record) + "\n")
            print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
