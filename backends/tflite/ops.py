"""Per-op handlers: one function per ONNX op family, each emitting the TFLite operators for one node.

A handler reads its node's attributes, asks the Converter (converter.py) for its inputs in the layout
and number type it needs, and writes its output with ``Converter.emit``. Rewrites chosen for speed or
for an int8 kernel are explained where they happen (explicit PAD before SAME-incompatible convs,
Flatten -> FULLY_CONNECTED with permuted weights, HardSigmoid as MUL/ADD+RELU6/MUL, x / c as x * 1/c).

LiteRT hands the graph to XNNPACK, which takes most builtins but not SPLIT_V, PADV2 or
RESIZE_NEAREST_NEIGHBOR (nor int8 BATCH_MATMUL / SOFTMAX / GELU in ai-edge-litert 2.3). Each op it
refuses cuts the graph into another partition run partly by TFLite's own kernels, so Split, MaxPool
padding and integer nearest upsampling are written with ops XNNPACK takes (SPLIT/SLICE, PAD,
RESHAPE+CONCATENATION); transformer ops are in ops_transformer.py.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from edgec.errors import EdgecError
from edgec.graph import attr, consumers, only_consumer

from . import layout as L
from .converter import (
    F32,
    I8,
    Q_SIGMOID,
    Q_TANH,
    Converter,
    Slot,
    activation_kind,
    clip_bounds,
    ints,
    too_coarse,
)
from .ops_transformer import gelu_pattern, layer_norm
from .writer import ActFn, BuiltinOp, Padding, Quant, options


def conv(cv: Converter, node: ir.Node) -> None:
    x, w = node.inputs[0], node.inputs[1]
    bias_v = node.inputs[2] if len(node.inputs) > 2 else None
    xs = cv.shape(x)
    wshape = cv.shape(w)
    if len(xs) != 4:
        raise EdgecError(f"node '{node.name}': Conv on a rank-{len(xs)} input has no TFLite mapping",
                         hint="only 2-D convolutions (NCHW) are converted")
    kernel = wshape[2:]
    strides, dil = ints(node, "strides", 2, 1), ints(node, "dilations", 2, 1)
    pads = L.onnx_pads(attr(node, "auto_pad", "NOTSET"), xs[2:], kernel, strides, dil, attr(node, "pads", None))
    group = attr(node, "group", 1)
    act_fn, out_v, fused = cv.fused_act(node.outputs[0])
    q = cv.quant_mode([x], out_v)
    q_in = cv.quant_of(x) if q else None
    xin = cv.act(x, L.NHWC, "int8" if q else "float")
    padding = L.tflite_padding(xs[2:], kernel, strides, dil, pads)
    if padding is None:
        xin = pad_nhwc(cv, xin, pads, node.name, None)
        padding = "VALID"
    pad_code = Padding.SAME if padding == "SAME" else Padding.VALID
    c_in, c_out = xs[1], wshape[0]
    if group == 1:
        wt, ws = cv.weight_tensor(w, bool(q), 0, (0, 2, 3, 1), f"{node.name}_w")
        bt = cv.bias(bias_v, c_out, q_in, ws, f"{node.name}_b")
        opts = options("Conv2DOptionsT", padding=pad_code, strideH=strides[0], strideW=strides[1],
                       dilationHFactor=dil[0], dilationWFactor=dil[1], fusedActivationFunction=act_fn)
        cv.emit(BuiltinOp.CONV_2D, [xin, wt, bt], out_v, L.NHWC, q, opts)
    elif group == c_in and c_out % c_in == 0:
        # Depthwise: ONNX [C*m, 1, kh, kw] -> TFLite [1, kh, kw, C*m], output channel c*m + j reads
        # input channel c in both (channel multiplier m).
        wt, ws = cv.weight_tensor(w, bool(q), 0, (1, 2, 3, 0), f"{node.name}_w")
        bt = cv.bias(bias_v, c_out, q_in, ws, f"{node.name}_b")
        opts = options("DepthwiseConv2DOptionsT", padding=pad_code, strideH=strides[0], strideW=strides[1],
                       dilationHFactor=dil[0], dilationWFactor=dil[1], depthMultiplier=c_out // c_in,
                       fusedActivationFunction=act_fn)
        cv.emit(BuiltinOp.DEPTHWISE_CONV_2D, [xin, wt, bt], out_v, L.NHWC, q, opts)
    else:
        grouped_conv(cv, node, xin, group, pad_code, strides, dil, act_fn, out_v, q, q_in)
    cv.absorb(fused)


def grouped_conv(cv: Converter, node: ir.Node, xin: int, group: int, pad_code: int, strides: list[int],
                 dil: list[int], act_fn: int, out_v: ir.Value, q: Quant | None, q_in: Quant | None) -> None:
    """Grouped convolution as SPLIT -> one CONV_2D per group -> CONCATENATION (XNNPACK and the
    reference kernels handle CONV_2D with groups unevenly, the split form everywhere)."""
    w, bias_v = node.inputs[1], node.inputs[2] if len(node.inputs) > 2 else None
    info = cv.b.info[xin]
    c_out = cv.shape(w)[0]
    og = c_out // group
    parts = [cv.b.tensor(f"{node.name}_in{g}", info.shape[:3] + (info.shape[3] // group,), info.dtype, info.quant)
             for g in range(group)]
    cv.b.op(BuiltinOp.SPLIT, [cv.b.i32(f"{node.name}_axis", 3), xin], parts, options("SplitOptionsT", numSplits=group))
    out_shape = L.shape_in(L.NHWC, cv.shape(out_v))
    w_full = cv.const(w)
    assert w_full is not None
    outs = []
    if q:
        w_int, w_scale = cv.int8_weights(w, 0)
    b_full = cv.const(bias_v) if bias_v is not None else None
    for g in range(group):
        sl = slice(g * og, (g + 1) * og)
        if q:
            wt = cv.b.const(f"{node.name}_w{g}", np.ascontiguousarray(np.transpose(w_int[sl], (0, 2, 3, 1))),
                            Quant(tuple(w_scale[sl].tolist()), (0,) * og, 0))
            scale = q_in.scale[0] * w_scale[sl]
            bq = np.zeros(og, np.int32) if b_full is None else np.round(b_full.reshape(-1)[sl] / scale).astype(np.int32)
            bt = cv.b.const(f"{node.name}_b{g}", bq, Quant(tuple(scale.tolist()), (0,) * og, 0))
        else:
            wt = cv.fconst(f"{node.name}_w{g}", np.ascontiguousarray(np.transpose(w_full[sl], (0, 2, 3, 1))))
            bt = -1 if b_full is None else cv.fconst(f"{node.name}_b{g}", b_full.reshape(-1)[sl])
        o = cv.b.tensor(f"{node.name}_out{g}", out_shape[:3] + (og,), I8 if q else F32, q)
        opts = options("Conv2DOptionsT", padding=pad_code, strideH=strides[0], strideW=strides[1],
                       dilationHFactor=dil[0], dilationWFactor=dil[1], fusedActivationFunction=act_fn)
        cv.b.op(BuiltinOp.CONV_2D, [parts[g], wt, bt], [o], opts)
        outs.append(o)
    cv.emit(BuiltinOp.CONCATENATION, outs, out_v, L.NHWC, q, options("ConcatenationOptionsT", axis=3))


def pad_nhwc(cv: Converter, idx: int, pads: list[tuple[int, int]], name: str, value: float | None) -> int:
    """Explicit PAD (zeros, i.e. the zero point in int8) or PADV2 (``value``) of an NHWC tensor's H, W."""
    info = cv.b.info[idx]
    paddings = [[0, 0], list(pads[0]), list(pads[1]), [0, 0]]
    shape = (info.shape[0], info.shape[1] + sum(pads[0]), info.shape[2] + sum(pads[1]), info.shape[3])
    out = cv.b.tensor(name + "_pad", shape, info.dtype, info.quant)
    ins = [idx, cv.b.i32(name + "_paddings", paddings)]
    if value is None:
        cv.b.op(BuiltinOp.PAD, ins, [out], options("PadOptionsT"))
    else:
        if info.dtype == I8:
            assert info.quant is not None
            qv = int(np.clip(np.round(value / info.quant.scale[0]) + info.quant.zero_point[0], -128, 127))
            cst = cv.b.const(name + "_padval", np.asarray([qv], np.int8), info.quant)
        else:
            cst = cv.b.const(name + "_padval", np.asarray([value], np.float32))
        cv.b.op(BuiltinOp.PADV2, [*ins, cst], [out], options("PadV2OptionsT"))
    return out


