"""Latency check for the depthwise pass: time one conv against its depthwise + pointwise pair in ORT.

Helpers of ``passes/depthwise.py``. Fewer MACs do not always mean faster: ONNX Runtime's CPU depthwise
kernel is memory-bound and slow for small channel multipliers at small spatial sizes, and a pair reads and
writes an extra Cin*r x H x W tensor. So in latency mode each replacement is timed in isolation at the
layer's real input shape: two one-layer models, run alternately in one process (so machine load hits both
alike), medians of the per-run times.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edgec import runtime

from .depthwise_layers import Layer


def interleaved_ms(sessions: Sequence[ort.InferenceSession], feed: dict[str, np.ndarray], runs: int = 40,
                   warmup: int = 5) -> list[float]:
    """Median ms of each session over ``runs`` runs taken in turn."""
    feeds = [runtime.input_feed(s, feed) for s in sessions]
    calls = [lambda s=s, f=f: s.run(None, f) for s, f in zip(sessions, feeds)]
    return runtime.interleaved_medians(calls, runs=runs, warmup=warmup)


def time_pair(layer: Layer, dw: np.ndarray, pw: np.ndarray, runs: int = 40, threads: int = 2,
              timer: Callable[[Sequence[bytes], dict[str, np.ndarray]], list[float]] | None = None) -> dict[str, Any]:
    """Latency of the layer's conv vs the replacing pair at its real input shape, in ``timer`` (the target
    runtime's; ONNX Runtime when None): ms and pair/conv ratios."""
    shape = layer.extra.get("input_shape")
    if not shape:
        raise ValueError(f"{layer.node.name}: input shape unknown")
    geometry = {k: a.value for k, a in layer.node.attributes.items()
                if k in ("kernel_shape", "strides", "pads", "dilations", "auto_pad")}
    bias = layer.bias if layer.bias is not None else np.zeros(layer.cout, layer.weight.dtype)
    conv = _model([helper.make_node("Conv", ["x", "w", "b"], ["y"], **geometry)],
                  {"w": layer.weight, "b": bias}, shape)
    pair = _model([helper.make_node("Conv", ["x", "dw"], ["z"], group=layer.cin, **geometry),
                   helper.make_node("Conv", ["z", "pw", "b"], ["y"], kernel_shape=[1, 1])],
                  {"dw": dw, "pw": pw, "b": bias}, shape)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)  # timing only: values do not matter
    if timer is None:
        sessions = [runtime.session(m, threads=threads, optimization="all", spinning=False) for m in (conv, pair)]

        def timer(models: Sequence[bytes], feed: dict[str, np.ndarray]) -> list[float]:
            return interleaved_ms(sessions, feed, runs=runs)
    # Measured twice: on a shared machine one measurement of the same layer swung from x0.7 to x4.4, so the
    # pair counts as faster only when both agree (``ratio`` is the less favourable of the two).
    first, second = (timer([conv, pair], {"x": x}) for _ in range(2))
    ratios = [first[1] / first[0], second[1] / second[0]]
    return {"conv_ms": float(np.median([first[0], second[0]])), "pair_ms": float(np.median([first[1], second[1]])),
            "ratio": max(ratios), "ratios": ratios}


def _model(nodes: list[onnx.NodeProto], inits: dict[str, np.ndarray], shape: list[int]) -> bytes:
    graph = helper.make_graph(nodes, "layer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()
