"""LiteRT as the tflite targets' layer timer: interleaved medians of small ONNX models converted to TFLite.

The depthwise pass asks the target's runtime whether a depthwise + pointwise pair beats the conv it
replaces (``--dw-latency``). ONNX Runtime's CPU depthwise kernel is slow for small multipliers (pairs
measured 1.1-2.2x slower than the conv); XNNPACK has fast depthwise kernels, so the answer for a tflite
target is LiteRT's, at the target's thread count.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import onnx
import onnx_ir as ir

RUNTIME = "LiteRT (XNNPACK)"


def layer_timer(models: Sequence[bytes], feed: dict[str, np.ndarray], runs: int = 40, warmup: int = 5,
                threads: int = 2) -> list[float]:
    """Median ms of each ONNX model (serialized, float, static shapes) run in LiteRT, taken in turn."""
    from edgec.backends.tflite import LiteRTModel, convert

    lites = []
    for data in models:
        model = ir.serde.deserialize_model(onnx.ModelProto.FromString(data))
        flat, _ = convert(model, "fp32")
        lite = LiteRTModel(flat, model, threads=threads)
        lite.set_inputs(feed)
        lites.append(lite)
    for _ in range(warmup):
        for lite in lites:
            lite.interp.invoke()
    times: list[list[float]] = [[] for _ in lites]
    for i in range(runs):
        # alternate the order so a position bias under load is booked on both sides alike
        order = range(len(lites)) if i % 2 == 0 else reversed(range(len(lites)))
        for j in order:
            start = time.perf_counter()
            lites[j].interp.invoke()
            times[j].append(1e3 * (time.perf_counter() - start))
    return [float(np.median(t)) for t in times]