def conv_transpose(cv: Converter, node: ir.Node) -> None:
    """TRANSPOSE_CONV; groups > 1 as SPLIT -> one TRANSPOSE_CONV per group -> CONCATENATION (the op has
    no group field). Dilation has no TFLite form and stays an error."""
    x, w = node.inputs[0], node.inputs[1]
    bias_v = node.inputs[2] if len(node.inputs) > 2 else None
    xs, ws_ = cv.shape(x), cv.shape(w)
    group = int(attr(node, "group", 1))
    if len(xs) != 4 or any(d != 1 for d in ints(node, "dilations", 2, 1)):
        raise EdgecError(f"node '{node.name}': ConvTranspose other than 2-D with dilation 1 has no TFLite mapping",
                         hint="TRANSPOSE_CONV has no dilation")
    strides = ints(node, "strides", 2, 1)
    kernel = ws_[2:]
    out_shape = cv.shape(node.outputs[0])
    full = [(xs[2 + i] - 1) * strides[i] + kernel[i] for i in range(2)]
    pads = attr(node, "pads", None) or [0, 0, 0, 0]
    begins = [int(pads[0]), int(pads[1])]
    act_fn, out_v, fused = cv.fused_act(node.outputs[0])
    q = cv.quant_mode([x], out_v)
    q_in = cv.quant_of(x) if q else None
    xin = cv.act(x, L.NHWC, "int8" if q else "float")
    oh, ow = out_shape[2], out_shape[3]
    crop = None
    if begins == [0, 0] and [oh, ow] <= full:
        padding, tshape = Padding.VALID, (out_shape[0], oh, ow, out_shape[1])
    elif all(L.same_pads(o, k, s)[0] == b and L.same_pads(o, k, s)[2] == n for o, k, s, b, n in
             zip((oh, ow), kernel, strides, begins, xs[2:])):
        padding, tshape = Padding.SAME, (out_shape[0], oh, ow, out_shape[1])
    else:
        padding, tshape = Padding.VALID, (out_shape[0], full[0], full[1], out_shape[1])
        crop = begins
    opts = options("TransposeConvOptionsT", padding=padding, strideH=strides[0], strideW=strides[1],
                   fusedActivationFunction=act_fn)
    dtype = I8 if q else F32
    target = cv.b.tensor(f"{node.name}_full", tshape, dtype, q) if crop is not None else None
    if group == 1:
        # ONNX ConvTranspose W is [C_in, C_out, kh, kw]; TFLite TRANSPOSE_CONV wants [C_out, kh, kw, C_in].
        wt, wsc = cv.weight_tensor(w, bool(q), 1, (1, 2, 3, 0), f"{node.name}_w")
        bt = cv.bias(bias_v, ws_[1], q_in, wsc, f"{node.name}_b", optional=True)
        ins = [cv.b.i32(f"{node.name}_oshape", tshape), wt, xin, bt]
        if target is None:
            cv.emit(BuiltinOp.TRANSPOSE_CONV, ins, out_v, L.NHWC, q, opts)
        else:
            cv.b.op(BuiltinOp.TRANSPOSE_CONV, ins, [target], opts)
    else:
        pieces = _grouped_transpose_conv(cv, node, xin, group, tshape, q, q_in, opts)
        cat = options("ConcatenationOptionsT", axis=3)
        if target is None:
            cv.emit(BuiltinOp.CONCATENATION, pieces, out_v, L.NHWC, q, cat)
        else:
            cv.b.op(BuiltinOp.CONCATENATION, pieces, [target], cat)
    if target is not None:
        begin = [0, crop[0], crop[1], 0]
        size = [tshape[0], oh, ow, tshape[3]]
        cv.emit(BuiltinOp.SLICE, [target, cv.b.i32(f"{node.name}_cb", begin), cv.b.i32(f"{node.name}_cs", size)],
                out_v, L.NHWC, q, options("SliceOptionsT"))
    cv.absorb(fused)


