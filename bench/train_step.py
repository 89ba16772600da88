"""Training-step throughput, extraction time and CPU latency, side by side with the
authors' package when it is installed (``pip install -e '.[reference]'``).

    python bench/train_step.py                 # this 2-core CPU: batch 32, resolution 128
    python bench/train_step.py --steps 40      # longer, steadier figures

A training step is forward, cross-entropy backward and an SGD step (momentum 0.9) on a
random batch with 1000 classes. "random" sets a new random sub-network before each step;
both implementations get the same sequence of architectures. Rounds are interleaved so
that background load hits every contender alike; each figure is the best round.
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _reference as ref  # noqa: E402

import onceforall  # noqa: E402
from onceforall.latency.measure import measure_latency  # noqa: E402


def train_throughput(
    model: nn.Module,
    before_step: Callable[[int], None] | None,
    batch: int,
    resolution: int,
    steps: int,
    warmup: int,
    channels_last: bool = False,
) -> float:
    """Images per second over ``steps`` timed steps after ``warmup`` untimed ones."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, resolution, resolution, generator=gen)
    if channels_last:
        model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), generator=gen)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    start = 0.0
    for step in range(warmup + steps):
        if step == warmup:
            start = time.perf_counter()
        if before_step is not None:
            before_step(step)
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return batch * steps / (time.perf_counter() - start)


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    ours = onceforall.create_supernet("ofa_mbv3_w1.0", num_classes=1000)
    space = ours.space
    reference = ref.build_reference_mbv3(width_mult=1.0, num_classes=1000, seed=0)
    archs = [space.sample(random.Random(i)) for i in range(args.warmup + args.steps)]
    largest = space.largest(args.resolution)
    static = ours.extract(largest)

    contenders: dict[str, tuple[nn.Module, Callable[[int], None] | None, bool]] = {}
    for fmt, channels_last in (("", False), (", channels_last", True)):
        # Separate copies: converting the memory format changes a module in place.
        net = copy.deepcopy(ours)
        contenders[f"ours{fmt}, random sub-network per step"] = (
            net,
            lambda i, net=net: net.set_active(archs[i]),
            channels_last,
        )
        contenders[f"ours{fmt}, largest sub-network"] = (
            net,
            lambda i, net=net: net.set_active(largest),
            channels_last,
        )
        contenders[f"extracted static largest{fmt}"] = (copy.deepcopy(static), None, channels_last)
        if reference is not None:
            other = copy.deepcopy(reference)
            contenders[f"reference{fmt}, random sub-network per step"] = (
                other,
                lambda i, other=other: ref.reference_set_arch(other, archs[i]),
                channels_last,
            )
            contenders[f"reference{fmt}, largest sub-network"] = (
                other,
                lambda i, other=other: ref.reference_set_largest(other),
                channels_last,
            )

    print(
        f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, "
        f"resolution {args.resolution}, {args.steps} timed steps x {args.rounds} rounds"
    )
    if reference is None:
        print(
            f"reference package not importable ({ref.REFERENCE_IMPORT_ERROR}); "
            "install it with: pip install -e '.[reference]'"
        )
    else:
        print(f"reference: ofa {ref.reference_version()}")

    best: dict[str, float] = {}
    for _ in range(args.rounds):
        for name, (model, before, channels_last) in contenders.items():
            ips = train_throughput(
                model, before, args.batch, args.resolution, args.steps, args.warmup, channels_last
            )
            best[name] = max(best.get(name, 0.0), ips)

    print("\ntraining throughput (images/s, higher is better)")
    for name, ips in best.items():
        print(f"  {name:56s} {ips:7.1f}")
    print("ratios")
    for fmt in ("", ", channels_last"):
        ratio = best[f"ours{fmt}, largest sub-network"] / best[f"extracted static largest{fmt}"]
        print(f"  {'ours largest / extracted static largest' + fmt:56s} {ratio:7.2f}")
    if reference is not None:
        for mode in ("random sub-network per step", "largest sub-network"):
            for fmt in ("", ", channels_last"):
                ratio = best[f"ours{fmt}, {mode}"] / best[f"reference{fmt}, {mode}"]
                print(f"  {f'ours / reference{fmt}, {mode}':56s} {ratio:7.2f}")
            ratio = best[f"ours, channels_last, {mode}"] / best[f"reference, {mode}"]
            print(f"  {f'ours channels_last / reference as shipped, {mode}':56s} {ratio:7.2f}")

    # Extraction time: a new random arch each call, median.
    print("\nextraction (ms per sub-network, median of 10 random archs)")
    ours.eval()
    extract_archs = iter([space.sample(random.Random(100 + i)) for i in range(10)])
    ours_ms = 1000 * median_seconds(lambda: ours.extract(next(extract_archs)), 10)
    print(f"  ours                                       {ours_ms:7.1f}")
    if reference is not None:
        reference.eval()
        ref_archs = iter([space.sample(random.Random(100 + i)) for i in range(10)])

        def ref_extract() -> None:
            ref.reference_set_arch(reference, next(ref_archs))
            ref.reference_extract(reference)

        ref_ms = 1000 * median_seconds(ref_extract, 10)
        print(f"  reference                                  {ref_ms:7.1f}")
        print(f"  reference / ours                           {ref_ms / ours_ms:7.2f}")

    print("\nbatch-1 eval latency of extracted nets at 224 (ms, median of 30)")
    for label, arch in (("smallest", space.smallest(224)), ("largest", space.largest(224))):
        ms = measure_latency(ours.extract(arch), 224, threads=args.threads).median_ms
        print(f"  ours, {label:36s} {ms:7.1f}")
    if reference is not None:
        ref.reference_set_largest(reference)
        ms = measure_latency(ref.reference_extract(reference), 224, threads=args.threads)
        print(f"  reference, largest                         {ms.median_ms:7.1f}")


if __name__ == "__main__":
    main()
