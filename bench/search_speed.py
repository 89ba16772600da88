"""Constrained evolutionary search, side by side with the authors' tutorial finder.

    OMP_NUM_THREADS=1 python bench/search_speed.py            # FLOPs <= 400M, r = 160..224 step 4
    OMP_NUM_THREADS=1 python bench/search_speed.py --res-step 16   # the tutorial's 5 resolutions

Both searches get the same problem: the reference's ``FLOPsTable`` (built here with thop,
nothing downloaded) is the constraint for both (our side reads its numbers into an
:class:`~onceforall.search.AdditiveCost`, so the feasible sets are identical), and the
reference's ``AccuracyPredictor`` MLP, built with a fixed torch seed instead of its
pretrained download, is the predictor for both (its weights copied into ours, first-layer
columns permuted: the tutorial encodes [ks | e | r buckets], we encode [r | ks | e]).
Both use the same hyper-parameters (population 100, 500 generations, parents 25 %,
mutation 50 %, mutation probability 0.1 for blocks, depths *and resolution*, as the
tutorial finder does); ours is also run with the paper's resolution probability 0.5.
Runs are interleaved so background load hits both alike; printed: median and min wall
time, median CPU time (steadier on a shared machine) and the load average around them.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # the tutorial finder always draws a tqdm bar

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from onceforall import Arch, MBConvSpace, create_supernet  # noqa: E402
from onceforall.search import (  # noqa: E402
    AdditiveCost,
    ArchBatch,
    Constraint,
    evolutionary_search,
    genome_layout,
    macs_cost,
    torch_predictor,
)

TUTORIAL_RESOLUTIONS = [160, 176, 192, 208, 224]


def load_reference():
    """The tutorial classes, with downloads made impossible (they would be a bug here)."""
    import ofa.tutorial.accuracy_predictor as acc_module
    from ofa.tutorial.evolution_finder import EvolutionFinder
    from ofa.tutorial.flops_table import FLOPsTable

    def no_download(*args, **kwargs):
        raise RuntimeError("this benchmark must not download anything")

    acc_module.download_url = no_download
    return acc_module, EvolutionFinder, FLOPsTable


def build_flops_table(FLOPsTable, resolutions: list[int]) -> tuple[object, float, float]:
    """The reference FLOPs table, measured by thop on CPU. Returns it, the seconds its own
    constructor took (the tutorial's 5 resolutions) and the seconds for the others."""
    with tempfile.TemporaryDirectory() as tmp:  # the constructor saves local_lut.npy in cwd
        cwd = os.getcwd()
        os.chdir(tmp)
        try:
            start = time.perf_counter()
            table = FLOPsTable(pred_type="flops", device="cpu", batch_size=1)
            built = time.perf_counter() - start
            start = time.perf_counter()
            for r in resolutions:
                if r not in table.efficiency_dict:
                    table.build_single_lut(1, r)
            extra = time.perf_counter() - start
        finally:
            os.chdir(cwd)
    return table, built, extra


def flops_cost(table, space: MBConvSpace) -> AdditiveCost:
    """The reference table's numbers (MFLOPs) as an additive cost of our space: the
    first block (k=3) and the non-block layers are fixed, slot s is their block s + 1."""
    layout = genome_layout(space)
    fixed = np.zeros(len(space.resolutions))
    blocks = np.zeros(layout.table_shape)
    for ri, r in enumerate(space.resolutions):
        entry = table.efficiency_dict[r]
        fixed[ri] = sum(entry["other_blocks"].values()) + entry["mobile_inverted_blocks"][0][(3, 1)]
        for slot in range(layout.n_slots):
            for ki, k in enumerate(space.kernel_sizes):
                for ei, e in enumerate(space.expand_ratios):
                    blocks[ri, slot, ki, ei] = entry["mobile_inverted_blocks"][slot + 1][(k, e)]
    return AdditiveCost("flops", fixed, blocks, "MFLOPs", space)


def copy_predictor(acc_module, reference: nn.Module, space: MBConvSpace) -> nn.Module:
    """Our MLP with the reference's weights: the first layer's columns are gathered so that
    our feature j multiplies the weight the tutorial's ``spec2feats`` gives that choice
    (ks one-hot at 3*slot + ks_map[k], e at 60 + 3*slot + ex_map[e], resolution at
    120 + (r - 112) // 16; several of our resolutions may share one of their buckets)."""
    n = space.num_slots
    columns = [120 + (r - 112) // 16 for r in space.resolutions]
    columns += [3 * s + acc_module.ks_map[k] for s in range(n) for k in space.kernel_sizes]
    columns += [60 + 3 * s + acc_module.ex_map[e] for s in range(n) for e in space.expand_ratios]
    ours = nn.Sequential(
        nn.Linear(space.encoding_size, 400),
        nn.ReLU(),
        nn.Linear(400, 400),
        nn.ReLU(),
        nn.Linear(400, 400),
        nn.ReLU(),
        nn.Linear(400, 1),
    )
    state = {k: v.clone() for k, v in reference.state_dict().items()}
    state["0.weight"] = state["0.weight"][:, columns]
    ours.load_state_dict(state)
    return ours.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flops", type=float, default=400.0, help="constraint, in MFLOPs")
    parser.add_argument("--res-step", type=int, default=4, choices=[4, 8, 16])
    parser.add_argument("--generations", type=int, default=500)
    parser.add_argument("--population", type=int, default=100)
    parser.add_argument("--ref-runs", type=int, default=3)
    parser.add_argument("--our-runs", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0, help="torch seed of the predictor MLP")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    start = time.perf_counter()
    acc_module, EvolutionFinder, FLOPsTable = load_reference()
    print(f"imported ofa.tutorial in {time.perf_counter() - start:.1f} s")
    resolutions = list(range(160, 225, args.res_step))
    space = MBConvSpace(resolutions=tuple(resolutions))

    table, built, extra = build_flops_table(FLOPsTable, resolutions)
    print(
        f"reference FLOPsTable (thop, CPU, batch 1): its constructor (5 resolutions) "
        f"{built:.1f} s, {len(resolutions) - 5} more resolutions {extra:.1f} s"
    )
    start = time.perf_counter()
    flops = flops_cost(table, space)
    print(f"our AdditiveCost from that table: {time.perf_counter() - start:.3f} s")

    torch.manual_seed(args.seed)
    reference_predictor = acc_module.AccuracyPredictor(pretrained=False, device="cpu")
    reference_predictor.model.eval()
    ours = copy_predictor(acc_module, reference_predictor.model, space)
    predict = torch_predictor(ours)

    # Same numbers on both sides, checked on random architectures of the space.
    check = ArchBatch.sample(space, 2000, np.random.default_rng(0))
    dicts = [a.to_dict() for a in check.to_archs()]
    ref_acc = reference_predictor.predict_accuracy(dicts).numpy().reshape(-1)
    acc_diff = np.abs(ref_acc - predict(check.encode())).max()
    ref_flops = np.array([table.predict_efficiency(d) for d in dicts])
    flops_diff = np.abs(ref_flops - flops(check)).max()
    print(
        f"check on 2000 random archs: max |accuracy diff| {acc_diff:.2e}, "
        f"max |FLOPs diff| {flops_diff:.2e} M"
    )

    finder = EvolutionFinder(
        "flops",
        args.flops,
        table,
        reference_predictor,
        population_size=args.population,
        max_time_budget=args.generations,
        mutate_prob=0.1,
        parent_ratio=0.25,
        mutation_ratio=0.5,
    )
    finder.arch_manager.resolutions = list(resolutions)
    constraint = [Constraint(flops, args.flops)]
    search_kwargs = dict(population=args.population, generations=args.generations)
    runs: dict[str, list[tuple[float, float, float, Arch]]] = {
        "ref": [],
        "ours": [],
        "ours_paper": [],
    }
    predicted = []
    load_before = os.getloadavg()
    for i in range(max(args.ref_runs, args.our_runs)):
        if i < args.ref_runs:
            random.seed(i)
            np.random.seed(i)
            start, cpu = time.perf_counter(), time.process_time()
            _, (acc, sample, _) = finder.run_evolution_search()
            seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
            runs["ref"].append((seconds, cpu, acc, space.parse(sample)))
        if i < args.our_runs:
            for key, res_prob in (("ours", 0.1), ("ours_paper", 0.5)):
                cpu = time.process_time()
                result = evolutionary_search(
                    space,
                    predict,
                    constraint,
                    seed=i,
                    resolution_mutation_prob=res_prob,
                    **search_kwargs,
                )
                cpu = time.process_time() - cpu
                runs[key].append((result.wall_time_s, cpu, result.accuracy, result.arch))
                predicted.append(result.predicted / result.evaluated)

    net = create_supernet("ofa_mbv3_w1.2")  # for our exact MAC count of the found archs
    exact = macs_cost(net)
    print(
        f"\nFLOPs <= {args.flops:g} M (reference FLOPsTable), resolutions "
        f"{resolutions[0]}..{resolutions[-1]} step {args.res_step}, population "
        f"{args.population}, {args.generations} generations, torch threads {args.threads}"
    )
    load_after = os.getloadavg()
    print(
        f"1-min load average {load_before[0]:.2f} before the timed runs, {load_after[0]:.2f} "
        f"after, on {os.cpu_count()} CPUs"
    )
    print(f"{'':44s}{'runs':>5s}{'median s':>10s}{'min s':>8s}{'cpu s':>7s}  best acc (mean, max)")
    labels = {
        "ref": "reference EvolutionFinder (ofa.tutorial)",
        "ours": "ours, evolutionary_search (res. mut. 0.1)",
        "ours_paper": "ours, paper setting (res. mut. 0.5)",
    }
    for key, label in labels.items():
        seconds = [run[0] for run in runs[key]]
        cpu = [run[1] for run in runs[key]]
        accs = [run[2] for run in runs[key]]
        print(
            f"{label:44s}{len(seconds):5d}{statistics.median(seconds):10.3f}{min(seconds):8.3f}"
            f"{statistics.median(cpu):7.3f}  {statistics.mean(accs):.5f}, {max(accs):.5f}"
        )
    ratio = statistics.median(run[0] for run in runs["ref"]) / statistics.median(
        run[0] for run in runs["ours"]
    )
    print(f"speed-up of ours over the reference (median wall time): {ratio:.1f}x")
    print(
        f"ours sent {100 * statistics.mean(predicted):.0f}% of its candidates to the predictor "
        "(the rest repeat a parent or a sibling)"
    )
    for key in ("ref", "ours"):
        _, _, acc, arch = max(runs[key], key=lambda run: run[2])
        print(
            f"best of {key}: acc {acc:.5f}, reference FLOPs {flops.of(arch):.2f} M, our exact "
            f"MACs on ofa_mbv3_w1.2 {exact.of(arch) / 1e6:.2f} M, {arch}"
        )


if __name__ == "__main__":
    main()
