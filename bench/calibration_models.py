"""Which calibration model predicts held-out networks best, for a table already timed?

Reads a table saved by ``bench/latency_table.py --save`` and the per-network timings
of its held-out networks (``--json``), fits every candidate calibration model to the
table's own calibration networks and prints each one's leave-one-out error on them and
its error on the held-out networks (against the mean of the two passes, divided by
``--drift``: the host's speed drift that run printed). The model the table chooses
(lowest leave-one-out error) is marked. No timing: this runs in a second.

    .venv/bin/python bench/calibration_models.py TABLE.json HELD_OUT.json [--drift 0.99]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from onceforall.latency.calibration import candidate_fits, fit_calibration
from onceforall.latency.table import LatencyTable


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("table", help="a table written by bench/latency_table.py --save")
    parser.add_argument("held_out", help="its held-out timings (bench/latency_table.py --json)")
    parser.add_argument("--drift", type=float, default=1.0, help="now / build, as printed")
    args = parser.parse_args()

    table = LatencyTable.load(args.table)
    rows = json.loads(Path(args.held_out).read_text())
    measured = np.array([(r["pass1_ms"] + r["pass2_ms"]) / 2 for r in rows]) / args.drift
    calibration = table.feature_rows(a for a, _ in table.calibration)
    timed = np.array([ms for _, ms in table.calibration])
    held_out = table.feature_rows(r["arch"] for r in rows)  # parsed by the table's space
    chosen = fit_calibration(calibration, timed)
    print(
        f"{table.backend}: {len(timed)} calibration networks, {len(rows)} held-out "
        f"({measured.min():.2f}-{measured.max():.2f} ms, divided by drift {args.drift})"
    )
    print(
        "| model | overhead ms | scale | ms per M params | ms per part | leave-one-out |"
        " held-out median / p90, within 10 % |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for name, fit in candidate_fits(calibration, timed):
        err = np.abs(fit.predict(held_out) - measured) / measured * 100
        mark = " (chosen)" if fit == chosen else ""
        print(
            f"| {name}{mark} | {fit.overhead_ms:+.4f} | {fit.scale:.3f} | "
            f"{fit.ms_per_mparam:.4f} | {fit.ms_per_part:+.4f} | {fit.error * 100:.1f} % | "
            f"{np.median(err):.1f} / {np.percentile(err, 90):.1f} %, "
            f"{np.mean(err <= 10) * 100:.0f} % |"
        )


if __name__ == "__main__":
    main()
