"""BN recalibration and evaluation of a sub-network in ONNX Runtime.

The same measurement as :func:`~onceforall.evaluation.recalibrate_bn` followed by
:func:`~onceforall.evaluation.evaluate`: BN statistics re-estimated as a cumulative
average over the calibration batches, each batch normalised with its own statistics,
then top-1 in eval mode. Eager PyTorch spends most of a small network's time outside
the arithmetic; ONNX Runtime runs the same graph several times faster on a CPU
(docs/benchmarks.md, "Measuring one sub-network: eager PyTorch against ONNX Runtime").

The network is exported once, with its BN layers kept as ONNX ``BatchNormalization``
nodes (not folded into the convolutions) whose running statistics are named after the
layer. Two sessions run that graph: one with every BN node in training mode, which
normalises each batch with its own statistics and returns them (the calibration pass),
then the same graph in inference mode with the recalibrated statistics written in
(ONNX Runtime folds BN into the convolutions when it loads it). Statistics and top-1
agree with PyTorch's to float rounding (``tests/test_evaluation_ort.py``).
"""

from __future__ import annotations

import copy
import itertools
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from ..storage.onnx_export import ExportError, export_onnx, require
from . import _images, score_logits

__all__ = ["OrtNetwork", "predict", "recalibrate_and_evaluate"]

_BatchNorm = nn.modules.batchnorm._BatchNorm


def _bn_names(net: nn.Module) -> list[str]:
    return [name for name, module in net.named_modules() if isinstance(module, _BatchNorm)]


class OrtNetwork:
    """``net`` (an ordinary network on the CPU) exported once for ONNX Runtime, BN apart.

    :meth:`recalibrate` re-estimates the BN statistics (in ``net`` too, in place);
    :meth:`predict` yields logits with the statistics ``net`` has. ``image_shape`` is
    ``(channels, height, width)`` of the images both will see; the batch size is free.
    """

    def __init__(
        self, net: nn.Module, image_shape: Sequence[int], *, threads: int | None = None
    ) -> None:
        self.net = net.cpu().eval()
        self.image_shape = tuple(int(s) for s in image_shape)
        self.threads = threads or torch.get_num_threads()
        self.names = _bn_names(self.net)
        self._model = _export_keeping_bn(self.net, self.names, self.image_shape)
        self._write_statistics()
        self._inference: Any = None  # its session, made when first needed

    # ------------------------------------------------------------------ measuring
    @torch.no_grad()
    def recalibrate(self, calibration: Iterable, n_images: int) -> None:
        """Set the BN running statistics from up to ``n_images`` calibration images as
        :func:`~onceforall.evaluation.recalibrate_bn` would; each batch's statistics are
        computed by ONNX Runtime."""
        session = _session(_training_mode(self._model, self.names), self.threads)
        outputs = [f"bn{i}.{kind}" for i in range(len(self.names)) for kind in ("bmean", "bvar")]
        sizes: list[int] | None = None  # values per image and channel of each BN's input
        stats: list[list[np.ndarray]] = [[] for _ in self.names]  # (mean, unbiased var)
        seen = 0
        for batch in calibration:
            images = _images(batch)
            take = min(len(images), n_images - seen)
            if take <= 0:
                break
            images = images[:take].contiguous()
            if sizes is None:
                sizes = _bn_input_sizes(self.net, self.names, images[:1])
            got = session.run(outputs, {"input": images.numpy()})
            for i, (mean, var) in enumerate(zip(got[0::2], got[1::2])):
                values = take * sizes[i]  # per channel; PyTorch keeps the unbiased variance
                stats[i].append(np.stack([mean, var * (values / max(values - 1, 1))]))
            seen += take
        if seen == 0:
            raise ValueError("BN recalibration got no images from the loader")
        for name, per_batch in zip(self.names, stats):
            bn = self.net.get_submodule(name)
            # PyTorch's cumulative average (momentum None): r_k = (1 - 1/k) r_{k-1} + s_k / k.
            running = np.zeros_like(per_batch[0])
            for k, batch_stats in enumerate(per_batch, start=1):
                running = (1 - 1 / k) * running + batch_stats / k
            bn.running_mean.copy_(torch.from_numpy(running[0]))
            bn.running_var.copy_(torch.from_numpy(running[1]))
            bn.num_batches_tracked.fill_(len(per_batch))
        self._write_statistics()

    @torch.no_grad()
    def predict(self, batches: Iterable) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(logits, labels)`` for each ``(images, labels)`` batch, in eval mode."""
        if self._inference is None:
            self._inference = _session(self._model, self.threads)
        for images, labels in batches:
            out = self._inference.run(None, {"input": images.contiguous().numpy()})[0]
            yield torch.from_numpy(out), labels

    def _write_statistics(self) -> None:
        """Copy ``net``'s BN running statistics into the inference graph."""
        onnx = require("onnx", "measuring sub-networks with onnxruntime")
        values = {}
        for i, name in enumerate(self.names):
            bn = self.net.get_submodule(name)
            values[f"bn{i}.mean"] = bn.running_mean
            values[f"bn{i}.var"] = bn.running_var
        for tensor in self._model.graph.initializer:
            if tensor.name in values:
                array = values[tensor.name].detach().float().numpy()
                tensor.CopyFrom(onnx.numpy_helper.from_array(array, tensor.name))
        self._inference = None


# -------------------------------------------------------------- the one export