def _grouped_transpose_conv(cv: Converter, node: ir.Node, xin: int, group: int, tshape: tuple[int, ...],
                            q: Quant | None, q_in: Quant | None, opts) -> list[int]:
    """One TRANSPOSE_CONV per group on its SPLIT slice of the input channels; returns the group outputs.
    ONNX W is [C_in, C_out / group, kh, kw]: group g reads input channels and W rows g*C_in/group..."""
    w, bias_v = node.inputs[1], node.inputs[2] if len(node.inputs) > 2 else None
    info = cv.b.info[xin]
    cin_g, cout_g = info.shape[3] // group, cv.shape(w)[1]
    parts = [cv.b.tensor(f"{node.name}_in{g}", info.shape[:3] + (cin_g,), info.dtype, info.quant) for g in range(group)]
    cv.b.op(BuiltinOp.SPLIT, [cv.b.i32(f"{node.name}_axis", 3), xin], parts, options("SplitOptionsT", numSplits=group))
    if q:
        w_all, w_scale = cv.int8_weights(w, 1)  # one scale per output channel of a group, shared by the groups
    else:
        w_all, w_scale = cv.const(w), None
    b_all = cv.const(bias_v) if bias_v is not None else None
    oshape = cv.b.i32(f"{node.name}_oshape", tshape[:3] + (cout_g,))
    outs = []
    for g in range(group):
        wg = np.ascontiguousarray(np.transpose(w_all[g * cin_g:(g + 1) * cin_g], (1, 2, 3, 0)))
        if q:
            wt = cv.b.const(f"{node.name}_w{g}", wg, Quant(tuple(w_scale.tolist()), (0,) * cout_g, 0))
        else:
            wt = cv.fconst(f"{node.name}_w{g}", wg)
        real = None if b_all is None else b_all.reshape(-1)[g * cout_g:(g + 1) * cout_g]
        bt = cv.bias(None, cout_g, q_in, w_scale, f"{node.name}_b{g}", optional=True, real=real)
        o = cv.b.tensor(f"{node.name}_out{g}", tshape[:3] + (cout_g,), I8 if q else F32, q)
        cv.b.op(BuiltinOp.TRANSPOSE_CONV, [oshape, wt, parts[g], bt], [o], opts)
        outs.append(o)
    return outs


