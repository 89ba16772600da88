"""Does the search pick different sub-networks for different runtimes?

For a run that holds a latency table per backend (``ofa latency-table --run R --backend
B``), places the demo's targets on each runtime's own range (20, 50 and 80 % of the way
from the fastest to the slowest sub-network, as ``ofa run`` does), searches each with the
run's accuracy predictor, then times every winner whole on every runtime. A winner chosen
on runtime A and deployed on runtime B either misses B's budget or, where it fits, is
predicted less accurate than B's own winner (or is the same network).

    python bench/winners_per_runtime.py --run runs/demo \
        --backends onnxruntime onnxruntime-int8 openvino
"""

from __future__ import annotations

import argparse

from onceforall.deploy.run_inputs import load_predictor_and_table
from onceforall.deploy.specialize import search_costs, search_space, spread_latency_targets
from onceforall.deploy.steps import search_step
from onceforall.latency.measure import device_description, measure_latency
from onceforall.storage.run_layout import RunLayout
from onceforall.training import load_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--backends", nargs="+", required=True)
    parser.add_argument("--targets", type=int, default=3, help="budgets per runtime")
    parser.add_argument("--repeats", type=int, default=50, help="timed runs per network")
    parser.add_argument("--generations", type=int, default=500)
    args = parser.parse_args()

    config, supernet = load_run(args.run)
    layout = RunLayout(args.run)
    print(device_description())
    tables, predictor = {}, None
    for backend in args.backends:
        predictor, tables[backend] = load_predictor_and_table(
            layout, supernet, need_table=True, backend=backend, config=config
        )
        print(f"{backend}: {tables[backend].describe()}")

    winners: dict[str, list] = {}  # backend -> [(target, arch, predicted top-1)]
    for backend, table in tables.items():
        space = search_space(supernet, predictor, table)
        targets = spread_latency_targets(
            search_costs(supernet, table, space)["latency_ms"], args.targets
        )
        results = search_step(
            supernet, predictor, targets, latency_table=table, generations=args.generations
        )
        winners[backend] = [(r.target, r.arch, r.predicted_accuracy) for r in results]

    # Every winner timed whole on every runtime (1 thread, median of --repeats runs).
    measured: dict[tuple[str, str], float] = {}
    for backend in tables:
        for found in winners.values():
            for _, arch, _ in found:
                key = (backend, str(arch))
                if key not in measured:
                    model = supernet.extract(arch).eval()
                    stats = measure_latency(
                        model, arch.r, backend=backend, threads=1, repeats=args.repeats
                    )
                    measured[key] = stats.median_ms

    for i in range(args.targets):
        print(f"\nbudget {i + 1} of {args.targets} (fraction of each runtime's range)")
        for backend, table in tables.items():
            target, own, _ = winners[backend][i]
            limit = float(target.split("<=")[1])
            print(f"  on {backend}, {target}:")
            for source, found in winners.items():
                _, arch, acc = found[i]
                ms = measured[(backend, str(arch))]
                same = "  (the same network)" if str(arch) == str(own) and source != backend else ""
                verdict = "fits" if ms <= limit else "MISSES"
                print(
                    f"    winner of {source:17s} pred. top-1 {acc:6.2f}  table "
                    f"{table.predict(arch):6.3f} ms  measured {ms:6.3f} ms  {verdict}{same}"
                )
                print(f"      {arch}")


if __name__ == "__main__":
    main()
