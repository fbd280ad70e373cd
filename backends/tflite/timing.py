"""LiteRT as the tflite targets' layer timer: interleaved medians of small ONNX models converted to TFLite.

The depthwise pass asks the target's runtime whether a depthwise + pointwise pair beats the conv it
replaces (``--dw-latency``). ONNX Runtime's CPU depthwise kernel is slow for small multipliers (pairs
measured 1.1-2.2x slower than the conv); XNNPACK has fast depthwise kernels, so the answer for a tflite
target is LiteRT's, at the target's thread count.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edgec import model_io, runtime

RUNTIME = "LiteRT (XNNPACK)"


def layer_timer(models: Sequence[bytes], feed: dict[str, np.ndarray], runs: int = 40, warmup: int = 5,
                threads: int = 2) -> list[float]:
    """Median ms of each ONNX model (serialized, float, static shapes) run in LiteRT, taken in turn."""
    from edgec.backends.tflite import LiteRTModel, convert

    lites = []
    for data in models:
        model = model_io.from_bytes(data)
        flat, _ = convert(model, "fp32")
        lite = LiteRTModel(flat, model, threads=threads)
        lite.set_inputs(feed)
        lites.append(lite)
    return runtime.interleaved_medians([lite.interp.invoke for lite in lites], runs=runs, warmup=warmup)
