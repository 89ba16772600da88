"""The LiteRT converter's child process: one child converts model after model (the
per-block table converts hundreds of parts), and a child that dies between conversions
is replaced instead of failing every later one."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time

import pytest
from torch import nn

pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_litert")

from onceforall.latency.backends.litert import Converter, interpreter  # noqa: E402


def _net(width: int) -> nn.Module:
    """A small net of many tensors (39 in its state dict, BN buffers included)."""
    layers = [nn.Conv2d(3, width, 3, padding=1)]
    for _ in range(5):
        layers += [nn.BatchNorm2d(width), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1)]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10))


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def _children() -> set[int]:
    return {p.pid for p in multiprocessing.active_children()}


@pytest.mark.slow  # starts the converter's child twice (about 15 s each)
def test_one_child_converts_every_model_and_a_dead_one_is_replaced(tmp_path) -> None:
    convert = Converter()
    before = _children()
    try:
        convert(_net(8), (1, 3, 16, 16), tmp_path / "a.tflite")
        (child,) = _children() - before
        descriptors = _open_descriptors()
        kept = [_net(12) for _ in range(3)]  # alive after their conversion, as a table's parts
        for i, net in enumerate(kept):
            convert(net, (1, 3, 16, 16), tmp_path / f"b{i}.tflite")
        assert _children() - before == {child}  # the same child, not a new one
        # Nothing of the models stays open here (torch's shared memory would keep one
        # descriptor per tensor of every model converted: hundreds of parts ran out).
        assert _open_descriptors() - descriptors <= 2, sum(len(n.state_dict()) for n in kept)
        os.kill(child, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while child in _children() and time.monotonic() < deadline:
            time.sleep(0.1)
        convert(_net(16), (1, 3, 16, 16), tmp_path / "c.tflite")
        (replacement,) = _children() - before
        assert replacement != child
    finally:
        convert.close()
    assert _children() - before == set()
    for name in ("a", "b0", "b1", "b2", "c"):  # every file was written whole and runs
        runs = interpreter(tmp_path / f"{name}.tflite", threads=1)
        (source,), (target,) = runs.get_input_details(), runs.get_output_details()
        assert tuple(source["shape"]) == (1, 3, 16, 16) and tuple(target["shape"]) == (1, 10)