def gemm(cv: Converter, node: ir.Node) -> None:
    a, bv = node.inputs[0], node.inputs[1]
    c = node.inputs[2] if len(node.inputs) > 2 else None
    alpha, beta = float(attr(node, "alpha", 1.0)), float(attr(node, "beta", 1.0))
    if attr(node, "transA", 0) or cv.const(bv) is None:
        raise EdgecError(f"node '{node.name}': Gemm with transA or non-constant B has no TFLite mapping")
    trans_b = bool(attr(node, "transB", 0))
    fully_connected(cv, node, a, bv, n_axis=0 if trans_b else 1, w_perm=(0, 1) if trans_b else (1, 0),
                    bias_v=c, alpha=alpha, beta=beta)


def matmul(cv: Converter, node: ir.Node) -> None:
    a, bv = node.inputs
    if cv.const(bv) is not None and len(cv.shape(bv)) == 2:
        fully_connected(cv, node, a, bv, n_axis=1, w_perm=(1, 0), bias_v=None, alpha=1.0, beta=1.0)
        return
    out = node.outputs[0]
    acts = [v for v in (a, bv) if cv.is_act(v)]
    q = cv.quant_mode(acts, out)
    rank = len(cv.shape(out))
    ins = [cv.operand(v, L.identity(rank), rank, q) if len(cv.shape(v)) == rank else
           cv.act(v, L.identity(len(cv.shape(v))), "int8" if q else "float") for v in (a, bv)]
    cv.emit(BuiltinOp.BATCH_MATMUL, ins, out, L.identity(rank), q, options("BatchMatMulOptionsT"))


def fully_connected(cv: Converter, node: ir.Node, a: ir.Value, bv: ir.Value, n_axis: int, w_perm: L.Perm,
                    bias_v: ir.Value | None, alpha: float, beta: float) -> None:
    """FULLY_CONNECTED with weights [N, K]. A flattened NHWC input is read as is: the weight columns are
    permuted into the NHWC order instead of transposing the activation back to NCHW."""
    s = cv.slot(a)
    act_fn, out_v, fused = cv.fused_act(node.outputs[0])
    # A Gemm alpha scales the weights; that product runs in float rather than requantizing them.
    q = cv.quant_mode([a], out_v) if alpha == 1.0 else None
    q_in = cv.quant_of(a) if q else None
    rank = len(s.shape)
    want = "int8" if q else "float"
    # A flattened NHWC map is read as stored (perm None); anything else in ONNX layout.
    ain = cv.act(a, None if s.flat is not None else L.identity(rank), want)
    flat = s.flat

    def cols(w: np.ndarray) -> np.ndarray:
        return w[:, flat] if flat is not None else w

    n = cv.shape(bv)[n_axis]
    if alpha != 1.0:
        wv = cv.const(bv)
        assert wv is not None
        wt = cv.fconst(f"{node.name}_w", np.ascontiguousarray(cols(np.transpose(wv, w_perm) * alpha)))
        ws = None
    else:
        wt, ws = cv.weight_tensor(bv, bool(q), n_axis, w_perm, f"{node.name}_w", cols)
    bt = -1  # FULLY_CONNECTED takes no bias tensor when there is none
    if bias_v is not None:
        real = cv.const(bias_v)
        if real is None or real.size not in (1, n):
            raise EdgecError(f"node '{node.name}': Gemm bias must be a constant of N values")
        # beta scales the bias; the QDQ graph's int32 bias is reused only when it is 1.
        bt = cv.bias(bias_v if beta == 1.0 else None, n, q_in, ws, f"{node.name}_b", real=real * beta)
    out_shape = cv.shape(out_v)
    opts = options("FullyConnectedOptionsT", fusedActivationFunction=act_fn, keepNumDims=len(out_shape) > 2)
    cv.emit(BuiltinOp.FULLY_CONNECTED, [ain, wt, bt], out_v, L.identity(len(out_shape)), q, opts)
    cv.absorb(fused)


_BINARY = {
    "Add": (BuiltinOp.ADD, "AddOptionsT"),
    "Sub": (BuiltinOp.SUB, "SubOptionsT"),
    "Mul": (BuiltinOp.MUL, "MulOptionsT"),
    "Div": (BuiltinOp.DIV, "DivOptionsT"),
    "Max": (BuiltinOp.MAXIMUM, "MaximumMinimumOptionsT"),
    "Min": (BuiltinOp.MINIMUM, "MaximumMinimumOptionsT"),
}


def binary(cv: Converter, node: ir.Node) -> None:
    if hard_swish_pattern(cv, node) or gelu_pattern(cv, node):
        return
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
    ins = [cv.operand(v, perm, rank, q) for v in operands]
    opts = options(opt_name, fusedActivationFunction=act_fn) if fusable else options(opt_name)
    cv.emit(code, ins, out_v, perm, q, opts)
    cv.absorb(fused)


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


