"""Dependency groups on the ONNX graph: channels that must be removed together.

Removing output channel c of a Conv changes the shape of every tensor that carries that channel:
activations, BatchNormalization, a depthwise conv (input = output channel), the other branch of a
residual Add, a slice of a Concat (offset ranges), a Split/Slice on the channel axis, the block of
columns a Flatten/Reshape hands to a Gemm, and the input channels of every consumer Conv/Gemm.
This is DepGraph's idea (Fang et al., CVPR 2023), rebuilt on the ONNX graph rather than PyTorch source.

Every channel of every channel-carrying tensor is a node of a networkx graph; an op that ties channel i
of one tensor to channel j of another adds an edge. A connected component of that graph is a *unit*
(remove it and the graph stays consistent); the tensors the units link form a *group* (one row of
`edgec prune-plan`). A group touching a graph input or output, or an op the analysis does not
understand, is kept whole and listed with the reason. Channel axis: 1 (NCHW, and [N, F] for Gemm).
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque

import networkx as nx
import numpy as np
import onnx_ir as ir

from edgec.graph import attr, const_array, consumers
from edgec.metrics import node_macs

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


@dataclasses.dataclass
class Group:
    """Tensors whose channels are coupled, the ops around them, and the prunable units."""

    id: int
    tensors: list[ir.Value]
    channels: dict[str, int]  # tensor name -> channel count (in units: a flattened block is one channel)
    blocks: dict[str, int]  # tensor name -> elements per channel along axis 1 (1 unless flattened)
    producers: list[ir.Node]
    consumers: list[ir.Node]
    through: list[ir.Node]  # nodes that carry the channels through (BN, activations, Add, Concat, ...)
    units: list[dict[str, list[int]]]  # each unit: tensor name -> its channel positions in that tensor
    reason: str | None = None

    @property
    def prunable(self) -> bool:
        return self.reason is None

    def nodes(self) -> list[ir.Node]:
        seen: dict[int, ir.Node] = {}
        for n in [*self.producers, *self.consumers, *self.through]:
            seen.setdefault(id(n), n)
        return list(seen.values())

    def classes(self) -> list[list[int]]:
        """Units grouped by the tensors (and multiplicities) they touch. Removing a multiple of 8 units
        of each class keeps every tensor's channel count at its value mod 8 (Concat sums classes)."""
        by: dict[tuple, list[int]] = {}
        for i, unit in enumerate(self.units):
            key = tuple(sorted((name, len(pos)) for name, pos in unit.items()))
            by.setdefault(key, []).append(i)
        return list(by.values())


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


# ------------------------------------------------------------------------------------------ analysis
@dataclasses.dataclass
class Analysis:
    groups: list[Group]
    macs: dict[int, int]  # id(node) -> MACs of weighted nodes (Conv, Gemm, MatMul)
    total_macs: int
    memo: dict[int, tuple[int, int] | None]


def analyze(model: ir.Model) -> Analysis:
    """Find every dependency group reachable from a Conv/Gemm/MatMul output. Shapes must be inferred."""
    graph = model.graph
    memo: dict[int, tuple[int, int] | None] = {}
    results: dict[int, NodeLinks] = {}
    node_of: dict[int, ir.Node] = {}
    seeds = [n.outputs[0] for n in graph if n.op_type in WEIGHTED and n.domain in ("", "ai.onnx")]
    queue: deque[ir.Value] = deque(seeds)
    seen: dict[int, ir.Value] = {id(v): v for v in seeds}
    while queue:
        value = queue.popleft()
        touching = ([value.producer()] if value.producer() is not None else []) + consumers(value)
        for node in touching:
            if id(node) in results:
                continue
            links = node_links(node, memo)
            results[id(node)], node_of[id(node)] = links, node
            found = [v for a, _, b, _, _ in links.links for v in (a, b)]
            found += [v for v in (links.producer, links.consumer) if v is not None]
            for v in found:
                if id(v) not in seen:
                    seen[id(v)] = v
                    queue.append(v)
    tgraph = nx.Graph()
    for v in seen.values():
        tgraph.add_node(id(v))
    for res in results.values():
        for a, _, b, _, _ in res.links:
            tgraph.add_edge(id(a), id(b))
    macs = _weighted_macs(graph)
    order = {id(n): i for i, n in enumerate(graph)}

    def position(v: ir.Value) -> int:
        return order.get(id(v.producer()), -1)

    groups = []
    for comp in sorted(nx.connected_components(tgraph), key=lambda c: min(position(seen[i]) for i in c)):
        values = sorted((seen[i] for i in comp), key=position)
        groups.append(_make_group(len(groups), values, results, node_of, memo))
    return Analysis(groups, macs, sum(macs.values()), memo)


