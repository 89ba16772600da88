"""Does ``ofa finetune`` train as fast as a plain training loop of the same network?

Fine-tuning runs the static sub-network through the epoch runner of ``ofa train``
(checks, gradient averaging, buffer broadcast, the per-step bookkeeping). This times,
side by side in one process, steps of that runner and steps of the plainest loop
(forward, label-smoothed cross-entropy, backward, SGD step) on the same network, batches
and distillation teacher, alternating blocks of steps so that load hits both alike; and,
for scale, steps of the supernet at the same sub-network (what fine-tuning would cost if
it trained the supernet restricted to one arch).

    OMP_NUM_THREADS=1 .venv/bin/python bench/finetune_speed.py [--steps 30] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from onceforall import create_supernet
from onceforall.latency.measure import device_description
from onceforall.training.checkpointing import Checkpointer
from onceforall.training.config import StageConfig, TrainConfig
from onceforall.training.distributed import DistEnv
from onceforall.training.epoch import EpochRunner, StagePlan
from onceforall.training.finetune import SingleArch, StaticTrainee
from onceforall.training.loading import sgd
from onceforall.training.losses import supernet_loss
from onceforall.training.schedule import Position


def batches(n: int, batch: int, r: int, classes: int) -> list:
    gen = torch.Generator().manual_seed(0)
    images = [torch.randn(batch, 3, r, r, generator=gen) for _ in range(n)]
    return [(x, torch.randint(0, classes, (batch,), generator=gen)) for x in images]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--supernet", default="ofa_mbv3_w1.0")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30, help="per block")
    parser.add_argument("--rounds", type=int, default=5, help="blocks of each, alternated")
    args = parser.parse_args()
    torch.manual_seed(0)
    net = create_supernet(args.supernet, num_classes=args.classes, resolutions=[args.resolution])
    arch = net.space.sample(3)
    teacher = net.extract(net.space.largest()).eval().requires_grad_(False)
    data = batches(args.steps, args.batch, args.resolution, args.classes)
    config = TrainConfig(
        resolutions=[args.resolution], batch_size=args.batch, checkpoint_every_steps=0
    )
    stage = StageConfig("finetune", epochs=1000, lr=0.005)
    env = DistEnv()  # one CPU worker

    def runner_block(trainee, optimizer, space) -> float:
        plan = StagePlan(stage, space, 0.005, args.steps, args.steps * 1000)
        checkpoints = Checkpointer(None, config, trainee, enabled=False)
        runner = EpochRunner(trainee, optimizer, config, env, checkpoints, teacher=teacher)
        start = time.perf_counter()
        runner.run(plan, Position(), iter(data), on_step=lambda *a: None)
        return time.perf_counter() - start

    def plain_block(model, optimizer) -> float:
        model.train()
        start = time.perf_counter()
        for images, labels in data:
            with torch.no_grad():
                probs = torch.softmax(teacher(images), dim=1)
            optimizer.zero_grad(set_to_none=True)
            loss = supernet_loss(model(images), labels, probs, 0.1, 1.0)
            loss.backward()
            optimizer.step()
        return time.perf_counter() - start

    static = net.extract(arch)
    trainee = StaticTrainee(static)
    plain = net.extract(arch)
    optimizers = [sgd(m.parameters(), config, 0.005, None) for m in (trainee, plain, net)]
    names = [
        "ofa finetune (epoch runner, static net)",
        "plain loop (static net)",
        "epoch runner on the supernet at this arch",
    ]
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(args.rounds):
        times[names[0]].append(runner_block(trainee, optimizers[0], SingleArch(arch)))
        times[names[1]].append(plain_block(plain, optimizers[1]))
        times[names[2]].append(runner_block(net, optimizers[2], SingleArch(arch)))
    threads, load = torch.get_num_threads(), os.getloadavg()[0]
    print(f"{device_description()}; torch threads {threads}; load {load:.2f}")
    print(f"{args.supernet} at {arch}, batch {args.batch}, {args.steps} steps x {args.rounds}")
    base = statistics.median(times[names[1]])
    for name, values in times.items():
        med = statistics.median(values)
        print(
            f"{name:45s} {args.steps * args.batch / med:7.0f} img/s  "
            f"({med / args.steps * 1000:.1f} ms/step, {med / base:.2f}x the plain loop)"
        )


if __name__ == "__main__":
    main()
