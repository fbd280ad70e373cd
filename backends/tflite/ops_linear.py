"""Handlers for the ops with weights: Conv, ConvTranspose (grouped too), Gemm, MatMul.

Explicit PAD before convolutions whose ONNX padding SAME cannot express; Flatten -> FULLY_CONNECTED reads
the NHWC map with permuted weights (no TRANSPOSE); a grouped convolution is SPLIT, one CONV_2D per
group, CONCATENATION.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from edgec.errors import EdgecError
from edgec.graph import attr

from . import layout as L
from .converter import F32, I8, Converter
from .helpers import ints
from .ops_shape import pad_nhwc
from .registry import register
from .writer import BuiltinOp, Padding, Quant, options


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
    # In float in an int8 graph (between DEQUANTIZE and QUANTIZE): XNNPACK has no int8 BATCH_MATMUL, and
    # TFLite's own kernel split the delegated graph (PP-OCRv4 rec's attention, 2 per block).
    q = None
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


register({"Conv": conv, "ConvTranspose": conv_transpose, "Gemm": gemm, "MatMul": matmul})
