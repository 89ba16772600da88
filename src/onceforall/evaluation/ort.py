"""BN recalibration and evaluation of a sub-network in ONNX Runtime.

The same measurement as :func:`~onceforall.evaluation.recalibrate_bn` followed by
:func:`~onceforall.evaluation.evaluate`: BN statistics re-estimated as a cumulative
average over the calibration batches, each batch normalised with its own statistics,
then top-1 in eval mode. Eager PyTorch spends most of a small network's time outside
the arithmetic; ONNX Runtime runs the same graph several times faster on a CPU
(docs/benchmarks.md, "Measuring one sub-network: eager PyTorch against ONNX Runtime").

Two graphs are exported per network: one whose BN layers normalise with their batch's
statistics and return them (the calibration pass), then the recalibrated network itself.
Statistics and top-1 agree with PyTorch's to float rounding
(``tests/test_evaluation_ort.py``).
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
from torch import nn

from ..storage.onnx_export import export_onnx, require
from . import _images, score_logits

__all__ = ["predict", "recalibrate", "recalibrate_and_evaluate"]


class _BatchStatsBN(nn.Module):
    """A BN layer in train mode that also records the batch mean and (biased) variance it
    normalised with, and the number of values per channel they were taken over."""

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm, graph: _CalibrationGraph) -> None:
        super().__init__()
        shape = (1, -1, 1, 1)  # broadcast over NCHW, without reshapes in the graph
        weight = bn.weight if bn.weight is not None else torch.ones_like(bn.running_mean)
        bias = bn.bias if bn.bias is not None else torch.zeros_like(bn.running_mean)
        self.register_buffer("weight", weight.detach().reshape(shape).clone())
        self.register_buffer("bias", bias.detach().reshape(shape).clone())
        self.eps = bn.eps
        self.graph = [graph]  # a list, so that the graph is not registered as a child

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"expected NCHW input to a BN layer, got {tuple(x.shape)}")
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        centred = x - mean
        var = (centred * centred).mean(dim=(0, 2, 3), keepdim=True)
        self.graph[0].record(self, mean, var, x)
        return centred * (self.weight / torch.sqrt(var + self.eps)) + self.bias


class _CalibrationGraph(nn.Module):
    """``net`` (a copy) with every BN replaced by :class:`_BatchStatsBN`; its output is
    the batch mean and variance of each BN, in the order the forward runs them."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = copy.deepcopy(net).eval()
        self.names: dict[nn.Module, str] = {}
        self.order: list[tuple[str, int]] = []  # (BN's name in ``net``, values per image)
        self._stats: list[torch.Tensor] = []
        self._probing = False
        for name, module in list(self.net.named_modules()):
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                replacement = _BatchStatsBN(module, self)
                parent, _, leaf = name.rpartition(".")
                setattr(self.net.get_submodule(parent) if parent else self.net, leaf, replacement)
                self.names[replacement] = name

    def record(
        self, bn: _BatchStatsBN, mean: torch.Tensor, var: torch.Tensor, x: torch.Tensor
    ) -> None:
        self._stats.extend((mean, var))
        if self._probing:
            self.order.append((self.names[bn], x.shape[2] * x.shape[3]))

    @torch.no_grad()
    def probe(self, x: torch.Tensor) -> list[tuple[str, int]]:
        """Run eagerly once to learn the order the BN layers run in and their sizes
        (read outside the export, where they would be traced or symbolic)."""
        self._probing, self.order = True, []
        try:
            self(x)
        finally:
            self._probing = False
        return list(self.order)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        self._stats = []
        self.net(x)
        return tuple(self._stats)


