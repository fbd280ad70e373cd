"""Small helpers the converter and the op handlers share (no Converter state of their own)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir

from edgec.graph import attr

from .writer import ActFn, Quant

if TYPE_CHECKING:
    from .converter import Converter


def quantize_tensor(c: np.ndarray) -> tuple[np.ndarray, Quant]:
    """Per-tensor asymmetric int8 of a float constant (range widened to include 0, as TFLite requires)."""
    lo, hi = min(float(c.min()), 0.0), max(float(c.max()), 0.0)
    scale = (hi - lo) / 255.0 if hi > lo else 1.0
    zp = int(np.clip(round(-128 - lo / scale), -128, 127))
    arr = np.clip(np.round(c / scale) + zp, -128, 127).astype(np.int8)
    return arr, Quant((scale,), (zp,))


def clip_bounds(cv: Converter, node: ir.Node) -> tuple[float, float]:
    if cv.opset < 11:
        return float(attr(node, "min", -np.inf)), float(attr(node, "max", np.inf))
    lo = cv.const(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else None
    hi = cv.const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
    return (float(lo) if lo is not None else -np.inf), (float(hi) if hi is not None else np.inf)


def activation_kind(cv: Converter, node: ir.Node) -> int | None:
    """The TFLite fused activation equal to ``node``, or None."""
    if node.op_type == "Relu":
        return ActFn.RELU
    if node.op_type == "Clip":
        if len(node.inputs) > 1 and any(v is not None and cv.const(v) is None for v in node.inputs[1:]):
            return None
        bounds = clip_bounds(cv, node)
        return {(0.0, 6.0): ActFn.RELU6, (-1.0, 1.0): ActFn.RELU_N1_TO_1, (0.0, np.inf): ActFn.RELU}.get(bounds)
    return None


def too_coarse(q: Quant | None, required: Quant | None) -> bool:
    """Whether an int8 kernel with fixed output scale ``required`` would lose most of the precision
    the QDQ graph asked for (its output range is much narrower than the function's): then the op runs
    in float between DEQUANTIZE and QUANTIZE."""
    return q is not None and required is not None and q.scale[0] < required.scale[0] / 4


def ints(node: ir.Node, name: str, n: int, default: int) -> list[int]:
    v = attr(node, name, None)
    return [int(x) for x in v] if v is not None else [default] * n
