"""Handlers for data movement: Concat, Reshape/Flatten/Squeeze/Unsqueeze, Transpose, Pad, Resize,
Split, Slice, Identity/Dropout.

XNNPACK takes neither SPLIT_V, PADV2 nor RESIZE_NEAREST_NEIGHBOR: each op it refuses cuts the graph into
another partition, so uneven Split is SLICEs, integer nearest upsampling is RESHAPE + CONCATENATION copies
(at most MAX_CONCAT inputs per CONCATENATION, in Concat too: the delegate takes no wider one).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from edgec.errors import EdgecError
from edgec.graph import attr, consumers

from . import layout as L
from .converter import I8, Converter, Slot
from .registry import register
from .writer import BuiltinOp, Quant, options

#: The most inputs a CONCATENATION may have for XNNPACK to take it (LiteRT 2.3's delegate, measured: 2 to 5
#: delegated, 6 and 8 not).
MAX_CONCAT = 5


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
    t_axis = L.axis_in(perm, axis)
    while len(ins) > MAX_CONCAT:
        # Wider than XNNPACK takes: concatenate the first inputs into one (exact, the same bytes in order).
        head = ins[:MAX_CONCAT]
        shapes = [cv.b.info[i].shape for i in head]
        shape = shapes[0][:t_axis] + (sum(sh[t_axis] for sh in shapes),) + shapes[0][t_axis + 1:]
        part = cv.b.tensor(f"{out_v.name}_part{len(ins)}", shape, cv.b.info[head[0]].dtype, q)
        cv.b.op(BuiltinOp.CONCATENATION, head, [part], options("ConcatenationOptionsT", axis=t_axis))
        ins = [part, *ins[MAX_CONCAT:]]
    cv.emit(BuiltinOp.CONCATENATION, ins, out_v, perm, q,
            options("ConcatenationOptionsT", axis=t_axis, fusedActivationFunction=act_fn))
    cv.absorb(fused)


def reshape_like(cv: Converter, node: ir.Node) -> None:
    """Reshape, Flatten, Squeeze, Unsqueeze: the output shape comes from shape inference."""
    x, out = node.inputs[0], node.outputs[0]
    s = cv.slot(x)
    out_shape = cv.shape(out)
    q = cv.quant_mode([x], out)
    want = "int8" if q else "float"
    if (len(s.shape) > 2 and s.flat is None and len(out_shape) == 2 and s.perm[0] == 0
            and out_shape[0] == s.shape[0] and all(_reads_as_fc(cv, u) for u in _readers(cv, out))):
        # A flatten read only by FULLY_CONNECTEDs: FULLY_CONNECTED flattens its input itself (batch =
        # elements / K, keep_num_dims off), so it reads the stored map as is -- no RESHAPE, no TRANSPOSE
        # back to NCHW; the weight columns are permuted into the stored order instead. (GlobalAveragePool ->
        # Flatten -> Gemm heads: one op fewer, as TensorFlow's converter writes them.)
        flat = L.flatten_order(tuple(p - 1 for p in s.perm[1:]), s.shape[1:])
        idx = cv.act(x, None, want)
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


def alias(cv: Converter, node: ir.Node) -> None:
    cv.slots[node.outputs[0]] = cv.slot(node.inputs[0])


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

    def copies(unit: int, shape: tuple[int, ...], axis: int, r: int, name: str) -> int:
        """``r`` copies of ``unit`` (size 1 on ``axis``) along ``axis``, in CONCATENATIONs of at most
        MAX_CONCAT inputs: XNNPACK's delegate takes concatenations of 2-5 inputs only, so PP-OCRv4 det's
        x8 upsampling as one 8-input CONCATENATION ran outside it (3 partitions; 1 this way)."""
        if r == 1:
            return unit
        if r <= MAX_CONCAT:
            parts = [unit] * r
        else:
            k = next((f for f in range(MAX_CONCAT, 1, -1) if r % f == 0), None)
            if k is None:  # a prime factor above MAX_CONCAT: r - 1 copies and one more
                parts = [copies(unit, shape, axis, r - 1, name + "a"), unit]
            else:
                parts = [copies(unit, shape, axis, r // k, name + "a")] * k
        out_shape = shape[:axis] + (r,) + shape[axis + 1:]
        out = tensor(f"{name}{r}", out_shape)
        cv.b.op(BuiltinOp.CONCATENATION, parts, [out], options("ConcatenationOptionsT", axis=axis))
        return out

    cur = cv.reshape(xin, (n, h, w, 1, c), f"{node.name}_r0")
    cur = copies(cur, (n, h, w, 1, c), 3, rw, "w")
    cur = cv.reshape(cur, (n, h, 1, w * rw, c), f"{node.name}_r1")
    cur = copies(cur, (n, h, 1, w * rw, c), 2, rh, "h")
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


register({
    "Concat": concat,
    "Reshape": reshape_like, "Flatten": reshape_like, "Squeeze": reshape_like, "Unsqueeze": reshape_like,
    "Transpose": transpose,
    "Identity": alias, "Dropout": alias,
    "Pad": pad,
    "Resize": resize,
    "Split": split,
    "Slice": slice_,
})