def hard_swish_pattern(cv: Converter, node: ir.Node) -> bool:
    """Emit one HARD_SWISH for the two spellings of x * relu6(x + 3) / 6 exporters write:
    ``Mul(x, HardSigmoid(x, 1/6, 1/2))`` (PyTorch below opset 14) and
    ``Div(Mul(x, Clip(Add(x, 3), 0, 6)), 6)`` (Paddle2ONNX, e.g. PP-OCR), starting at the first node.
    Float graphs only: in a QDQ graph the Q/DQ pairs between these nodes carry their own scales."""
    def const_is(v: ir.Value | None, value: float) -> bool:
        c = cv.const(v)
        return c is not None and c.size == 1 and abs(float(c.reshape(-1)[0]) - value) < 1e-6

    def other(n: ir.Node, v: ir.Value) -> ir.Value | None:
        ins = list(n.inputs)
        return ins[1] if ins[0] is v else ins[0] if len(ins) > 1 and ins[1] is v else None

    x = node.inputs[0]
    chain: list[ir.Node] = [node]
    if node.op_type == "HardSigmoid":
        if abs(attr(node, "alpha", 0.2) - 1 / 6) > 1e-6 or abs(attr(node, "beta", 0.5) - 0.5) > 1e-6:
            return False
        mul = only_consumer(node.outputs[0])
        if mul is None or mul.op_type != "Mul" or other(mul, node.outputs[0]) is not x:
            return False
        chain.append(mul)
    elif node.op_type == "Add":
        if const_is(node.inputs[0], 3.0):
            x = node.inputs[1]
        elif not const_is(node.inputs[1], 3.0):
            return False
        clip = only_consumer(node.outputs[0])
        if clip is None or clip.op_type != "Clip" or activation_kind(cv, clip) != ActFn.RELU6:
            return False
        mul = only_consumer(clip.outputs[0])
        if mul is None or mul.op_type != "Mul" or other(mul, clip.outputs[0]) is not x:
            return False
        last = only_consumer(mul.outputs[0])
        if last is None or not ((last.op_type == "Div" and const_is(last.inputs[1], 6.0))
                                or (last.op_type == "Mul" and const_is(other(last, mul.outputs[0]), 1 / 6))):
            return False
        chain += [clip, mul, last]
    else:
        return False
    if cv.int8 or cv.const(x) is not None:
        return False
    s = cv.slot(x)
    cv.emit(BuiltinOp.HARD_SWISH, [cv.act(x, s.perm, "float")], chain[-1].outputs[0], s.perm, None)
    cv.absorb(chain[1:])
    return True


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
    if hard_swish_pattern(cv, node):
        return
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
    q = None if rescale is not None else cv.quant_mode([x], out_v)
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


def concat(cv: Converter, node: ir.Node) -> None:
    out = node.outputs[0]
    rank = len(cv.shape(out))
    axis = attr(node, "axis", 0) % rank
    ins_v = [v for v in node.inputs if v is not None]
    acts = [v for v in ins_v if cv.is_act(v)]
    perm = next((cv.slot(v).perm for v in acts), L.preferred(rank))
    act_fn, out_v, fused = cv.fused_act(out)
    q = cv.quant_mode(acts, out_v)
    ins = []
    for v in ins_v:
        if cv.is_act(v):
            idx = cv.act(v, perm, "int8" if q else "float")
            # TFLite's int8 CONCATENATION requires every input in the output's quantization.
            ins.append(cv.requantize(idx, q, f"{v.name}_rq") if q else idx)
        else:
            c = np.transpose(cv.const(v), perm)
            if q:
                qv = np.clip(np.round(c / q.scale[0]) + q.zero_point[0], -128, 127).astype(np.int8)
                ins.append(cv.b.const(v.name or "c", qv, q))
            else:
                ins.append(cv.fconst(v.name or "c", c))
    cv.emit(BuiltinOp.CONCATENATION, ins, out_v, perm, q,
            options("ConcatenationOptionsT", axis=L.axis_in(perm, axis), fusedActivationFunction=act_fn))
    cv.absorb(fused)


def reshape_like(cv: Converter, node: ir.Node) -> None:
    """Reshape, Flatten, Squeeze, Unsqueeze: the output shape comes from shape inference."""
    x, out = node.inputs[0], node.outputs[0]
    s = cv.slot(x)
    out_shape = cv.shape(out)
    q = cv.quant_mode([x], out)
    want = "int8" if q else "float"
    if (s.perm != L.identity(len(s.shape)) and not L.reshape_keeps_order(s.perm, s.shape)
            and len(out_shape) == 2 and s.perm[0] == 0 and out_shape[0] == s.shape[0]
            and all(_reads_as_fc(cv, u) for u in _readers(cv, out))):
        # Flatten of an NHWC map feeding FULLY_CONNECTED: flatten in NHWC order, permute the weights.
        flat = L.flatten_order(tuple(p - 1 for p in s.perm[1:]), s.shape[1:])
        idx = cv.reshape(cv.act(x, None, want), out_shape, out.name or "flat")
        if q is not None:
            idx = cv.requantize(idx, q, (out.name or "flat") + "_rq")
        cv.slots[out] = Slot(idx, L.identity(2), out_shape, flat)
        return
    # Reshape the stored tensor directly when its layout allows (e.g. NHWC [N,C,H,W] -> [N,C,H*W]
    # becomes [N,H*W,C], the token layout a ViT reads next); otherwise go through the ONNX layout.
    out_perm = L.reshape_layout(s.perm, s.shape, out_shape) if s.flat is None else None
    if out_perm is not None:
        src = cv.act(x, s.perm, want)
    else:
        out_perm = L.identity(len(out_shape))
        src = cv.act(x, s.perm if L.reshape_keeps_order(s.perm, s.shape) else L.identity(len(s.shape)), want)
    tshape = L.shape_in(out_perm, out_shape)
    cv.emit(BuiltinOp.RESHAPE, [src, cv.b.i32(f"{node.name}_shape", tshape)], out, out_perm,
            q, options("ReshapeOptionsT", newShape=np.asarray(tshape, dtype=np.int32)),
            required=cv.quant_of(x) if q else None)


