"""How much does a busy machine slow a training step, by torch's thread setting? Times
the same training step (the largest sub-network of OFA-MobileNetV3, batch 64,
resolution 28, from random weights) in fresh processes: with 1 thread, with 2 threads,
and with 2 threads and ``OMP_WAIT_POLICY=PASSIVE`` (OpenMP threads sleep instead of
spin-waiting), each on a quiet machine and beside ``--burners`` processes that keep a
core busy (``while True: pass``), in interleaved rounds.

    .venv/bin/python bench/busy_threads.py [--burners 1] [--rounds 3] [--steps 8]

Result on the Xeon: docs/benchmarks.md, "Threads on a busy machine".
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

STEP = """
import sys, time, torch
import onceforall
net = onceforall.create_supernet("ofa_mbv3_w1.0", num_classes=10, resolutions=[28]).train()
optimizer = torch.optim.SGD(net.parameters(), lr=0.001, momentum=0.9)
generator = torch.Generator().manual_seed(0)
images = torch.randn(64, 3, 28, 28, generator=generator)
labels = torch.randint(0, 10, (64,), generator=generator)

def step():
    optimizer.zero_grad()
    torch.nn.functional.cross_entropy(net(images), labels).backward()
    optimizer.step()

step()
start = time.perf_counter()
for _ in range(int(sys.argv[1])):
    step()
print((time.perf_counter() - start) / int(sys.argv[1]) * 1000)
"""

SETTINGS = {
    "1 thread": {"OMP_NUM_THREADS": "1"},
    "2 threads": {"OMP_NUM_THREADS": "2"},
    "2 threads, OMP_WAIT_POLICY=PASSIVE": {"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE"},
}


def time_step(setting: dict[str, str], steps: int) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    done = subprocess.run(
        [sys.executable, "-c", STEP, str(steps)],
        env={**env, **setting},
        capture_output=True,
        text=True,
        check=True,
    )
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--burners", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for machine in ("quiet", "busy"):
            burners = []
            if machine == "busy":
                burners = [
                    subprocess.Popen([sys.executable, "-c", "while True: pass"])
                    for _ in range(args.burners)
                ]
            try:
                for name, setting in SETTINGS.items():
                    times.setdefault((name, machine), []).append(time_step(setting, args.steps))
            finally:
                for burner in burners:
                    burner.kill()
                    burner.wait()
    print(f"ms per training step (median of {args.rounds} rounds), busy = {args.burners} burner(s)")
    print(f"{'setting':40s} {'quiet':>8s} {'busy':>8s} {'busy/quiet':>10s}")
    for name in SETTINGS:
        quiet = statistics.median(times[(name, "quiet")])
        busy = statistics.median(times[(name, "busy")])
        print(f"{name:40s} {quiet:8.0f} {busy:8.0f} {busy / quiet:10.1f}")


if __name__ == "__main__":
    main()
