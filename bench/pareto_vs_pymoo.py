"""Our NSGA-II (``search/pareto.py``) against pymoo's on the same Pareto problem.

Issue 18, part 3. The problem is a run's: its accuracy predictor against its latency
table (and, with ``--macs``, against latency and MACs), over the run's whole space,
unconstrained. Both sides see the same genes (one integer per decision of the space,
:mod:`onceforall.search.population`) and the same objective function, which predicts
each distinct network once (the cache our search uses; pymoo gets it too, so neither
pays twice for a repeat). Budget: pymoo runs until it has sent as many distinct
networks to the predictor as our search did with the same seed (``--population`` x
``--generations``), so the two are compared at equal predictor evaluations.

pymoo runs as its documentation recommends for integer variables (random integer
sampling, SBX crossover and polynomial mutation with rounding, duplicates eliminated),
and with ``--variants``, also with uniform crossover (the operator ours uses).
``--our-mutations P ...`` adds ours at other per-block mutation rates (each with its
own count of predicted networks; the pymoo budget stays that of ours at 0.1).
Hypervolume is pymoo's, over objectives normalised by the ideal and nadir points of
every front of the problem (all seeds, all solvers), reference point 1.1 in each.
Runs of the solvers are interleaved per seed so background load hits them alike.

    OMP_NUM_THREADS=1 .venv/bin/python bench/pareto_vs_pymoo.py --run runs/demo [--macs]
        [--seeds 5] [--population 100] [--generations 300]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from onceforall.deploy.run_inputs import load_predictor_and_table
from onceforall.search import genome_layout, latency_cost, macs_cost, pareto_search
from onceforall.search.constraints import Constraint, ConstraintSet
from onceforall.search.evolution import CachedPredictor  # the cache our search predicts through
from onceforall.search.pareto import non_dominated_ranks
from onceforall.storage.run_layout import RunLayout
from onceforall.training import load_run


def problem_of(run: str, with_macs: bool):
    """(space, predictor, costs) of ``run``: its predictor, its latency table, MACs."""
    config, supernet = load_run(run)
    predictor, table = load_predictor_and_table(
        RunLayout(run), supernet, need_table=True, config=config
    )
    costs = [latency_cost(table, supernet.space)]
    if with_macs:
        costs.append(macs_cost(supernet))
    return supernet.space, predictor, costs


def ours(
    space, predictor, costs, population: int, generations: int, seed: int, mutation: float = 0.1
):
    front = pareto_search(
        space,
        predictor,
        costs,
        population=population,
        generations=generations,
        seed=seed,
        mutation_prob=mutation,
    )
    f = np.column_stack([-front.accuracy, *[front.costs[c.name] for c in costs]])
    return f, front.predicted, front.evaluated


def with_pymoo(space, predictor, costs, population: int, budget: int, seed: int, uniform: bool):
    """pymoo's NSGA-II until ``budget`` distinct networks were predicted."""
    from pymoo.algorithms.moo.nsga2 import NSGA2
    from pymoo.core.problem import Problem
    from pymoo.core.termination import Termination
    from pymoo.operators.crossover.sbx import SBX
    from pymoo.operators.crossover.ux import UX
    from pymoo.operators.mutation.pm import PM
    from pymoo.operators.repair.rounding import RoundingRepair
    from pymoo.operators.sampling.rnd import IntegerRandomSampling
    from pymoo.optimize import minimize

    layout = genome_layout(space)
    evaluate = CachedPredictor(predictor, layout)
    priced = ConstraintSet(space, [Constraint(c, np.inf) for c in costs])
    upper = np.asarray(layout.cardinality) - 1

    class Search(Problem):
        def __init__(self) -> None:
            super().__init__(n_var=len(upper), n_obj=1 + len(costs), xl=0, xu=upper, vtype=int)

        def _evaluate(self, x, out, *args, **kwargs) -> None:
            genes = np.clip(np.rint(x), 0, upper).astype(np.intp)
            out["F"] = np.column_stack([-evaluate(genes), priced.values(genes).T])

    class PredictorBudget(Termination):
        def _update(self, algorithm) -> float:
            return min(1.0, evaluate.predicted / budget)

    crossover = UX() if uniform else SBX(prob=1.0, eta=3.0, vtype=float, repair=RoundingRepair())
    algorithm = NSGA2(
        pop_size=population,
        sampling=IntegerRandomSampling(),
        crossover=crossover,
        mutation=PM(eta=3.0, vtype=float, repair=RoundingRepair()),
        eliminate_duplicates=True,
    )
    result = minimize(Search(), algorithm, PredictorBudget(), seed=seed, verbose=False)
    return np.atleast_2d(result.F), evaluate.predicted, evaluate.count