def _readers(cv: Converter, v: ir.Value) -> list[ir.Node]:
    """Readers of ``v``, looking through QDQ pairs (Q -> DQ) to the op that does arithmetic."""
    result = []
    for u in consumers(v):
        if u.op_type in ("QuantizeLinear", "DequantizeLinear"):
            result.extend(_readers(cv, u.outputs[0]))
        else:
            result.append(u)
    if v.is_graph_output():
        result.append(None)  # type: ignore[arg-type]
    return result


def _reads_as_fc(cv: Converter, node: ir.Node | None) -> bool:
    if node is None:
        return False
    if node.op_type == "Gemm":
        return not attr(node, "transA", 0) and cv.const(node.inputs[1]) is not None
    if node.op_type == "MatMul":
        return cv.const(node.inputs[1]) is not None and len(cv.shape(node.inputs[1])) == 2
    return False


def transpose(cv: Converter, node: ir.Node) -> None:
    """A Transpose only relabels the layout of the same tensor; a TRANSPOSE is made later if a reader
    needs another layout."""
    x, out = node.inputs[0], node.outputs[0]
    s = cv.slot(x)
    if s.flat is not None:
        raise EdgecError(f"node '{node.name}': Transpose of a flattened map")
    rank = len(s.shape)
    p = attr(node, "perm", None) or list(reversed(range(rank)))
    invp = L.inverse(p)
    cv.slots[out] = Slot(s.index, tuple(invp[s.perm[i]] for i in range(rank)), cv.shape(out))


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


def alias(cv: Converter, node: ir.Node) -> None:
    cv.slots[node.outputs[0]] = cv.slot(node.inputs[0])


def softmax(cv: Converter, node: ir.Node) -> None:
    x, out = node.inputs[0], node.outputs[0]
    s = cv.slot(x)
    rank = len(s.shape)
    axis = attr(node, "axis", -1 if cv.opset >= 13 else 1) % rank
    if cv.opset < 13 and axis != rank - 1 and any(d != 1 for d in s.shape[axis + 1:]):
        raise EdgecError(f"node '{node.name}': Softmax (opset < 13) over flattened trailing axes has no "
                         "TFLite mapping")
    perm = s.perm if s.perm[-1] == axis else tuple(p for p in s.perm if p != axis) + (axis,)
    q = cv.quant_mode([x], out)
    q = None if too_coarse(q, Q_SIGMOID) else q
    cv.emit(BuiltinOp.SOFTMAX, [cv.act(x, perm, "int8" if q else "float")], out, perm, q,
            options("SoftmaxOptionsT", beta=1.0), required=Q_SIGMOID)


def pad(cv: Converter, node: ir.Node) -> None:
    x, out = node.inputs[0], node.outputs[0]
    s = cv.slot(x)
    rank = len(s.shape)
    mode = attr(node, "mode", "constant")
    if cv.opset >= 11:
        pads = cv.const(node.inputs[1])
        value = cv.const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
        axes_v = node.inputs[3] if len(node.inputs) > 3 else None
    else:
        pads, value, axes_v = np.asarray(attr(node, "pads")), np.asarray(attr(node, "value", 0.0)), None
    if pads is None:
        raise EdgecError(f"node '{node.name}': Pad with non-constant pads has no TFLite mapping")
    pads = pads.reshape(-1).astype(int)
    axes = list(range(rank))
    if axes_v is not None:
        axes = [int(a) % rank for a in cv.const(axes_v).reshape(-1)]
    per_axis = {a: (0, 0) for a in range(rank)}
    for i, a in enumerate(axes):
        per_axis[a] = (int(pads[i]), int(pads[i + len(axes)]))
    if any(p < 0 for pr in per_axis.values() for p in pr):
        raise EdgecError(f"node '{node.name}': negative Pad (cropping) has no TFLite mapping")
    paddings = [list(per_axis[p]) for p in s.perm]
    q = cv.quant_mode([x], out)
    src = cv.act(x, s.perm, "int8" if q else "float")
    ins = [src, cv.b.i32(f"{node.name}_paddings", paddings)]
    fill = float(value.reshape(-1)[0]) if value is not None and value.size else 0.0
    if mode == "constant" and fill == 0.0:
        cv.emit(BuiltinOp.PAD, ins, out, s.perm, q, options("PadOptionsT"), required=cv.quant_of(x) if q else None)
    elif mode == "constant":
        if q:
            iq = cv.quant_of(x)
            cst = cv.b.const(f"{node.name}_val", np.asarray(
                [np.clip(round(fill / iq.scale[0]) + iq.zero_point[0], -128, 127)], np.int8), iq)
        else:
            cst = cv.b.const(f"{node.name}_val", np.asarray([fill], np.float32))
        cv.emit(BuiltinOp.PADV2, [*ins, cst], out, s.perm, q, options("PadV2OptionsT"),
                required=cv.quant_of(x) if q else None)
    elif mode == "reflect":
        cv.emit(BuiltinOp.MIRROR_PAD, ins, out, s.perm, q, options("MirrorPadOptionsT", mode=0),
                required=cv.quant_of(x) if q else None)
    else:
        raise EdgecError(f"node '{node.name}': Pad mode '{mode}' has no TFLite mapping",
                         hint="constant and reflect pads are converted")


