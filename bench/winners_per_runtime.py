"""Does the search pick different sub-networks for different runtimes?

Places the demo's three latency targets on each runtime's own range (20, 50 and 80 % of
the way from the fastest to the slowest sub-network its table predicts, as ``ofa run``
does), searches each with one accuracy predictor, then times every winner whole on
every runtime of this machine (1 thread, median of ``--repeats`` runs). A winner chosen
for runtime A and deployed on runtime B either misses B's budget or, where it fits, is
predicted less accurate than B's own winner, or is the same network.

Two sources of predictor and tables:

    # a run's predictor and its table per backend (ofa latency-table --run R --backend B)
    python bench/winners_per_runtime.py --run runs/demo \\
        --backends onnxruntime onnxruntime-int8 openvino openvino-int8
    # the authors' ImageNet predictor for OFA-MobileNetV3 w1.2, tables timed here (kept in
    # --tables and reused), and optionally their Note10 table (a phone: not timed here)
    python bench/winners_per_runtime.py --predictor ../shared/authors/acc_predictor.pth \\
        --supernet ofa_mbv3_w1.2 --resolutions 224 --tables runs/winner-tables \\
        --authors-table ../shared/authors/note10 --backends onnxruntime onnxruntime-int8
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from onceforall import create_supernet
from onceforall.compat.latency_tables import open_latency_table
from onceforall.compat.predictors import open_predictor
from onceforall.deploy.report import arch_summary
from onceforall.deploy.run_inputs import load_predictor_and_table
from onceforall.deploy.specialize import search_costs, search_space, spread_latency_targets
from onceforall.deploy.steps import search_step
from onceforall.latency import LatencyTable
from onceforall.latency.measure import device_description, measure_latency
from onceforall.storage.run_layout import RunLayout
from onceforall.training import load_run

AUTHORS = "note10 (authors' table)"


def run_inputs(args) -> tuple:
    """The supernet, predictor and {backend: table} of ``--run``."""
    config, supernet = load_run(args.run)
    tables, predictor = {}, None
    for backend in args.backends:
        predictor, tables[backend] = load_predictor_and_table(
            RunLayout(args.run), supernet, need_table=True, backend=backend, config=config
        )
    return supernet, predictor, tables


def built_inputs(args) -> tuple:
    """The supernet, ``--predictor`` and a table per backend timed here (or reused from
    ``--tables``), plus the authors' table when given."""
    supernet = create_supernet(args.supernet, num_classes=1000, resolutions=args.resolutions)
    predictor = open_predictor(args.predictor, supernet)
    folder = Path(args.tables)
    folder.mkdir(parents=True, exist_ok=True)
    tables = {}
    for backend in args.backends:
        path = folder / f"{args.supernet}-{backend}.json"
        if path.is_file():
            tables[backend] = LatencyTable.load(path, supernet)
            continue
        start = time.perf_counter()
        table = LatencyTable.build(
            supernet, backend=backend, threads=1, resolutions=args.resolutions, progress=False
        )
        table.save(path)
        print(f"built the {backend} table in {time.perf_counter() - start:.0f} s")
        tables[backend] = table
    if args.authors_table:
        tables[AUTHORS] = open_latency_table(args.authors_table, supernet)
    return supernet, predictor, tables


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", help="a run with a table per backend")
    parser.add_argument("--predictor", help="without --run: an accuracy predictor file")
    parser.add_argument("--supernet", default="ofa_mbv3_w1.2")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[224])
    parser.add_argument("--tables", default="runs/winner-tables", help="where tables are kept")
    parser.add_argument("--authors-table", help="a folder of the authors' latency tables")
    parser.add_argument("--backends", nargs="+", required=True)
    parser.add_argument("--targets", type=int, default=3, help="budgets per runtime")
    parser.add_argument("--repeats", type=int, default=50, help="timed runs per network")
    parser.add_argument("--generations", type=int, default=500)
    args = parser.parse_args()
    if not (args.run or args.predictor):
        parser.error("give --run or --predictor")

    print(device_description())
    supernet, predictor, tables = run_inputs(args) if args.run else built_inputs(args)
    for name, table in tables.items():
        print(f"{name}: {table.describe()}")

    winners: dict[str, list] = {}  # runtime -> [(target, arch, predicted top-1)]
    for name, table in tables.items():
        space = search_space(supernet, predictor, table)
        cost = search_costs(supernet, table, space)["latency_ms"]
        targets = spread_latency_targets(cost, args.targets)
        results = search_step(
            supernet, predictor, targets, latency_table=table, generations=args.generations
        )
        winners[name] = [(r.target, r.arch, r.predicted_accuracy) for r in results]

    # Every winner timed whole on every runtime of this machine.
    measured: dict[tuple[str, str], float] = {}
    for backend in args.backends:
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
        print(f"\nbudget {i + 1} of {args.targets} (placed on each runtime's own range)")
        for name, table in tables.items():
            target, own, _ = winners[name][i]
            limit = float(target.split("<=")[1])
            print(f"  {name}, {target}:")
            for source, found in winners.items():
                _, arch, accuracy = found[i]
                predicted = table.predict(arch)
                ms = measured.get((name, str(arch)))
                timed = "-" if ms is None else f"{ms:7.3f}"
                fits = predicted if ms is None else ms
                verdict = "fits" if fits <= limit else "MISSES"
                same = " = own" if str(arch) == str(own) and source != name else ""
                print(
                    f"    winner for {source:24s} pred. top-1 {accuracy:6.2f}  table "
                    f"{predicted:7.3f} ms  measured {timed} ms  {verdict}{same}  "
                    f"{arch_summary(supernet.space, arch)}"
                )


if __name__ == "__main__":
    main()