def non_dominated(f: np.ndarray) -> np.ndarray:
    return f[non_dominated_ranks(f) == 0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default="runs/demo")
    parser.add_argument("--macs", action="store_true", help="latency and MACs (3 objectives)")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--population", type=int, default=100)
    parser.add_argument("--generations", type=int, default=300)
    parser.add_argument("--variants", action="store_true", help="also pymoo with UX crossover")
    parser.add_argument(
        "--our-mutations",
        type=float,
        nargs="*",
        default=[],
        metavar="P",
        help="also ours with these per-block mutation probabilities (default 0.1)",
    )
    args = parser.parse_args()
    from pymoo import __version__ as pymoo_version
    from pymoo.indicators.hv import HV

    space, predictor, costs = problem_of(args.run, args.macs)
    solvers = ["ours", "pymoo"] + (["pymoo-ux"] if args.variants else [])
    mutations = {f"ours-m{p:g}": p for p in args.our_mutations}  # ours at other rates
    solvers += list(mutations)
    objectives = "accuracy vs " + " and ".join(c.name for c in costs)
    print(f"{args.run}: {objectives}; pymoo {pymoo_version}; population {args.population}")
    print(f"load {os.getloadavg()[0]:.2f}")
    fronts: dict[str, list] = {s: [] for s in solvers}
    for seed in range(args.seeds):
        start = time.perf_counter()
        f, budget, count = ours(space, predictor, costs, args.population, args.generations, seed)
        fronts["ours"].append((f, budget, count, time.perf_counter() - start))
        for solver in solvers[1:]:
            start = time.perf_counter()
            if solver in mutations:
                rate = mutations[solver]
                run = ours(space, predictor, costs, args.population, args.generations, seed, rate)
            else:
                uniform = solver == "pymoo-ux"
                f, predicted, count = with_pymoo(
                    space, predictor, costs, args.population, budget, seed, uniform
                )
                run = (non_dominated(f), predicted, count)
            fronts[solver].append((*run, time.perf_counter() - start))
        line = ", ".join(f"{s} {fronts[s][-1][3]:.1f} s" for s in solvers)
        print(f"seed {seed}: {budget} networks predicted; {line}", flush=True)

    every = np.concatenate([f for runs in fronts.values() for f, *_ in runs])
    ideal, nadir = every.min(axis=0), every.max(axis=0)
    scale = np.where(nadir > ideal, nadir - ideal, 1.0)
    hv = HV(ref_point=np.full(every.shape[1], 1.1))
    print(f"\nhypervolume (normalised, reference 1.1 per objective), over {args.seeds} seeds")
    print("| solver | hypervolume, median (min-max) | front | predicted | candidates | wall s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for solver, runs in fronts.items():
        volumes = [hv((f - ideal) / scale) for f, *_ in runs]
        sizes = [len(f) for f, *_ in runs]
        print(
            f"| {solver} | {statistics.median(volumes):.4f} ({min(volumes):.4f}-{max(volumes):.4f})"
            f" | {statistics.median(sizes):.0f} | {statistics.median(r[1] for r in runs):.0f}"
            f" | {statistics.median(r[2] for r in runs):.0f}"
            f" | {statistics.median(r[3] for r in runs):.2f} |"
        )
    print(f"load {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
