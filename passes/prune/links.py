"""Per-op channel rules for structured pruning: which channels of which tensors one node ties together.

``node_links`` answers, for one node, "channel i of this input is channel j of that output" (or "this
node's weight rows/filters are indexed by these channels", or "I cannot follow channels through here,
and why"). ``edgec.passes.prune.groups`` joins these answers across the graph into dependency groups.
Channel axis: 1 (NCHW, and [N, F] for Gemm); a Flatten/Reshape of [N, C, H, W] gives blocks of H*W.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import onnx_ir as ir

from edgec.graph import attr, const_array, consumers

UNARY = {"Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Clip", "Elu", "Selu", "Celu",
         "Softplus", "Softsign", "Identity", "Dropout", "Erf", "Gelu", "Mish", "Exp", "Log", "Neg", "Abs",
         "Sqrt", "Reciprocal", "Floor", "Ceil", "Round", "ThresholdedRelu", "Sin", "Cos", "Cast", "Swish",
         "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool",
         "BatchNormalization", "InstanceNormalization"}
BINARY = {"Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "Pow", "PRelu"}
WEIGHTED = ("Conv", "Gemm", "MatMul")


@dataclasses.dataclass
class NodeLinks:
    """How one node ties the channels of the tensors it reads and writes."""

    links: list[tuple[ir.Value, int, ir.Value, int, int]] = dataclasses.field(default_factory=list)
    producer: ir.Value | None = None  # output whose channels are this node's filters
    consumer: ir.Value | None = None  # input whose channels index this node's weight rows
    opaque: dict[int, tuple[ir.Value, str]] = dataclasses.field(default_factory=dict)

    def refuse(self, value: ir.Value | None, reason: str) -> None:
        if value is not None:
            self.opaque[id(value)] = (value, reason)


def channel_info(value: ir.Value, memo: dict[int, tuple[int, int] | None]) -> tuple[int, int] | None:
    """(channels, block) of a tensor along axis 1: block > 1 for a Flatten/Reshape of [N, C, H, W]."""
    key = id(value)
    if key in memo:
        return memo[key]
    memo[key] = None  # cycle guard
    result: tuple[int, int] | None = None
    prod = value.producer()
    if prod is not None and prod.op_type in ("Flatten", "Reshape") and prod.inputs[0] is not None:
        src = prod.inputs[0]
        flat = _flatten_block(prod)
        inner = channel_info(src, memo)
        if flat is not None and inner is not None:
            result = (inner[0], inner[1] * flat)
    if result is None and prod is not None and prod.op_type == "Conv" and const_array(prod.inputs[1]) is not None:
        result = (int(const_array(prod.inputs[1]).shape[0]), 1)  # type: ignore[union-attr]
    if result is None and value.shape is not None and len(value.shape) >= 2 and isinstance(value.shape[1], int):
        result = (int(value.shape[1]), 1)
    memo[key] = result
    return result


def _flatten_block(node: ir.Node) -> int | None:
    """Elements per input channel in the output's axis 1 when this Flatten/Reshape turns [N, C, ...] into
    [N, C*rest] (or keeps the shape); None for any other reshaping."""
    src, out = node.inputs[0], node.outputs[0]
    in_shape = src.shape if src is not None else None
    if in_shape is None or len(in_shape) < 2 or not all(isinstance(d, int) for d in list(in_shape)[1:]):
        return None
    rest = math.prod(int(d) for d in list(in_shape)[2:])
    if node.op_type == "Flatten":
        return rest if int(attr(node, "axis", 1)) == 1 else None
    out_shape = out.shape
    if out_shape is None:
        return None
    if len(out_shape) == 2 and (not isinstance(out_shape[1], int) or out_shape[1] == rest * in_shape[1]):
        return rest if _shape_input_ok(node, int(in_shape[1]), rest) else None
    if list(out_shape)[1:] == list(in_shape)[1:]:
        return 1 if _shape_input_ok(node, int(in_shape[1]), rest) else None
    return None


def _shape_input_ok(node: ir.Node, channels: int, rest: int) -> bool:
    """A Reshape's target shape either is constant (rewritten on pruning) or is built from -1/0 and the
    batch size, so it stays right when channels go."""
    shape_val = node.inputs[1] if len(node.inputs) > 1 else None
    if shape_val is None or const_array(shape_val) is not None:
        return True
    prod = shape_val.producer()
    if prod is None or prod.op_type != "Concat":
        return False
    for v in prod.inputs:
        arr = const_array(v)
        if arr is not None and any(int(x) in (channels, channels * rest) for x in arr.reshape(-1)):
            return False
        if arr is None and not _is_batch_of_shape(v):
            return False
    return True


def _is_batch_of_shape(value: ir.Value | None) -> bool:
    """``value`` is Slice(Shape(x), [0], [1]) or Gather(Shape(x), 0): the batch size."""
    prod = value.producer() if value is not None else None
    if prod is None or prod.op_type not in ("Slice", "Gather"):
        return False
    src = prod.inputs[0].producer() if prod.inputs[0] is not None else None
    if src is None or src.op_type != "Shape" or int(attr(src, "start", 0)) != 0:
        return False
    return _reads_batch_only(prod)


def _reads_batch_only(node: ir.Node) -> bool:
    if node.op_type == "Gather":
        idx = const_array(node.inputs[1])
        return idx is not None and idx.size == 1 and int(idx.reshape(-1)[0]) == 0
    if node.op_type == "Slice":
        arrs = [const_array(v) if v is not None else None for v in list(node.inputs[1:4]) + [None] * 3][:3]
        starts, ends, axes = arrs
        if starts is None or ends is None:
            return False
        if axes is not None and [int(a) for a in axes.reshape(-1)] != [0]:
            return False
        return [int(s) for s in starts.reshape(-1)] == [0] and [int(e) for e in ends.reshape(-1)] == [1]
    return False


def node_links(node: ir.Node, memo: dict[int, tuple[int, int] | None]) -> NodeLinks:
    """The channel couplings of one node (see the module docstring for the op list)."""
    res = NodeLinks()
    op = node.op_type
    ins = [v for v in node.inputs]
    out = node.outputs[0] if node.outputs else None

    def info(v: ir.Value | None) -> tuple[int, int] | None:
        return channel_info(v, memo) if v is not None else None

    def full(a: ir.Value, b: ir.Value) -> None:
        ia, ib = info(a), info(b)
        if ia is None or ib is None or ia[0] != ib[0]:
            res.refuse(a, f"{op} '{node.name}': channel counts unknown or differ")
            res.refuse(b, f"{op} '{node.name}': channel counts unknown or differ")
            return
        res.links.append((a, 0, b, 0, ia[0]))

    def refuse_all(reason: str) -> None:
        for v in [*ins, *node.outputs]:
            if v is not None and const_array(v) is None:
                res.refuse(v, reason)

    if node.domain not in ("", "ai.onnx"):
        refuse_all(f"custom op {node.domain}.{op} '{node.name}'")
        return res
    if op in WEIGHTED:
        w = const_array(ins[1]) if len(ins) > 1 else None
        x = ins[0]
        if w is None or x is None or out is None:
            refuse_all(f"{op} '{node.name}' with a non-constant weight")
            return res
        if op == "Conv":
            g = int(attr(node, "group", 1))
            cin = info(x)
            if g == 1:
                res.consumer, res.producer = x, out
                if cin is None or cin[1] != 1 or cin[0] != w.shape[1]:
                    res.refuse(x, f"Conv '{node.name}': input channels do not match its weight")
            elif w.shape[1] == 1 and w.shape[0] == g and cin is not None and cin[0] == g:
                full(x, out)  # depthwise: input channel c makes output channel c
            else:
                refuse_all(f"grouped Conv '{node.name}' (group={g})")
            return res
        rank = len(x.shape) if x.shape is not None else None
        if w.ndim != 2 or rank != 2 or (op == "Gemm" and int(attr(node, "transA", 0))):
            refuse_all(f"{op} '{node.name}' is not a [N, K] x [K, N] product")
            return res
        res.consumer, res.producer = x, out
        n_out = w.shape[0] if op == "Gemm" and int(attr(node, "transB", 0)) else w.shape[1]
        c = const_array(ins[2]) if op == "Gemm" and len(ins) > 2 and ins[2] is not None else None
        if op == "Gemm" and len(ins) > 2 and ins[2] is not None and (c is None or c.size not in (1, n_out)):
            res.refuse(out, f"Gemm '{node.name}': bias is not a per-column vector")
        cin = info(x)
        k = w.shape[1] if op == "Gemm" and int(attr(node, "transB", 0)) else w.shape[0]
        if cin is None or cin[0] * cin[1] != k:
            res.refuse(x, f"{op} '{node.name}': input width does not match its weight")
        return res
    if op in UNARY:
        if op == "MaxPool" and len(node.outputs) > 1 and node.outputs[1].uses():
            refuse_all(f"MaxPool '{node.name}' with indices output")
        elif op in ("BatchNormalization",) and any(o.uses() for o in node.outputs[1:]):
            refuse_all(f"BatchNormalization '{node.name}' in training mode")
        elif ins[0] is not None and out is not None:
            full(ins[0], out)
        return res
    if op in BINARY:
        _binary(node, res, info, full)
        return res
    if op == "Concat":
        _concat_links(node, res, info, full)
        return res
    if op == "Split":
        _split_links(node, res, info, full)
        return res
    if op == "Slice":
        _slice_links(node, res, info, full)
        return res
    if op in ("Flatten", "Reshape"):
        if _flatten_block(node) is None:
            refuse_all(f"{op} '{node.name}' mixes the channel axis with others")
        else:
            src, dst = info(ins[0]), info(out)
            if src is None or dst is None:
                refuse_all(f"{op} '{node.name}': channel count unknown")
            else:
                res.links.append((ins[0], 0, out, 0, src[0]))  # type: ignore[arg-type]
        return res
    if op in ("Squeeze", "Unsqueeze"):
        axes = const_array(ins[1]) if len(ins) > 1 and ins[1] is not None else attr(node, "axes", None)
        rank = len(ins[0].shape) if ins[0] is not None and ins[0].shape is not None else None
        out_rank = len(out.shape) if out is not None and out.shape is not None else None
        if axes is None or rank is None or out_rank is None:
            refuse_all(f"{op} '{node.name}' with unknown axes")
            return res
        r = out_rank if op == "Unsqueeze" else rank
        norm = [int(a) % r for a in np.asarray(axes).reshape(-1)]
        if min(norm) < 2:
            refuse_all(f"{op} '{node.name}' moves the channel axis")
        else:
            full(ins[0], out)  # type: ignore[arg-type]
        return res
    if op in ("Resize", "Upsample"):
        scales = const_array(ins[2]) if op == "Resize" and len(ins) > 2 and ins[2] is not None else (
            const_array(ins[1]) if op == "Upsample" and len(ins) > 1 else None)
        if scales is not None and scales.size >= 2 and float(scales.reshape(-1)[1]) != 1.0:
            refuse_all(f"{op} '{node.name}' scales the channel axis")
        else:
            full(ins[0], out)  # type: ignore[arg-type]
        return res
    if op == "Shape":
        uses = consumers(out) if out is not None else []
        if int(attr(node, "start", 0)) == 0 and attr(node, "end", None) == 1:
            return res
        if out is not None and not out.is_graph_output() and uses and all(_reads_batch_only(u) for u in uses):
            return res  # only the batch size is read: pruning cannot change it
        refuse_all(f"Shape '{node.name}' reads the channel count")
        return res
    refuse_all(f"{op} '{node.name}' is not understood by the pruner")
    return res


def _binary(node: ir.Node, res: NodeLinks, info, full) -> None:
    out = node.outputs[0]
    oshape = out.shape
    oinfo = info(out)
    if oshape is None or oinfo is None or oinfo[1] != 1:
        for v in node.inputs:
            if v is not None and const_array(v) is None:
                res.refuse(v, f"{node.op_type} '{node.name}': output shape unknown")
        res.refuse(out, f"{node.op_type} '{node.name}': output shape unknown")
        return
    rank, c = len(oshape), oinfo[0]
    for v in node.inputs:
        if v is None:
            continue
        arr = const_array(v)
        if arr is not None:
            axis = arr.ndim - (rank - 1)
            if axis >= 0 and arr.shape[axis] not in (1, c):
                res.refuse(out, f"{node.op_type} '{node.name}': constant operand does not broadcast per channel")
            continue
        vshape = v.shape
        if vshape is not None and len(vshape) == rank and vshape[1] == c:
            full(v, out)
        else:
            res.refuse(v, f"{node.op_type} '{node.name}' broadcasts this tensor over channels")


def _axis(node: ir.Node, default: int) -> int | None:
    rank = None
    for v in [*node.inputs[:1], *node.outputs[:1]]:
        if v is not None and v.shape is not None:
            rank = len(v.shape)
    a = int(attr(node, "axis", default))
    if a < 0:
        if rank is None:
            return None
        a += rank
    return a


def _concat_links(node: ir.Node, res: NodeLinks, info, full) -> None:
    out = node.outputs[0]
    axis = _axis(node, 0)
    if axis != 1:
        if axis is None:
            for v in [*node.inputs, out]:
                res.refuse(v, f"Concat '{node.name}' with an unknown axis")
            return
        for v in node.inputs:
            if v is not None:
                full(v, out)
        return
    offset = 0
    for v in node.inputs:
        iv = info(v) if v is not None else None
        if iv is None or iv[1] != 1:
            for w in [*node.inputs, out]:
                res.refuse(w, f"Concat '{node.name}': an input's channel count is unknown")
            return
        res.links.append((v, 0, out, offset, iv[0]))
        offset += iv[0]


def _split_links(node: ir.Node, res: NodeLinks, info, full) -> None:
    src = node.inputs[0]
    axis = _axis(node, 0)
    if axis != 1:
        if axis is None:
            for v in [src, *node.outputs]:
                res.refuse(v, f"Split '{node.name}' with an unknown axis")
            return
        for o in node.outputs:
            full(src, o)
        return
    offset = 0
    for o in node.outputs:
        io = info(o)
        if io is None or io[1] != 1:
            for v in [src, *node.outputs]:
                res.refuse(v, f"Split '{node.name}': an output's channel count is unknown")
            return
        res.links.append((src, offset, o, 0, io[0]))  # type: ignore[arg-type]
        offset += io[0]


def slice_params(node: ir.Node) -> tuple[list[int], list[int], list[int], list[int]] | None:
    """starts, ends, axes, steps of a Slice (inputs from opset 10, attributes before), if constant."""
    if len(node.inputs) > 1:
        arrs = [const_array(v) if v is not None else None for v in list(node.inputs[1:5]) + [None] * 4][:4]
        if arrs[0] is None or arrs[1] is None or (len(node.inputs) > 3 and node.inputs[3] is not None
                                                  and arrs[2] is None) or (
                len(node.inputs) > 4 and node.inputs[4] is not None and arrs[3] is None):
            return None
        starts, ends = [int(x) for x in arrs[0].reshape(-1)], [int(x) for x in arrs[1].reshape(-1)]
        axes = [int(x) for x in arrs[2].reshape(-1)] if arrs[2] is not None else list(range(len(starts)))
        steps = [int(x) for x in arrs[3].reshape(-1)] if arrs[3] is not None else [1] * len(starts)
        return starts, ends, axes, steps
    starts, ends = list(attr(node, "starts", [])), list(attr(node, "ends", []))
    axes = list(attr(node, "axes", list(range(len(starts)))))
    return starts, ends, axes, [1] * len(starts)


def _slice_links(node: ir.Node, res: NodeLinks, info, full) -> None:
    src, out = node.inputs[0], node.outputs[0]
    params = slice_params(node)
    rank = len(src.shape) if src is not None and src.shape is not None else None
    if params is None or rank is None:
        for v in (src, out):
            res.refuse(v, f"Slice '{node.name}' with non-constant parameters")
        return
    starts, _ends, axes, steps = params
    norm = [a % rank for a in axes]
    if 1 not in norm:
        full(src, out)
        return
    i = norm.index(1)
    isrc, iout = info(src), info(out)
    if steps[i] != 1 or isrc is None or iout is None:
        for v in (src, out):
            res.refuse(v, f"Slice '{node.name}' on the channel axis with a step or unknown counts")
        return
    start = starts[i] + isrc[0] if starts[i] < 0 else starts[i]
    start = min(max(start, 0), isrc[0])
    res.links.append((src, start, out, 0, iout[0]))
