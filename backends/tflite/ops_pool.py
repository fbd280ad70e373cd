"""Handlers for pooling and reductions: MaxPool/AveragePool, global pools, ReduceMean/Max/Sum.

MaxPool padding that SAME cannot express is an explicit PAD (XNNPACK takes PAD, not PADV2); an
AveragePool whose ONNX divisor differs from TFLite's is zero-padded, averaged VALID and rescaled by
window / count per position.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from edgec.errors import EdgecError
from edgec.graph import attr, consumers

from . import layout as L
from .converter import F32, Converter
from .helpers import clip_bounds, ints
from .ops_shape import pad_nhwc
from .registry import register
from .writer import ActFn, BuiltinOp, Padding, options


def pool(cv: Converter, node: ir.Node) -> None:
    x, out = node.inputs[0], node.outputs[0]
    xs, os_ = cv.shape(x), cv.shape(out)
    if len(xs) != 4:
        raise EdgecError(f"node '{node.name}': {node.op_type} on rank {len(xs)} has no TFLite mapping")
    is_max = node.op_type == "MaxPool"
    if is_max and len(node.outputs) > 1 and node.outputs[1] is not None and consumers(node.outputs[1]):
        raise EdgecError(f"node '{node.name}': MaxPool indices output has no TFLite mapping")
    kernel = ints(node, "kernel_shape", 2, 1)
    strides, dil = ints(node, "strides", 2, 1), ints(node, "dilations", 2, 1)
    if dil != [1, 1]:
        raise EdgecError(f"node '{node.name}': dilated pooling has no TFLite mapping")
    given = L.onnx_pads(attr(node, "auto_pad", "NOTSET"), xs[2:], kernel, strides, dil, attr(node, "pads", None))
    # ceil_mode: the last window may start inside the input and run past the end pad; widen the end pad.
    pads = [(lo, hi + max(0, (o - 1) * st + k - (n + lo + hi)))
            for (lo, hi), o, st, k, n in zip(given, os_[2:], strides, kernel, xs[2:])]
    act_fn, out_v, fused = cv.fused_act(out)
    padding = L.tflite_padding(xs[2:], kernel, strides, dil, pads)
    include_pad = bool(attr(node, "count_include_pad", 0))
    rescale = None
    if not is_max:
        # Elements each window averages over: the input only, or input and the given pads (never the
        # ceil-mode extension), as ONNX Runtime counts them.
        counts = [_window_counts(n, k, st, lo, o, (-lo, n + hi) if include_pad else (0, n))
                  for n, k, st, (lo, hi), o in zip(xs[2:], kernel, strides, given, os_[2:])]
        if not (padding == "SAME" and not include_pad):
            # TFLite SAME divides by the valid elements only, which is count_include_pad=0 exactly.
            # Otherwise: zero-pad, average over the full window (VALID), and where ONNX divides by
            # fewer elements rescale by window / count (a constant map, in float).
            padding = "VALID" if padding == "VALID" else None
            if not all(np.all(c == k) for c, k in zip(counts, kernel)):
                rescale = np.outer(kernel[0] / counts[0], kernel[1] / counts[1]).astype(np.float32)
    # An average runs in float in an int8 graph (between DEQUANTIZE and QUANTIZE): XNNPACK has no int8
    # AVERAGE_POOL_2D, and TFLite's own kernel split the delegated graph (PP-OCRv4 rec's 3 x 2 pool).
    q = None if rescale is not None or not is_max else cv.quant_mode([x], out_v)
    xin = cv.act(x, L.NHWC, "int8" if q else "float")
    if padding is None:
        fill = float(np.finfo(np.float32).min) if is_max else None
        if is_max and _never_below_pad_zero(cv, x, xin):
            # Zero padding is as good as -inf for a max over non-negative values, and PAD (unlike
            # PADV2) stays inside the XNNPACK delegate.
            fill = None
        xin = pad_nhwc(cv, xin, pads, node.name, fill)
        padding = "VALID"
    opts = options("Pool2DOptionsT", padding=Padding.SAME if padding == "SAME" else Padding.VALID,
                   strideH=strides[0], strideW=strides[1], filterHeight=kernel[0], filterWidth=kernel[1],
                   fusedActivationFunction=ActFn.NONE if rescale is not None else act_fn)
    code = BuiltinOp.MAX_POOL_2D if is_max else BuiltinOp.AVERAGE_POOL_2D
    if rescale is None:
        cv.emit(code, [xin], out_v, L.NHWC, q, opts, required=cv.quant_of(x) if q else None)
        cv.absorb(fused)
        return
    mid = cv.b.tensor(f"{node.name}_sum", L.shape_in(L.NHWC, os_), F32)
    cv.b.op(code, [xin], [mid], opts)
    cv.emit(BuiltinOp.MUL, [mid, cv.fconst(f"{node.name}_count", rescale.reshape(1, os_[2], os_[3], 1))],
            out_v, L.NHWC, None, options("MulOptionsT", fusedActivationFunction=act_fn))
    cv.absorb(fused)


def _never_below_pad_zero(cv: Converter, x: ir.Value, idx: int) -> bool:
    """Whether PAD's fill (0, or the zero point in int8) is <= every value of ``x``: an int8 tensor
    whose zero point is -128, or the output of a Relu / Clip(min >= 0)."""
    quant = cv.b.info[idx].quant
    if quant is not None:
        return quant.zero_point[0] == -128
    p = x.producer()
    return p is not None and (p.op_type == "Relu" or (p.op_type == "Clip" and clip_bounds(cv, p)[0] >= 0))


def _window_counts(n: int, k: int, stride: int, begin: int, out: int, bounds: tuple[int, int]) -> np.ndarray:
    """Per output position along one axis: how many window elements lie within ``bounds`` (input
    coordinates, end exclusive)."""
    start = np.arange(out) * stride - begin
    return (np.minimum(start + k, bounds[1]) - np.maximum(start, bounds[0])).astype(np.float64)


def global_pool(cv: Converter, node: ir.Node) -> None:
    x, out = node.inputs[0], node.outputs[0]
    s = cv.slot(x)
    rank = len(s.shape)
    q = cv.quant_mode([x], out)
    axes = [L.axis_in(s.perm, a) for a in range(2, rank)]
    code = BuiltinOp.MEAN if node.op_type == "GlobalAveragePool" else BuiltinOp.REDUCE_MAX
    required = cv.quant_of(x) if (q and code == BuiltinOp.REDUCE_MAX) else None
    cv.emit(code, [cv.act(x, s.perm, "int8" if q else "float"), cv.b.i32(f"{node.name}_axes", sorted(axes))],
            out, s.perm, q, options("ReducerOptionsT", keepDims=True), required=required)


def reduce(cv: Converter, node: ir.Node) -> None:
    x, out = node.inputs[0], node.outputs[0]
    s = cv.slot(x)
    rank = len(s.shape)
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        axes_arr = cv.const(node.inputs[1])
        if axes_arr is None:
            raise EdgecError(f"node '{node.name}': {node.op_type} with non-constant axes has no TFLite mapping")
        axes = [int(a) % rank for a in axes_arr.reshape(-1)]
    else:
        axes = [int(a) % rank for a in attr(node, "axes", list(range(rank)))]
    if not axes:
        axes = [] if attr(node, "noop_with_empty_axes", 0) else list(range(rank))
    keep = bool(attr(node, "keepdims", 1))
    code = {"ReduceMean": BuiltinOp.MEAN, "ReduceMax": BuiltinOp.REDUCE_MAX, "ReduceSum": BuiltinOp.SUM}[node.op_type]
    q = cv.quant_mode([x], out) if code != BuiltinOp.SUM else None
    perm = s.perm if keep else L.after_reduce(s.perm, axes)
    taxes = sorted(L.axis_in(s.perm, a) for a in axes)
    required = cv.quant_of(x) if (q and code == BuiltinOp.REDUCE_MAX) else None
    cv.emit(code, [cv.act(x, s.perm, "int8" if q else "float"), cv.b.i32(f"{node.name}_axes", taxes)],
            out, perm, q, options("ReducerOptionsT", keepDims=keep), required=required)


register({"MaxPool": pool, "AveragePool": pool, "GlobalAveragePool": global_pool, "GlobalMaxPool": global_pool,
    "ReduceMean": reduce, "ReduceMax": reduce, "ReduceSum": reduce})