def _make_group(gid: int, values: list[ir.Value], results: dict[int, NodeLinks], node_of: dict[int, ir.Node],
                memo: dict[int, tuple[int, int] | None]) -> Group:
    ids = {id(v) for v in values}
    reason = None
    channels: dict[str, int] = {}
    blocks: dict[str, int] = {}
    for v in values:
        inf = channel_info(v, memo)
        if inf is None:
            reason = reason or f"channel count of '{v.name}' is unknown"
            continue
        channels[v.name], blocks[v.name] = inf  # type: ignore[index]
        if v.is_graph_output():
            reason = reason or f"reaches graph output '{v.name}'"
        if v.is_graph_input():
            reason = reason or f"fed by graph input '{v.name}'"
    producers, cons, through = [], [], []
    links = []
    for key, res in results.items():
        node = node_of[key]
        for vid, (_, why) in res.opaque.items():
            if vid in ids:
                reason = reason or why
        if res.producer is not None and id(res.producer) in ids:
            producers.append(node)
        if res.consumer is not None and id(res.consumer) in ids:
            cons.append(node)
        mine = [lk for lk in res.links if id(lk[0]) in ids]
        if mine:
            through.append(node)
            links.extend(mine)
    if not producers:
        reason = reason or "no Conv/Gemm produces these channels"
    units: list[dict[str, list[int]]] = []
    if reason is None:
        units, why = _units(values, channels, links)
        reason = why
    return Group(gid, values, channels, blocks, producers, cons, through, units, reason)


def _units(values: list[ir.Value], channels: dict[str, int],
           links: list[tuple[ir.Value, int, ir.Value, int, int]]) -> tuple[list[dict[str, list[int]]], str | None]:
    base, total = {}, 0
    for v in values:
        base[v.name] = total
        total += channels[v.name]
    cgraph = nx.Graph()
    cgraph.add_nodes_from(range(total))
    for a, oa, b, ob, n in links:
        if oa + n > channels[a.name] or ob + n > channels[b.name]:
            return [], f"channel ranges of '{a.name}' and '{b.name}' do not fit"
        ia, ib = base[a.name] + oa, base[b.name] + ob
        cgraph.add_edges_from(zip(range(ia, ia + n), range(ib, ib + n)))
    starts = np.array([base[v.name] for v in values])
    names = [v.name for v in values]
    units = []
    for comp in nx.connected_components(cgraph):
        unit: dict[str, list[int]] = {}
        for cid in sorted(comp):
            t = int(np.searchsorted(starts, cid, side="right") - 1)
            unit.setdefault(names[t], []).append(cid - int(starts[t]))
        units.append(unit)
    units.sort(key=lambda u: min((names.index(k), p[0]) for k, p in u.items()))
    return units, None


def _weighted_macs(graph: ir.Graph) -> dict[int, int]:
    def dims(v: ir.Value | None) -> list[int] | None:
        if v is None or v.shape is None:
            return None
        return [d if isinstance(d, int) else 1 for d in v.shape]

    out = {}
    for node in graph:
        if node.op_type in WEIGHTED:
            attrs = {k: a.value for k, a in node.attributes.items() if isinstance(a.value, int)}
            out[id(node)] = node_macs(node.op_type, attrs, [dims(v) for v in node.inputs],
                                      [dims(v) for v in node.outputs])
    return out