def _export_keeping_bn(net: nn.Module, names: list[str], image_shape: tuple[int, ...]) -> Any:
    """The ONNX model of ``net`` whose BN node for ``names[i]`` reads its statistics from
    initializers ``bn{i}.mean`` and ``bn{i}.var`` (every other initializer as exported).

    A copy is exported with each BN's running mean set to its index + 1, so that each
    ``BatchNormalization`` node is matched to its layer by value, whatever the exporter
    named or shared."""
    onnx = require("onnx", "measuring sub-networks with onnxruntime")
    tagged = copy.deepcopy(net).eval()
    for i, name in enumerate(names):
        tagged.get_submodule(name).running_mean.fill_(float(i + 1))
    with tempfile.TemporaryDirectory(prefix="onceforall-eval-") as tmp:
        path = Path(tmp) / "network.onnx"
        exporter = export_onnx(tagged, (2, *image_shape), path, dynamic_batch=True,
                               keep_batchnorm=True)  # fmt: skip
        model = onnx.load(str(path))
    graph = model.graph
    constants = {t.name: t for t in graph.initializer}
    identities = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity"}
    matched: dict[int, Any] = {}
    for node in graph.node:
        if node.op_type != "BatchNormalization":
            continue
        source = node.input[3]
        while source in identities:
            source = identities[source]
        tag = onnx.numpy_helper.to_array(constants[source]) if source in constants else None
        index = int(round(float(tag.flat[0]))) - 1 if tag is not None and tag.size else -1
        if not 0 <= index < len(names) or index in matched:
            break
        matched[index] = node
        node.input[3], node.input[4] = f"bn{index}.mean", f"bn{index}.var"
    if sorted(matched) != list(range(len(names))):
        raise ExportError(
            f"the {exporter} ONNX exporter did not keep the network's {len(names)} BN layers "
            "as BatchNormalization nodes: measure with runtime 'torch' instead"
        )
    for i, name in enumerate(names):
        channels = net.get_submodule(name).num_features
        graph.initializer.append(onnx.numpy_helper.from_array(np.zeros(channels, np.float32),
                                                              f"bn{i}.mean"))  # fmt: skip
        graph.initializer.append(onnx.numpy_helper.from_array(np.ones(channels, np.float32),
                                                              f"bn{i}.var"))  # fmt: skip
    _drop_unused(graph)
    return model


def _drop_unused(graph: Any) -> None:
    """Remove the nodes and initializers nothing reads any more (the exported running
    statistics and the Identity nodes that shared them)."""
    while True:
        wanted = {o.name for o in graph.output} | {i for n in graph.node for i in n.input}
        dead = [n for n in graph.node if not any(o in wanted for o in n.output)]
        for node in dead:
            graph.node.remove(node)
        if not dead:
            break
    unused = [t for t in graph.initializer if t.name not in wanted]
    for tensor in unused:
        graph.initializer.remove(tensor)


def _training_mode(model: Any, names: list[str]) -> Any:
    """A copy of ``model`` whose BN nodes normalise each batch with its own statistics
    and return them as outputs ``bn{i}.bmean`` and ``bn{i}.bvar`` (biased variance)."""
    onnx = require("onnx", "measuring sub-networks with onnxruntime")
    calibration = onnx.ModelProto()
    calibration.CopyFrom(model)
    graph = calibration.graph
    for node in graph.node:
        if node.op_type != "BatchNormalization":
            continue
        index = node.input[3][len("bn") : -len(".mean")]
        keep = [a for a in node.attribute if a.name not in ("training_mode", "momentum")]
        del node.attribute[:]
        node.attribute.extend(keep)
        # momentum 0: the "running" outputs are the batch's own mean and variance.
        node.attribute.extend(
            [onnx.helper.make_attribute("training_mode", 1),
             onnx.helper.make_attribute("momentum", 0.0)]
        )  # fmt: skip
        del node.output[1:]
        node.output.extend([f"bn{index}.bmean", f"bn{index}.bvar"])
    for i in range(len(names)):
        for kind in ("bmean", "bvar"):
            graph.output.append(
                onnx.helper.make_tensor_value_info(f"bn{i}.{kind}", onnx.TensorProto.FLOAT, None)
            )
    return calibration


def _bn_input_sizes(net: nn.Module, names: list[str], image: torch.Tensor) -> list[int]:
    """Values per channel of each BN layer's input for one image (its height x width)."""
    sizes: dict[str, int] = {}
    hooks = [
        net.get_submodule(name).register_forward_hook(
            lambda module, inputs, output, name=name: sizes.__setitem__(
                name, inputs[0][0, 0].numel()
            )
        )
        for name in names
    ]
    try:
        net(image)
    finally:
        for hook in hooks:
            hook.remove()
    missing = [name for name in names if name not in sizes]
    if missing:
        raise ValueError(f"BN layer {missing[0]!r} is not run by the network's forward")
    return [sizes[name] for name in names]


def _session(model: Any, threads: int):  # -> onnxruntime.InferenceSession
    ort = require("onnxruntime", "measuring sub-networks with onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


# ---------------------------------------------------------------- entry points


def _first(batches: Iterable) -> tuple[tuple[int, ...], Iterator]:
    """The image shape of the first batch, and an iterator over all of them."""
    iterator = iter(batches)
    first = next(iterator, None)
    if first is None:
        raise ValueError("got no batches to measure")
    return tuple(_images(first).shape[1:]), itertools.chain([first], iterator)


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
    shape, calibration = _first(calibration)
    measured = OrtNetwork(net, shape, threads=threads)
    measured.recalibrate(calibration, n_images)
    return score_logits(measured.predict(test))


@torch.no_grad()
def predict(
    net: nn.Module, batches: Iterable, *, threads: int | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(logits, labels)`` for each ``(images, labels)`` batch, the logits computed
    by ONNX Runtime from ``net`` in eval mode, with its BN statistics as they are."""
    shape, batches = _first(batches)
    yield from OrtNetwork(net, shape, threads=threads).predict(batches)