def resize(cv: Converter, node: ir.Node) -> None:
    x, out = node.inputs[0], node.outputs[0]
    xs, os_ = cv.shape(x), cv.shape(out)
    if len(xs) != 4 or xs[:2] != os_[:2]:
        raise EdgecError(f"node '{node.name}': Resize other than spatial (NCHW H, W) has no TFLite mapping")
    mode = attr(node, "mode", "nearest")
    ctm = attr(node, "coordinate_transformation_mode", "half_pixel" if cv.opset >= 11 else "asymmetric")
    nearest_mode = attr(node, "nearest_mode", "round_prefer_floor")
    q = cv.quant_mode([x], out)
    xin = cv.act(x, L.NHWC, "int8" if q else "float")
    size = cv.b.i32(f"{node.name}_size", os_[2:])
    flags = {"align_corners": (True, False), "asymmetric": (False, False),
             "half_pixel": (False, True), "pytorch_half_pixel": (False, True)}
    if ctm not in flags:
        raise EdgecError(f"node '{node.name}': Resize coordinate_transformation_mode '{ctm}' has no TFLite mapping")
    align, half = flags[ctm]
    if mode == "nearest":
        if (ctm == "asymmetric" and nearest_mode != "floor") or (ctm != "asymmetric" and nearest_mode == "floor"):
            ratio = [o / i for o, i in zip(os_[2:], xs[2:])]
            if not all(r == int(r) for r in ratio):
                raise EdgecError(f"node '{node.name}': Resize nearest with {ctm}/{nearest_mode} at a non-integer "
                                 "scale has no TFLite mapping")
            align, half = False, False  # an integer upscale picks the same source pixel under every rule
        ratio = [o / i for o, i in zip(os_[2:], xs[2:])]
        if all(r == int(r) and r >= 1 for r in ratio) and ratio != [1, 1] and (
                ctm != "align_corners" or all(r == 1 for r in ratio)):
            _nearest_by_copies(cv, node, xin, [int(r) for r in ratio], q)
            return
        opts = options("ResizeNearestNeighborOptionsT", alignCorners=align, halfPixelCenters=half)
        code = BuiltinOp.RESIZE_NEAREST_NEIGHBOR
    elif mode == "linear":
        opts = options("ResizeBilinearOptionsT", alignCorners=align, halfPixelCenters=half)
        code = BuiltinOp.RESIZE_BILINEAR
    else:
        raise EdgecError(f"node '{node.name}': Resize mode '{mode}' has no TFLite mapping",
                         hint="nearest and linear are converted")
    cv.emit(code, [xin, size], out, L.NHWC, q, opts, required=cv.quant_of(x) if q else None)


def _nearest_by_copies(cv: Converter, node: ir.Node, xin: int, ratio: list[int], q: Quant | None) -> None:
    """Nearest upsampling by integer factors as RESHAPE + CONCATENATION of copies: out[y, x] =
    in[y // rh, x // rw] exactly. XNNPACK has no RESIZE_NEAREST_NEIGHBOR, and one op outside the
    delegate splits the graph into partitions run partly by TFLite's own kernels."""
    info = cv.b.info[xin]
    n, h, w, c = info.shape
    rh, rw = ratio

    def tensor(suffix: str, shape: tuple[int, ...]) -> int:
        return cv.b.tensor(f"{node.name}_{suffix}", shape, info.dtype, info.quant)

    cur = cv.reshape(xin, (n, h, w, 1, c), f"{node.name}_r0")
    if rw > 1:
        wide = tensor("w", (n, h, w, rw, c))
        cv.b.op(BuiltinOp.CONCATENATION, [cur] * rw, [wide], options("ConcatenationOptionsT", axis=3))
        cur = wide
    cur = cv.reshape(cur, (n, h, 1, w * rw, c), f"{node.name}_r1")
    if rh > 1:
        tall = tensor("h", (n, h, rh, w * rw, c))
        cv.b.op(BuiltinOp.CONCATENATION, [cur] * rh, [tall], options("ConcatenationOptionsT", axis=2))
        cur = tall
    out_shape = (n, h * rh, w * rw, c)
    cv.emit(BuiltinOp.RESHAPE, [cur, cv.b.i32(f"{node.name}_shape", out_shape)], node.outputs[0], L.NHWC, q,
            options("ReshapeOptionsT", newShape=np.asarray(out_shape, dtype=np.int32)),
            required=info.quant if q else None)