def _session(path: Path, threads: int):  # -> onnxruntime.InferenceSession
    ort = require("onnxruntime", "measuring sub-networks with onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@torch.no_grad()
def recalibrate_and_evaluate(
    net: nn.Module,
    calibration: Iterable,
    n_images: int,
    test: Iterable,
    *,
    threads: int | None = None,
) -> dict[str, float]:
    """Recalibrate the BN statistics of ``net`` (an ordinary network, in place) on up to
    ``n_images`` calibration images, then return its top-1 (percent), mean cross-entropy
    and image count on ``test``, all computed by ONNX Runtime on the CPU with ``threads``
    threads (default: PyTorch's). Both iterables yield ``(images, labels)`` at the
    resolution to measure at."""
    recalibrate(net, calibration, n_images, threads=threads)
    return score_logits(predict(net, test, threads=threads))


@torch.no_grad()
def recalibrate(
    net: nn.Module, calibration: Iterable, n_images: int, *, threads: int | None = None
) -> nn.Module:
    """Set the BN running statistics of ``net`` (in place, on the CPU) as
    :func:`~onceforall.evaluation.recalibrate_bn` would, with ONNX Runtime computing each
    calibration batch's statistics; return ``net``."""
    threads = threads or torch.get_num_threads()
    net = net.cpu().eval()
    stats: dict[str, list[torch.Tensor]] = {}  # per BN: (mean, unbiased var) per batch
    session = order = None
    seen = 0
    with tempfile.TemporaryDirectory(prefix="onceforall-eval-") as tmp:
        for batch in calibration:
            images = _images(batch)
            take = min(len(images), n_images - seen)
            if take <= 0:
                break
            images = images[:take].contiguous()
            if session is None:
                graph = _CalibrationGraph(net)
                order = graph.probe(images[:1])
                names = [f"{kind}{i}" for i in range(len(order)) for kind in ("mean", "var")]
                path = Path(tmp) / "calibration.onnx"
                export_onnx(
                    graph, (2, *images.shape[1:]), path, dynamic_batch=True,
                    output_names=names, batch_outputs=(),
                )  # fmt: skip
                session = _session(path, threads)
            assert order is not None
            outputs = session.run(None, {"input": images.numpy()})
            for (name, hw), mean, var in zip(order, outputs[0::2], outputs[1::2]):
                values = take * hw  # per channel; PyTorch keeps the unbiased variance
                unbiased = var * (values / max(values - 1, 1))
                stats.setdefault(name, []).append(torch.from_numpy(np.stack([mean, unbiased])))
            seen += take
    if seen == 0:
        raise ValueError("BN recalibration got no images from the loader")
    for name, bn in net.named_modules():
        if not isinstance(bn, nn.modules.batchnorm._BatchNorm):
            continue
        if name not in stats:
            raise ValueError(f"BN layer {name!r} is not run by the network's forward")
        # PyTorch's cumulative average (momentum None): r_k = (1 - 1/k) r_{k-1} + s_k / k.
        running = torch.zeros_like(stats[name][0])
        for k, batch_stats in enumerate(stats[name], start=1):
            running = (1 - 1 / k) * running + batch_stats / k
        bn.running_mean.copy_(running[0].reshape(-1))
        bn.running_var.copy_(running[1].reshape(-1))
        bn.num_batches_tracked.fill_(len(stats[name]))
    return net


@torch.no_grad()
def predict(
    net: nn.Module, batches: Iterable, *, threads: int | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(logits, labels)`` for each ``(images, labels)`` batch, the logits computed
    by ONNX Runtime from ``net`` in eval mode (exported once, at the first batch's image
    size). The per-image counterpart of :func:`recalibrate_and_evaluate`'s top-1."""
    threads = threads or torch.get_num_threads()
    net = net.cpu().eval()
    with tempfile.TemporaryDirectory(prefix="onceforall-eval-") as tmp:
        session = None
        for images, labels in batches:
            if session is None:
                path = Path(tmp) / "network.onnx"
                export_onnx(net, (2, *images.shape[1:]), path, dynamic_batch=True)
                session = _session(path, threads)
            out = session.run(None, {"input": images.contiguous().numpy()})[0]
            yield torch.from_numpy(out), labels
