"""Handlers for elementwise ops: arithmetic, activations, Softmax, Pow, BatchNormalization.

HardSigmoid is MUL/ADD+RELU6/MUL (TFLite has no HARD_SIGMOID), x / c is x * 1/c (no int8 DIV), and an
int8 HardSwish is ADD(RELU6)/MUL/MUL (XNNPACK has no int8 HARD_SWISH). The one-op HardSwish and Gelu
come from the legalize passes (passes/legalize_tflite.py); the writer maps them one to one.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from edgec.errors import EdgecError
from edgec.graph import attr

from . import layout as L
from .converter import F32, I8, Q_SIGMOID, Q_TANH, Converter
from .helpers import activation_kind, clip_bounds, too_coarse
from .ops_shape import alias
from .registry import register
from .writer import ActFn, BuiltinOp, Quant, options

_BINARY = {
    "Add": (BuiltinOp.ADD, "AddOptionsT"),
    "Sub": (BuiltinOp.SUB, "SubOptionsT"),
    "Mul": (BuiltinOp.MUL, "MulOptionsT"),
    "Div": (BuiltinOp.DIV, "DivOptionsT"),
    "Max": (BuiltinOp.MAXIMUM, "MaximumMinimumOptionsT"),
    "Min": (BuiltinOp.MINIMUM, "MaximumMinimumOptionsT"),
}


def binary(cv: Converter, node: ir.Node) -> None:
    code, opt_name = _BINARY[node.op_type]
    a, b = node.inputs[0], node.inputs[1]
    out = node.outputs[0]
    rank = len(cv.shape(out))
    acts = [v for v in (a, b) if cv.is_act(v)]
    perm = next((cv.slot(v).perm for v in acts if len(cv.slot(v).shape) == rank), L.preferred(rank))
    fusable = node.op_type in ("Add", "Sub", "Mul", "Div")
    act_fn, out_v, fused = cv.fused_act(out) if fusable else (ActFn.NONE, out, [])
    divisor = cv.const(b) if node.op_type == "Div" else None
    operands: list[ir.Value | np.ndarray] = [a, b]
    if divisor is not None and np.all(divisor != 0):
        # x / c as x * (1/c): within an ulp, and it keeps int8 graphs integer (TFLite has no int8 DIV).
        code, opt_name, operands = BuiltinOp.MUL, "MulOptionsT", [a, np.asarray(1.0 / divisor.astype(np.float64))]
    # A Div by an activation runs in float between DEQUANTIZE and QUANTIZE (no int8 DIV kernel).
    q = cv.quant_mode(acts, out_v) if code != BuiltinOp.DIV else None
    if q is not None and _adds_below_half_step(cv, node, act_fn, out_v, q):
        # x + c with every |c| under half an output step and x on (nearly) the output's quantization: the
        # int8 result is x itself (the QDQ graph's Q rounds the sum back to x). TFLite would run it as an ADD
        # whose constant has a scale 1e5x finer than x's, which XNNPACK refuses (PP-OCRv4 rec's LayerNorm
        # epsilons and ~1e-5 betas: 6 ADDs, each one splitting the delegated graph).
        cv.slots[out_v] = cv.slot(a if cv.is_act(a) else b)
        cv.absorb(fused)
        return
    ins = [cv.operand(v, perm, rank, q) for v in operands]
    opts = options(opt_name, fusedActivationFunction=act_fn) if fusable else options(opt_name)
    cv.emit(code, ins, out_v, perm, q, opts)
    cv.absorb(fused)


def _adds_below_half_step(cv: Converter, node: ir.Node, act_fn: int, out_v: ir.Value, q: Quant) -> bool:
    """Whether int8 ``x +/- c`` leaves every int8 value of x unchanged (see binary)."""
    if node.op_type not in ("Add", "Sub") or act_fn != ActFn.NONE or out_v.is_graph_output() or q.per_channel:
        return False
    a, b = node.inputs[0], node.inputs[1]
    x, c = (a, cv.const(b)) if cv.is_act(a) else (b, cv.const(a) if node.op_type == "Add" else None)
    if c is None or not cv.is_act(x) or cv.shape(x) != cv.shape(out_v):
        return False
    qx = cv.quant_of(x)
    if qx is None or qx.per_channel or qx.zero_point != q.zero_point:
        return False
    # Over the whole int8 range, x's value on its own scale plus c stays within half a step of the same
    # integer on the output scale (calibration often gives the sum a scale a hair above x's: 1e-5 / 255).
    drift = 255 * abs(qx.scale[0] - q.scale[0]) + float(np.max(np.abs(c), initial=0.0))
    return drift < 0.49 * q.scale[0]


def unary(code: int, opt: str | None = None, required: Quant | None = None, int8_ok: bool = True,
          **fields) -> Callable[[Converter, ir.Node], None]:
    def handler(cv: Converter, node: ir.Node) -> None:
        x, out = node.inputs[0], node.outputs[0]
        q = cv.quant_mode([x], out) if int8_ok else None
        q = None if too_coarse(q, required) else q
        s = cv.slot(x)
        opts = None
        if opt is not None:
            opts = options(opt, **{k: (f(node) if callable(f) else f) for k, f in fields.items()})
        cv.emit(code, [cv.act(x, s.perm, "int8" if q else "float")], out, s.perm, q, opts, required=required)
    return handler


def relu_like(cv: Converter, node: ir.Node) -> None:
    kind = activation_kind(cv, node)
    code = {ActFn.RELU: BuiltinOp.RELU, ActFn.RELU6: BuiltinOp.RELU6, ActFn.RELU_N1_TO_1: BuiltinOp.RELU_N1_TO_1}
    x, out = node.inputs[0], node.outputs[0]
    s = cv.slot(x)
    if kind is not None:
        q = cv.quant_mode([x], out)
        cv.emit(code[kind], [cv.act(x, s.perm, "int8" if q else "float")], out, s.perm, q)
        return
    lo, hi = clip_bounds(cv, node)
    idx = cv.act(x, s.perm, "float")
    if np.isfinite(hi):
        mid = cv.b.tensor(f"{node.name}_min", cv.b.info[idx].shape, F32) if np.isfinite(lo) else None
        target = mid if mid is not None else None
        if target is None:
            cv.emit(BuiltinOp.MINIMUM, [idx, cv.b.const(f"{node.name}_hi", np.asarray([hi], np.float32))],
                    out, s.perm, None, options("MaximumMinimumOptionsT"))
            return
        cv.b.op(BuiltinOp.MINIMUM, [idx, cv.b.const(f"{node.name}_hi", np.asarray([hi], np.float32))], [mid],
                options("MaximumMinimumOptionsT"))
        idx = mid
    cv.emit(BuiltinOp.MAXIMUM, [idx, cv.b.const(f"{node.name}_lo", np.asarray([lo], np.float32))],
            out, s.perm, None, options("MaximumMinimumOptionsT"))


def hard_swish(cv: Converter, node: ir.Node) -> None:
    """HARD_SWISH in float. In int8, x * relu6(x + 3) / 6 as ADD (fused RELU6), MUL, MUL: XNNPACK has no
    int8 HARD_SWISH, and each one it leaves to TFLite's own kernels splits the delegated graph (PP-LCNet
    int8: 30 partitions, 2.3x slower than fp32; one partition this way)."""
    x, out = node.inputs[0], node.outputs[0]
    s = cv.slot(x)
    q = cv.quant_mode([x], out)
    if q is None:
        cv.emit(BuiltinOp.HARD_SWISH, [cv.act(x, s.perm, "float")], out, s.perm, None, options("HardSwishOptionsT"))
        return
    idx = cv.act(x, s.perm, "int8")
    shape = cv.b.info[idx].shape
    three = cv.b.const(f"{node.name}_3", np.asarray([127], np.int8), Quant((3.0 / 127,), (0,)))
    sixth = cv.b.const(f"{node.name}_sixth", np.asarray([127], np.int8), Quant((1.0 / 6 / 127,), (0,)))
    r6 = cv.b.tensor(f"{node.name}_r6", shape, I8, Quant((6.0 / 255,), (-128,)))  # relu6(x + 3) in [0, 6]
    cv.b.op(BuiltinOp.ADD, [idx, three], [r6], options("AddOptionsT", fusedActivationFunction=ActFn.RELU6))
    # x * relu6(x + 3) is 6 * hardswish(x): on 6 * the output scale its integers are already the output's.
    prod = cv.b.tensor(f"{node.name}_x6", shape, I8, Quant((6 * q.scale[0],), q.zero_point))
    cv.b.op(BuiltinOp.MUL, [idx, r6], [prod], options("MulOptionsT"))
    cv.emit(BuiltinOp.MUL, [prod, sixth], out, s.perm, q, options("MulOptionsT"))


def hard_sigmoid(cv: Converter, node: ir.Node) -> None:
    """max(0, min(1, a*x + b)) = relu6(6a*x + 6b) / 6: MUL, ADD with fused RELU6, MUL -- ops XNNPACK
    runs natively in float and int8 (TFLite has no HARD_SIGMOID builtin).

    In int8 the intermediates get exact scales: 6a*x keeps x's integers (scale 6a*s_x), and the RELU6
    output uses 6*s_out so the final 1/6 lands on the QDQ output scale; each constant is 127 * scale.
    """
    x, out = node.inputs[0], node.outputs[0]
    a, b = float(attr(node, "alpha", 0.2)), float(attr(node, "beta", 0.5))
    s = cv.slot(x)
    q = cv.quant_mode([x], out) if a > 0 and b > 0 else None
    idx = cv.act(x, s.perm, "int8" if q else "float")
    shape = cv.b.info[idx].shape
    q_in = cv.b.info[idx].quant

    def scalar(name: str, value: float) -> int:
        if q is None:
            return cv.fconst(f"{node.name}_{name}", np.asarray([value], np.float32))
        return cv.b.const(f"{node.name}_{name}", np.asarray([127], np.int8), Quant((value / 127,), (0,)))

    q1 = Quant((6 * a * q_in.scale[0],), q_in.zero_point) if q and q_in else None
    q2 = Quant((6 * q.scale[0],), q.zero_point) if q else None
    t1 = cv.b.tensor(f"{node.name}_ax", shape, I8 if q else F32, q1)
    cv.b.op(BuiltinOp.MUL, [idx, scalar("6a", 6 * a)], [t1], options("MulOptionsT"))
    t2 = cv.b.tensor(f"{node.name}_r6", shape, I8 if q else F32, q2)
    cv.b.op(BuiltinOp.ADD, [t1, scalar("6b", 6 * b)], [t2], options("AddOptionsT", fusedActivationFunction=ActFn.RELU6))
    cv.emit(BuiltinOp.MUL, [t2, scalar("sixth", 1 / 6)], out, s.perm, q, options("MulOptionsT"))


def prelu(cv: Converter, node: ir.Node) -> None:
    x, slope, out = node.inputs[0], node.inputs[1], node.outputs[0]
    if cv.const(slope) is None:
        raise EdgecError(f"node '{node.name}': PRelu with a non-constant slope has no TFLite mapping")
    s = cv.slot(x)
    q = cv.quant_mode([x], out)
    rank = len(s.shape)
    alpha = cv.operand(slope, s.perm, rank, q)
    cv.emit(BuiltinOp.PRELU, [cv.act(x, s.perm, "int8" if q else "float"), alpha], out, s.perm, q)


def power(cv: Converter, node: ir.Node) -> None:
    """Pow with a constant scalar exponent: 2 -> SQUARE, 0.5 -> SQRT, 1 -> the input itself (XNNPACK runs
    those; spelled-out LayerNorms in Paddle exports square and root this way); any other -> POW, in float."""
    e = cv.const(node.inputs[1])
    if e is not None and e.size == 1:
        k = float(e.reshape(()))
        if k == 1.0:
            return alias(cv, node)
        if k in (2.0, 0.5):
            return unary(BuiltinOp.SQUARE if k == 2.0 else BuiltinOp.SQRT, int8_ok=False)(cv, node)
    x, out = node.inputs[0], node.outputs[0]
    s = cv.slot(x)
    rank = len(s.shape)
    ins = [cv.operand(v, s.perm, rank, None) for v in (x, node.inputs[1])]
    cv.emit(BuiltinOp.POW, ins, out, s.perm, None, None)


def softmax(cv: Converter, node: ir.Node) -> None:
    x, out = node.inputs[0], node.outputs[0]
    s = cv.slot(x)
    rank = len(s.shape)
    axis = attr(node, "axis", -1 if cv.opset >= 13 else 1) % rank
    if cv.opset < 13 and axis != rank - 1 and any(d != 1 for d in s.shape[axis + 1:]):
        raise EdgecError(f"node '{node.name}': Softmax (opset < 13) over flattened trailing axes has no "
                         "TFLite mapping")
    perm = s.perm if s.perm[-1] == axis else tuple(p for p in s.perm if p != axis) + (axis,)
    # In int8 it runs in float between DEQUANTIZE and QUANTIZE: XNNPACK has no int8 SOFTMAX, and TFLite's own
    # kernel split the delegated graph (PP-LCNet int8: 2 partitions; PP-OCRv4 rec's attention: three more).
    # The float form is also the QDQ graph's arithmetic exactly (DQ -> Softmax -> Q).
    cv.emit(BuiltinOp.SOFTMAX, [cv.act(x, perm, "float")], out, perm, None, options("SoftmaxOptionsT", beta=1.0))


def batchnorm(cv: Converter, node: ir.Node) -> None:
    """A BatchNormalization left standing (no Conv before it): y = x * s + t, in float."""
    x, out = node.inputs[0], node.outputs[0]
    gamma, beta, mean, var = (cv.const(v) for v in node.inputs[1:5])
    if any(a is None for a in (gamma, beta, mean, var)):
        raise EdgecError(f"node '{node.name}': BatchNormalization with non-constant statistics")
    scale = gamma / np.sqrt(var + float(attr(node, "epsilon", 1e-5)))
    shift = beta - mean * scale
    s = cv.slot(x)
    rank = len(s.shape)
    bshape = (1, -1) + (1,) * (rank - 2)
    sc = cv.fconst(f"{node.name}_scale", np.transpose(scale.reshape(bshape), s.perm))
    sh = cv.fconst(f"{node.name}_shift", np.transpose(shift.reshape(bshape), s.perm))
    mid = cv.b.tensor(f"{node.name}_mul", L.shape_in(s.perm, s.shape), F32)
    cv.b.op(BuiltinOp.MUL, [cv.act(x, s.perm, "float"), sc], [mid], options("MulOptionsT"))
    cv.emit(BuiltinOp.ADD, [mid, sh], out, s.perm, None, options("AddOptionsT"))


def _leaky_alpha(node: ir.Node) -> float:
    return float(attr(node, "alpha", 0.01))


register({
    "Add": binary, "Sub": binary, "Mul": binary, "Div": binary, "Max": binary, "Min": binary,
    "Relu": relu_like,
    "Clip": relu_like,
    "Sigmoid": unary(BuiltinOp.LOGISTIC, required=Q_SIGMOID),
    "Tanh": unary(BuiltinOp.TANH, required=Q_TANH),
    "Sqrt": unary(BuiltinOp.SQRT, int8_ok=False),
    "Pow": power,
    "HardSwish": hard_swish,
    "HardSigmoid": hard_sigmoid,
    "LeakyRelu": unary(BuiltinOp.LEAKY_RELU, "LeakyReluOptionsT", alpha=_leaky_alpha),
    "PRelu": prelu,
    "Softmax": softmax,
    "BatchNormalization": batchnorm,
})
