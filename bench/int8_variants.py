"""Which ONNX Runtime INT8 quantization is fastest here? One network, every variant.

OFA-MobileNetV3 w1.0's smallest or largest sub-network at 224 px (1,000 classes, random
weights: speed does not depend on them), exported to ONNX, pre-processed, then quantized
by ``onnxruntime.quantization.quantize_static`` in several ways (QDQ or QOperator
format; the convolutions only, or more operators; unsigned activations, per-channel
signed weights); every model is timed at batch 1 with one thread, in interleaved rounds
in a seeded random order, against the FP32 model. What ``onceforall`` uses is
``latency.backends.onnxruntime.QUANTIZED_OPS`` in QDQ format (the variant named so; the
first committed results, bench/results/int8_variants.txt, predate that choice and name
the convolutions-only variant "onceforall").

    OMP_NUM_THREADS=1 .venv/bin/python bench/int8_variants.py largest [--rounds 10]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

import onceforall
from onceforall.latency.backends.onnxruntime import QUANTIZED_OPS, session
from onceforall.latency.measure import device_description
from onceforall.storage.onnx_export import export_onnx

CONV = ["Conv", "Gemm", "MatMul"]
MORE = [*CONV, "Add", "Mul", "GlobalAveragePool", "HardSwish", "HardSigmoid", "Relu"]
assert set(MORE) == set(QUANTIZED_OPS)  # what onceforall quantizes
VARIANTS = {
    "QDQ, convolutions": dict(quant_format=QuantFormat.QDQ, op_types_to_quantize=CONV),
    "QDQ, every operator": dict(quant_format=QuantFormat.QDQ),
    "QOperator, every operator": dict(quant_format=QuantFormat.QOperator),
    "QOperator, convolutions": dict(quant_format=QuantFormat.QOperator, op_types_to_quantize=CONV),
    "QDQ, conv+add+mul+pool+activations (onceforall)": dict(
        quant_format=QuantFormat.QDQ, op_types_to_quantize=MORE
    ),
    "QDQ, convolutions, signed activations": dict(
        quant_format=QuantFormat.QDQ, op_types_to_quantize=CONV, activation_type=QuantType.QInt8
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("network", choices=("smallest", "largest"))
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    print(device_description())
    net = onceforall.create_supernet("ofa_mbv3_w1.0", num_classes=1000, resolutions=[224])
    sub = net.extract(getattr(net.space, args.network)(224)).eval()
    folder = Path(tempfile.mkdtemp(prefix="int8-variants-"))
    fp32, prepared = folder / "fp32.onnx", folder / "prepared.onnx"
    export_onnx(sub, (1, 3, 224, 224), fp32)
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([x, x])

        def get_next(self) -> dict | None:
            batch = next(self.batches, None)
            return None if batch is None else {"input": batch}

    sessions = {"FP32": session(fp32, 1)}
    for i, (name, options) in enumerate(VARIANTS.items()):
        options = {"activation_type": QuantType.QUInt8, **options}
        out = folder / f"v{i}.onnx"
        quantize_static(
            str(prepared),
            str(out),
            Reader(),
            per_channel=True,
            weight_type=QuantType.QInt8,
            **options,
        )
        sessions[name] = session(out, 1)
    feed = {"input": x}
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for runs in sessions.values():
        for _ in range(3):
            runs.run(None, feed)
    order = list(sessions)
    rng = random.Random(0)
    for _ in range(args.rounds):
        rng.shuffle(order)
        for name in order:
            for _ in range(2):
                sessions[name].run(None, feed)
            start = time.perf_counter()
            sessions[name].run(None, feed)
            times[name].append(time.perf_counter() - start)
    base = np.median(times["FP32"])
    print(f"{args.network} r224, batch 1, 1 thread, {args.rounds} interleaved rounds")
    for name, samples in times.items():
        print(f"| {name} | {np.median(samples) * 1000:.2f} ms | {base / np.median(samples):.2f}x |")


if __name__ == "__main__":
    main()