def split(cv: Converter, node: ir.Node) -> None:
    x = node.inputs[0]
    s = cv.slot(x)
    rank = len(s.shape)
    axis = attr(node, "axis", 0) % rank
    sizes = [cv.shape(o)[axis] for o in node.outputs]
    outs_q = [cv.quant_mode([x], o) for o in node.outputs]
    q_all = all(q is not None for q in outs_q)
    src = cv.act(x, s.perm, "int8" if q_all else "float")
    info = cv.b.info[src]
    taxis = L.axis_in(s.perm, axis)
    outs = [cv.b.tensor(o.name or "split", L.shape_in(s.perm, cv.shape(o)), info.dtype, info.quant)
            for o in node.outputs]
    # XNNPACK takes SPLIT and SLICE but not SPLIT_V: an op outside the delegate cuts the graph into
    # partitions and runs on TFLite's own kernels (yolo's C2f and DFL splits did).
    if len(set(sizes)) == 1:
        cv.b.op(BuiltinOp.SPLIT, [cv.b.i32(f"{node.name}_axis", taxis), src], outs,
                options("SplitOptionsT", numSplits=len(outs)))
    else:
        begin = 0
        for idx, size in zip(outs, sizes):
            starts = [0] * len(info.shape)
            starts[taxis] = begin
            cv.b.op(BuiltinOp.SLICE, [src, cv.b.i32(f"{node.name}_begin{begin}", starts),
                                      cv.b.i32(f"{node.name}_size{begin}", cv.b.info[idx].shape)], [idx],
                    options("SliceOptionsT"))
            begin += size
    for o, idx, q in zip(node.outputs, outs, outs_q):
        if q_all and q is not None:
            idx = cv.requantize(idx, q, (o.name or "split") + "_rq")
        cv.slots[o] = Slot(idx, s.perm, cv.shape(o))


def slice_(cv: Converter, node: ir.Node) -> None:
    x, out = node.inputs[0], node.outputs[0]
    s = cv.slot(x)
    rank = len(s.shape)
    if cv.opset >= 10:
        vals = [cv.const(v) if i < len(node.inputs) and (v := node.inputs[i]) is not None else None
                for i in range(1, 5)]
        if any(v is None for v in vals[:2]) or any(i < len(node.inputs) and node.inputs[i] is not None
                                                   and vals[i - 1] is None for i in (3, 4)):
            raise EdgecError(f"node '{node.name}': Slice with non-constant bounds has no TFLite mapping")
        starts, ends = vals[0].reshape(-1), vals[1].reshape(-1)
        axes = vals[2].reshape(-1) if vals[2] is not None else np.arange(len(starts))
        steps = vals[3].reshape(-1) if vals[3] is not None else np.ones(len(starts), np.int64)
    else:
        starts, ends = np.asarray(attr(node, "starts")), np.asarray(attr(node, "ends"))
        axes = np.asarray(attr(node, "axes", list(range(len(starts)))))
        steps = np.ones(len(starts), np.int64)
    begin, end, stride = [0] * rank, list(s.shape), [1] * rank
    end_mask = 0
    for st, en, ax, sp in zip(starts, ends, axes, steps):
        ax = int(ax) % rank
        b, e, k = slice(int(max(min(st, 2**62), -2**62)), int(max(min(en, 2**62), -2**62)), int(sp)).indices(s.shape[ax])
        begin[ax], end[ax], stride[ax] = b, e, k
        if k < 0 and e < 0:
            end_mask |= 1 << L.axis_in(s.perm, ax)
    q = cv.quant_mode([x], out)
    tb, te, ts = ([v[p] for p in s.perm] for v in (begin, end, stride))
    ins = [cv.act(x, s.perm, "int8" if q else "float"), cv.b.i32(f"{node.name}_begin", tb),
           cv.b.i32(f"{node.name}_end", te), cv.b.i32(f"{node.name}_strides", ts)]
    cv.emit(BuiltinOp.STRIDED_SLICE, ins, out, s.perm, q, options("StridedSliceOptionsT", endMask=end_mask),
            required=cv.quant_of(x) if q else None)


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


HANDLERS: dict[str, Callable[[Converter, ir.Node], None]] = {
    "Conv": conv,
    "ConvTranspose": conv_transpose,
    "Gemm": gemm,
    "MatMul": matmul,
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
    "MaxPool": pool,
    "AveragePool": pool,
    "GlobalAveragePool": global_pool,
    "GlobalMaxPool": global_pool,
    "Concat": concat,
    "Reshape": reshape_like, "Flatten": reshape_like, "Squeeze": reshape_like, "Unsqueeze": reshape_like,
    "Transpose": transpose,
    "Identity": alias, "Dropout": alias,
    "Pad": pad,
    "Resize": resize,
    "Softmax": softmax,
    "Split": split,
    "Slice": slice_,
    "ReduceMean": reduce, "ReduceMax": reduce, "ReduceSum": reduce,
    "BatchNormalization": batchnorm,
    "LayerNormalization": layer_norm,
}
