"""The authors' tutorial search and ours on the authors' own files, in one process.

    OMP_NUM_THREADS=1 .venv/bin/python bench/authors_search.py [--seeds 3] [--budget 25]

The problem is their tutorial's: OFA-MobileNetV3 w1.2, their accuracy predictor
(``acc_predictor.pth``), their Samsung Note10 lookup tables (``note10/``), latency <= 25
ms. Their side is ``ofa.tutorial``'s ``EvolutionFinder`` with their ``AccuracyPredictor``
and ``LatencyTable`` on those files (the download is pointed at the local copies, and
their ``yaml.load(fp)``, which current PyYAML refuses without a loader, is given the safe
loader, in this process only). Our side reads the same files with
:func:`onceforall.compat.predictors.open_predictor` and
:func:`onceforall.compat.latency_tables.open_latency_table` and runs
:func:`onceforall.search.evolutionary_search` over the resolutions the table covers.
Both: 25 % parents, 50 % mutation, mutation probability 0.1 for blocks, depths and the
resolution (their tutorial's settings). Theirs: population 100, 500 generations. Ours,
each seed: population 100 and 500 generations (the paper's, ``ofa search``'s default),
and population 400 for 125 generations: the same 50,000 candidates as theirs, in a wider
population (``--ours`` picks others, as POPULATIONxGENERATIONS).

Per seed (runs interleaved, so background load hits both alike): wall time of the search
call, the best predicted accuracy each reports, both winners re-scored in one call of
their predictor (so that the comparison does not depend on batch composition), and the
table latency of every arch each returns (theirs: its best; ours: its best and its
final population), checked against the budget with their ``LatencyTable``.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # the tutorial finder always draws a tqdm bar

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
import onceforall  # noqa: E402
from onceforall.compat.latency_tables import open_latency_table  # noqa: E402
from onceforall.compat.predictors import open_predictor  # noqa: E402
from onceforall.deploy.specialize import parse_target, search_costs, search_space  # noqa: E402
from onceforall.search import evolution, evolutionary_search  # noqa: E402

AUTHORS = Path(__file__).resolve().parents[2] / "shared" / "authors"


def _rank_cut(keys, acc: np.ndarray, n: int) -> np.ndarray:
    """The parents by rank alone, as their finder (and ours before issue 14) takes them."""
    return np.argsort(-acc, kind="stable")[:n]


def _distinct(space, genes: np.ndarray) -> int:
    return len(np.unique(space.genome().network_keys(genes)))


def their_side(folder: Path):
    """Their tutorial predictor and latency table on the local files (nothing
    downloaded), and their finder class."""
    import ofa.tutorial.accuracy_predictor as acc_module
    import ofa.tutorial.latency_table as table_module
    from ofa.tutorial.evolution_finder import EvolutionFinder

    def no_download(*args, **kwargs):
        raise RuntimeError("this benchmark must not download anything")

    acc_module.download_url = no_download
    table_module.download_url = lambda url, *a, **k: str(folder / "note10" / url.split("/")[-1])
    safe = yaml.load
    table_module.yaml.load = lambda stream, Loader=yaml.SafeLoader: safe(stream, Loader=Loader)  # noqa: N803
    predictor = acc_module.AccuracyPredictor(pretrained=False, device="cpu")
    state = torch.load(folder / "acc_predictor.pth", map_location="cpu", weights_only=True)
    predictor.model.load_state_dict(state)
    predictor.model.eval()
    table = table_module.LatencyTable(device="note10", resolutions=(160, 176, 192, 208, 224))
    return predictor, table, EvolutionFinder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--authors", type=Path, default=AUTHORS, help="their files")
    parser.add_argument("--budget", type=float, default=25.0, help="ms on the Note10")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--population", type=int, default=100, help="their finder's")
    parser.add_argument("--generations", type=int, default=500, help="their finder's")
    parser.add_argument(
        "--ours",
        nargs="+",
        default=["100x500", "400x125"],
        help="our settings, each seed: POPULATIONxGENERATIONS",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument(
        "--rank-parents",
        action="store_true",
        help="also run ours at 100x500 with the parents cut by rank alone (the selection "
        "before issue 14: copies of one network may fill the parent pool)",
    )
    args = parser.parse_args()
    ours = [tuple(int(v) for v in text.split("x")) for text in args.ours]
    torch.set_num_threads(args.threads)
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
        f"{torch.__version__}, {args.threads} torch thread(s)"
    )

    their_predictor, their_table, EvolutionFinder = their_side(args.authors)
    net = onceforall.create_supernet("ofa_mbv3_w1.2", num_classes=1000)  # as import-reference
    start = time.perf_counter()
    predictor = open_predictor(args.authors / "acc_predictor.pth", net)
    table = open_latency_table(args.authors / "note10", net)
    space = search_space(net, predictor, table)
    constraints = parse_target(f"latency_ms<={args.budget}", search_costs(net, table, space))
    print(
        f"ours: files read and costs built in {time.perf_counter() - start:.2f} s; "
        f"searching resolutions {list(space.resolutions)}"
    )

    rows = []
    distinct_parents = evolution._distinct_best  # the selection ours makes
    load_before = os.getloadavg()[0]
    for seed in range(args.seeds):
        random.seed(seed)
        np.random.seed(seed)
        finder = EvolutionFinder(
            "note10",
            args.budget,
            their_table,
            their_predictor,
            population_size=args.population,
            max_time_budget=args.generations,
            mutate_prob=0.1,
            parent_ratio=0.25,
            mutation_ratio=0.5,
        )
        start = time.perf_counter()
        _, (their_acc, their_arch, their_ms) = finder.run_evolution_search()
        their_s = time.perf_counter() - start
        assert abs(their_table.predict_efficiency(their_arch) - their_ms) < 1e-9
        assert their_ms <= args.budget
        print(f"seed {seed}: theirs {their_s:.2f} s, best {their_acc:.6f} at {their_ms:.2f} ms")
        variants = [(f"{p}x{g}", p, g, distinct_parents) for p, g in ours]
        if args.rank_parents:
            variants.append(("100x500 by rank", 100, 500, _rank_cut))
        for name, population, generations, selection in variants:
            evolution._distinct_best = selection
            start = time.perf_counter()
            found = evolutionary_search(
                space,
                predictor,
                constraints,
                population=population,
                generations=generations,
                mutation_prob=0.1,
                resolution_mutation_prob=0.1,
                seed=seed,
            )
            our_s = time.perf_counter() - start
            # Both winners re-scored in one call of their predictor; every arch ours
            # returns (best and final pool) priced by their table.
            ours_dict = found.arch.to_dict()
            rescored = their_predictor.predict_accuracy([their_arch, ours_dict]).numpy()[:, 0]
            pool = [a.to_dict() for a in found.population.to_archs()]
            our_ms = [their_table.predict_efficiency(a) for a in [ours_dict, *pool]]
            assert max(our_ms) <= args.budget, max(our_ms)
            assert abs(our_ms[0] - found.costs["latency_ms"]) < 1e-6
            assert abs(found.accuracy / 100 - rescored[1]) < 1e-6
            rows.append(
                {
                    "seed": seed,
                    "settings": name,
                    "their_s": their_s,
                    "our_s": our_s,
                    "rescored": rescored,
                    "their_ms": their_ms,
                    "our_ms": our_ms[0],
                    "our_max_ms": max(our_ms),
                }
            )
            print(
                f"  ours, {name}: {our_s:.3f} s ({found.predicted} networks "
                f"predicted; {_distinct(space, found.population.genes[:25])} distinct among the "
                "25 best at the end), best "
                f"{found.accuracy / 100:.6f} at {our_ms[0]:.2f} ms (final pool of {len(pool)} "
                f"all <= {max(our_ms):.2f} ms) | speed-up {their_s / our_s:.1f}x | re-scored "
                f"together: theirs {rescored[0]:.6f}, ours {rescored[1]:.6f}",
                flush=True,
            )
    evolution._distinct_best = distinct_parents
    load_after = os.getloadavg()[0]

    print(f"\n1-minute load average {load_before:.2f} -> {load_after:.2f}")
    print(
        "| seed | ours: population x generations | theirs s | ours s | speed-up | best "
        "predicted top-1, theirs / ours | their table ms, theirs / ours (max over our final pool) |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | --- | --- |")
    for row in rows:
        theirs, ours = 100 * row["rescored"]
        print(
            f"| {row['seed']} | {row['settings']} | {row['their_s']:.2f} | "
            f"{row['our_s']:.3f} | {row['their_s'] / row['our_s']:.1f}x | {theirs:.3f} / "
            f"{ours:.3f} % | {row['their_ms']:.2f} / {row['our_ms']:.2f} "
            f"({row['our_max_ms']:.2f}) |"
        )
    for name in dict.fromkeys(row["settings"] for row in rows):
        mine = [row for row in rows if row["settings"] == name]
        worst = min(row["their_s"] / row["our_s"] for row in mine)
        wins = sum(row["rescored"][1] >= row["rescored"][0] for row in mine)
        print(
            f"ours, {name}: slowest speed-up {worst:.1f}x; equal or better "
            f"best predicted top-1 in {wins} of {len(mine)} seeds"
        )


if __name__ == "__main__":
    main()
