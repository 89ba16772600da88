"""The paper's ablation at Fashion-MNIST scale: progressive shrinking (PS) against a
supernet trained for the same number of epochs with every elastic dimension open from
the start.

    python bench/ps_ablation.py                          # trains both (about 20 min here)
    python bench/ps_ablation.py --ps-run runs/quick      # reuse a finished PS run
    python bench/ps_ablation.py --ps-run runs/quick --match passes \
        --baseline-run runs/ablation-passes              # baseline as long in passes

Both supernets are evaluated on the same fixed sub-networks (the smallest, the largest
and random ones in between, ordered by MACs), each after BN recalibration on the same
held-out training images, on the whole Fashion-MNIST test set at two resolutions.

Runs trained elsewhere (for example with ``ofa train`` and the three strategy presets
``fashion-mnist``, ``fashion-mnist-ps-largest`` and ``fashion-mnist-bignas``) are compared
by name, with the mean gap of every pair; ``--scratch N`` also trains N of the fixed
archs (smallest, middle, largest by MACs) alone from random weights for as many epochs
as the first run took in sub-network passes, resumably, under ``--work``:

    python bench/ps_ablation.py --runs ps-largest=runs/fm-ps-largest ps-paper=runs/fm \
        bignas=runs/fm-bignas --scratch 3 --work runs/ablation-scratch --save table.jsonl

``--save`` writes every column's top-1 per (arch, resolution) as JSON lines; ``--saved``
adds the columns of such a file to a later comparison, so that networks trained in
another session (runs that did not survive) still compare on the same archs.
``--scratch-pick K [K ...]`` keeps only those of the scratch archs (0-based), and
``--train-only`` stops once they are trained, so that separate processes (``--threads 1``
each, one run is enough) train them side by side; a last call can then name one run and
take the others' columns from the saved table (``--saved``) instead of evaluating them
again.
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import replace
from pathlib import Path

import torch
from finetune_recipe import supernet_passes  # bench/, beside this script

from onceforall import Arch
from onceforall.data import make_loader
from onceforall.deploy.report import arch_summary
from onceforall.evaluation import evaluate, recalibrate_bn
from onceforall.storage.atomic import write_text_atomic
from onceforall.training import StageConfig, load_config, load_run, train


def baseline_config(ps_config, match: str = "epochs"):
    """Everything elastic from the start (no teacher: distillation needs the full network
    PS trains first), with the last PS stage's choices and sub-networks per step. Its
    length matches the PS schedule's total ``epochs`` (the paper's comparison), or its
    sub-network ``passes``: forward/backward passes over the data, epochs times
    sub-networks per step summed over the stages (1 x 1.0 + 2 x 0.5 = 2.0 for the
    quick preset, so the baseline trains 1.0 epoch with 2 sub-networks per step)."""
    last = ps_config.stages[-1]
    if match == "epochs":
        total_epochs = sum(s.epochs for s in ps_config.stages)
    elif match == "passes":
        passes = supernet_passes(ps_config)
        total_epochs = passes / last.subnets_per_step
    else:
        raise ValueError(f"match must be 'epochs' or 'passes', got {match!r}")
    stage = StageConfig(
        name="all_elastic",
        epochs=total_epochs,
        lr=ps_config.stages[0].lr,
        train_largest=last.train_largest,
        warmup_epochs=ps_config.stages[0].warmup_epochs,
        subnets_per_step=last.subnets_per_step,
        kernel_sizes=list(last.kernel_sizes),
        expand_ratios=list(last.expand_ratios),
        depths=list(last.depths),
        distill=False,
    )
    return replace(ps_config, stages=[stage])


def fixed_archs(space, count: int, seed: int) -> list[Arch]:
    rng = random.Random(seed)
    archs = {space.smallest(), space.largest()}
    while len(archs) < count:
        archs.add(space.canonical(space.sample(rng)))
    return list(archs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="fashion-mnist-quick")
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--ps-run", default="runs/ablation-ps")
    parser.add_argument("--baseline-run", default="runs/ablation-all-elastic")
    parser.add_argument("--archs", type=int, default=8)
    parser.add_argument(
        "--match",
        choices=["epochs", "passes"],
        default="epochs",
        help="make the baseline as long as PS in epochs, or in sub-network passes",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", nargs="+", help="NAME=RUN_DIR of trained runs to compare")
    parser.add_argument("--scratch", type=int, default=0, help="archs trained alone (--runs)")
    parser.add_argument("--work", default="runs/ablation-scratch", help="for --scratch")
    parser.add_argument(
        "--scratch-pick",
        type=int,
        nargs="+",
        help="only these (0-based) of the --scratch archs (smallest, middle, largest)",
    )
    parser.add_argument(
        "--train-only", action="store_true", help="train the --scratch archs, then stop"
    )
    parser.add_argument("--save", help="write the table (JSON lines) here (--runs)")
    parser.add_argument(
        "--saved", nargs="*", default=[], help="tables written by --save: their columns join"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.runs:
        compare_runs(args)
        return

    ps_config = load_config(args.config)
    baseline = baseline_config(ps_config, args.match)
    for run, config in ((args.ps_run, ps_config), (args.baseline_run, baseline)):
        if not (Path(run) / "supernet").is_dir():
            print(f"training {run} ({', '.join(s.name for s in config.stages)})")
            train(config, args.data, run, resume=(Path(run) / "checkpoints").is_dir())

    _, ps_net = load_run(args.ps_run)
    _, base_net = load_run(args.baseline_run)
    archs = sorted(fixed_archs(ps_net.space, args.archs, seed=1234), key=ps_net.macs)
    splits = replace(ps_config, test_subset=None).open_splits(args.data)  # whole test split
    holdout, test = splits.holdout, splits.test
    resolutions = [min(ps_config.resolutions), max(ps_config.resolutions)]

    print(
        f"\n{len(archs)} fixed sub-networks, test top-1 (%) on {len(test)} images, "
        f"BN recalibrated on {ps_config.bn_recal_images} held-out images"
    )
    print(f"{'arch':24s} {'res':>4s} {'MMACs':>7s} {'PS':>6s} {'all-elastic':>12s} {'gap':>6s}")
    gaps = []
    for resolution in resolutions:
        calib = make_loader(holdout, 256, resolution, train=False, seed=0)
        test_loader = make_loader(test, 256, resolution, train=False, seed=0)
        for arch in archs:
            arch = Arch(ks=arch.ks, e=arch.e, d=arch.d, r=resolution)
            accs = []
            for net in (ps_net, base_net):
                subnet = recalibrate_bn(net, arch, calib, ps_config.bn_recal_images)
                accs.append(evaluate(subnet, test_loader)["top1"])
            gaps.append(accs[0] - accs[1])
            summary = arch_summary(ps_net.space, arch)
            print(
                f"{summary:24s} {resolution:4d} {ps_net.macs(arch) / 1e6:7.2f} "
                f"{accs[0]:6.2f} {accs[1]:12.2f} {gaps[-1]:+6.2f}"
            )
    print(
        f"\nmean gap (PS - all-elastic): {sum(gaps) / len(gaps):+.2f} points "
        f"over {len(gaps)} sub-network/resolution pairs "
        f"(paper, ImageNet: +3.3 to +3.6 points)"
    )


def _named_runs(pairs: list[str], least: int = 2) -> dict[str, str]:
    runs = dict(pair.split("=", 1) for pair in pairs)
    if len(runs) < least or any(not name or not run for name, run in runs.items()):
        raise SystemExit(f"--runs takes at least {least} NAME=RUN_DIR")
    return runs


def _scratch_nets(config, net, archs, resolution, data, work, count, only=None):
    """``count`` of ``archs`` (smallest, middle, largest) trained alone from random
    weights at ``resolution`` for the run's epochs of sub-network passes (``only``: just
    those places among them)."""
    from onceforall.training.finetune import FinetuneSettings, finetune

    passes = supernet_passes(config)
    first = config.stages[0]
    recipe = FinetuneSettings(epochs=passes, lr=first.lr, warmup_epochs=first.warmup_epochs)
    picks = sorted({round(i * (len(archs) - 1) / max(1, count - 1)) for i in range(count)})
    if only is not None:
        if any(not 0 <= k < len(picks) for k in only):
            raise SystemExit(f"--scratch-pick takes 0 to {len(picks) - 1}, not {only}")
        picks = [picks[k] for k in only]
    nets = {}
    for i in picks:
        arch = Arch(ks=archs[i].ks, e=archs[i].e, d=archs[i].d, r=resolution)
        folder = Path(work) / f"arch{i}_r{resolution}"
        print(f"from scratch: {arch_summary(net.space, arch)}, {passes:g} epochs -> {folder}")
        torch.manual_seed(config.seed + i)  # the random weights, the same on every call
        outcome = finetune(
            net.build_subnet(arch).train(), config, data, folder, recipe, resume=True
        )
        nets[arch] = outcome.network
    return nets


def _key(arch: dict) -> str:
    return json.dumps(arch, sort_keys=True)  # an arch's dict (to_dict), as text


def _saved_columns(paths: list[str]) -> dict[str, dict[str, float]]:
    """{arch key: {column: top-1}} from tables an earlier ``--save`` wrote."""
    columns: dict[str, dict[str, float]] = {}
    for path in paths:
        for line in Path(path).read_text().splitlines():
            row = json.loads(line)
            columns.setdefault(_key(row["arch"]), {}).update(row["top1"])
    return columns


def compare_runs(args) -> None:
    """Every named run's sub-networks on the same fixed archs, whole test split."""
    runs = _named_runs(args.runs, least=1 if args.train_only or args.saved else 2)
    saved = _saved_columns(args.saved)
    loaded = {name: load_run(run) for name, run in runs.items()}
    config, first = next(iter(loaded.values()))
    archs = sorted(fixed_archs(first.space, args.archs, seed=1234), key=first.macs)
    splits = replace(config, test_subset=None).open_splits(args.data)  # whole test split
    resolutions = [min(config.resolutions), max(config.resolutions)]
    scratch = (
        _scratch_nets(
            config,
            first,
            archs,
            resolutions[-1],
            args.data,
            args.work,
            args.scratch,
            args.scratch_pick,
        )
        if args.scratch
        else {}
    )
    if args.train_only:
        return
    names = list(runs) + (["scratch"] if scratch else [])
    names += sorted({n for cols in saved.values() for n in cols} - set(names))
    print(
        f"\n{len(archs)} fixed sub-networks, test top-1 (%) on {len(splits.test)} images, "
        f"BN recalibrated on {config.bn_recal_images} held-out images"
    )
    print(f"{'arch':24s} {'res':>4s} {'MMACs':>7s} " + " ".join(f"{n:>9s}" for n in names))
    table: list[dict[str, float]] = []
    saved_rows: list[dict] = []
    for resolution in resolutions:
        calib = make_loader(splits.holdout, 256, resolution, train=False, seed=0)
        test_loader = make_loader(splits.test, 256, resolution, train=False, seed=0)
        for arch in archs:
            arch = Arch(ks=arch.ks, e=arch.e, d=arch.d, r=resolution)
            row = {}
            for name, (_, net) in loaded.items():
                subnet = recalibrate_bn(net, arch, calib, config.bn_recal_images)
                row[name] = evaluate(subnet, test_loader)["top1"]
            if arch in scratch:
                alone = recalibrate_bn(scratch[arch], None, calib, config.bn_recal_images)
                row["scratch"] = evaluate(alone, test_loader)["top1"]
            row = {**saved.get(_key(arch.to_dict()), {}), **row}
            table.append(row)
            saved_rows.append({"arch": arch.to_dict(), "top1": row})
            cells = " ".join(f"{row[n]:9.2f}" if n in row else f"{'':9s}" for n in names)
            summary = arch_summary(first.space, arch)
            print(
                f"{summary:24s} {resolution:4d} {first.macs(arch) / 1e6:7.2f} {cells}", flush=True
            )
    if args.save:
        write_text_atomic(args.save, "".join(json.dumps(r) + "\n" for r in saved_rows))
    print()
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            gaps = [row[a] - row[b] for row in table if a in row and b in row]
            wins = sum(g > 0 for g in gaps)
            ends = (
                f" (smallest at {resolutions[0]} px {gaps[0]:+.2f}, largest at "
                f"{resolutions[-1]} px {gaps[-1]:+.2f})"
                if len(gaps) == len(table)
                else ""
            )
            print(
                f"{a} - {b}: mean {sum(gaps) / len(gaps):+.2f} points, {a} ahead on {wins} "
                f"of {len(gaps)} pairs{ends}"
            )


if __name__ == "__main__":
    main()
