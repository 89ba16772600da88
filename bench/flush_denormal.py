"""Does denormal arithmetic slow a kernel-stage step? Times the same training step (the
largest and a random sub-network of the kernel stage's space, batch 128, resolution 28)
from a run's weights with and without ``torch.set_flush_denormal(True)``, in interleaved
rounds, in one process.

    .venv/bin/python bench/flush_denormal.py runs/demo [--weights checkpoints] [--threads 2]

Result on the Xeon (docs/benchmarks.md, "How long a run takes"): no difference.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

from onceforall.training import load_run
from onceforall.training.schedule import stage_space


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--weights", default="checkpoints", help="supernet, teacher, checkpoints")
    parser.add_argument("--stage", default="kernel")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config, net = load_run(args.run, weights=args.weights)
    net = net.to(memory_format=torch.channels_last).train()
    space = stage_space(net.space, config.stage(args.stage))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.001, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(128, 3, 28, 28, generator=gen).to(memory_format=torch.channels_last)
    labels = torch.randint(0, net.classifier.out_features, (128,), generator=gen)
    rng = random.Random(0)

    def step() -> float:
        start = time.perf_counter()
        for arch in (space.largest(), space.sample(rng)):
            net.set_active(arch)
            torch.nn.functional.cross_entropy(net(images), labels).backward()
        optimizer.step()
        optimizer.zero_grad()
        return time.perf_counter() - start

    step()  # warm-up
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.rounds):
        for flush in (False, True):
            torch.set_flush_denormal(flush)
            times[flush].append(step())
    torch.set_flush_denormal(False)
    print(f"{args.threads} threads, {args.rounds} rounds, median s per step:")
    for flush, label in ((False, "denormals kept"), (True, "flushed to zero")):
        print(f"  {label:16s} {statistics.median(times[flush]):.3f}")


if __name__ == "__main__":
    main()
