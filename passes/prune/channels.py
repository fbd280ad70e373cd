"""Structured channel pruning: rank the units of each dependency group, remove the weakest, shrink tensors.

Importance of a unit (Li et al., "Pruning Filters for Efficient ConvNets", ICLR 2017): the norm (L2 or
L1) of the filters that produce it, each producer normalised by its mean filter norm so the branches
of a residual Add weigh alike, summed over producers, times the normalised per-channel scale of every
BatchNormalization (|gamma| / sqrt(var + eps)) and depthwise filter the channel passes through.
Removal is per class of units (units touching the same tensors) in multiples of ``align`` so every
channel count keeps its value mod 8 (int8 GEMM kernels want multiples of 8), never below ``align``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Iterable

import numpy as np
import onnx_ir as ir

from edgec.graph import attr, const_array, set_input_const
from edgec.passes.prune.groups import Analysis, Group, analyze
from edgec.passes.prune.links import BINARY, slice_params


@dataclasses.dataclass
class Selection:
    """Kept channel indices per tensor name (only for tensors of pruned groups)."""

    keep: dict[str, np.ndarray]
    removed_units: dict[int, int]  # group id -> units removed

    def kept(self, value: ir.Value | None) -> np.ndarray | None:
        return self.keep.get(value.name) if value is not None and value.name else None


def importance(group: Group, criterion: str = "l2") -> np.ndarray:
    """One score per unit; higher = keep."""
    pos_of = _unit_index(group)
    score = np.zeros(len(group.units))
    factor = np.ones(len(group.units))
    for node in group.producers:
        out = node.outputs[0]
        norms = _filter_norms(node, criterion)
        if norms is None:
            continue
        norms = norms / max(float(norms.mean()), 1e-12)
        for c, u in enumerate(pos_of[out.name]):
            score[u] += norms[c]
    for node in group.through:
        scale = _channel_scale(node, criterion)
        if scale is None or node.inputs[0] is None or node.inputs[0].name not in pos_of:
            continue
        scale = scale / max(float(scale.mean()), 1e-12)
        units = pos_of[node.inputs[0].name]
        if len(units) == scale.size:
            np.multiply.at(factor, units, scale)
    return score * factor


def _unit_index(group: Group) -> dict[str, np.ndarray]:
    index = {name: np.full(c, -1, dtype=np.int64) for name, c in group.channels.items()}
    for u, unit in enumerate(group.units):
        for name, pos in unit.items():
            index[name][pos] = u
    return index


def _filter_norms(node: ir.Node, criterion: str) -> np.ndarray | None:
    w = const_array(node.inputs[1])
    if w is None:
        return None
    w = np.asarray(w, dtype=np.float64)
    if node.op_type == "Conv":
        rows = w.reshape(w.shape[0], -1)
    elif node.op_type == "Gemm" and int(attr(node, "transB", 0)):
        rows = w
    else:
        rows = w.T
    return np.abs(rows).sum(1) if criterion == "l1" else np.sqrt((rows**2).sum(1))


def _channel_scale(node: ir.Node, criterion: str) -> np.ndarray | None:
    if node.op_type == "BatchNormalization":
        arrs = [const_array(v) for v in node.inputs[1:5]]
        if any(a is None for a in arrs):
            return None
        gamma, _, _, var = (np.asarray(a, np.float64) for a in arrs)  # type: ignore[arg-type]
        return np.abs(gamma) / np.sqrt(var + float(attr(node, "epsilon", 1e-5)))
    if node.op_type == "Conv" and int(attr(node, "group", 1)) > 1:
        return _filter_norms(node, criterion)
    return None


def aligned_removal(n: int, ratio: float, align: int) -> int:
    """Units to remove from a class of ``n``: ratio * n rounded to a multiple of ``align``, leaving at
    least ``align`` (classes of ``align`` or fewer are kept whole)."""
    if n <= align or ratio <= 0:
        return 0
    r = round(n * ratio / align) * align
    return max(0, min(r, (n - align) // align * align if n % align == 0 else n - align))


def select(analysis: Analysis, ratio: float | Callable[[Group], float], *, criterion: str = "l2",
           align: int = 8, skip: Iterable[str] = ()) -> Selection:
    """Choose the channels to keep in every prunable group not touching a node named in ``skip``."""
    skip = set(skip)
    keep: dict[str, np.ndarray] = {}
    removed: dict[int, int] = {}
    for group in analysis.groups:
        if not group.prunable or any(n.name in skip for n in group.nodes()):
            continue
        r = ratio(group) if callable(ratio) else ratio
        score = importance(group, criterion)
        drop: list[int] = []
        for cls in group.classes():
            k = aligned_removal(len(cls), r, align)
            if k:
                order = np.argsort(score[cls], kind="stable")
                drop += [cls[i] for i in order[:k]]
        if not drop:
            continue
        removed[group.id] = len(drop)
        dropped = set(drop)
        for name, c in group.channels.items():
            mask = np.ones(c, dtype=bool)
            for u in dropped:
                if name in group.units[u]:
                    mask[group.units[u][name]] = False
            keep[name] = np.flatnonzero(mask)
    return Selection(keep, removed)


def skipped_groups(analysis: Analysis, skip: Iterable[str]) -> set[int]:
    skip = set(skip)
    return {g.id for g in analysis.groups if g.prunable and any(n.name in skip for n in g.nodes())}


def estimate_macs(analysis: Analysis, graph: ir.Graph, sel: Selection) -> int:
    """MACs of the weighted ops after applying ``sel`` (each scales with its kept in/out fractions)."""
    return int(sum(node_macs_after(analysis, sel, node) for node in graph))


def node_macs_after(analysis: Analysis, sel: Selection, node: ir.Node) -> float:
    m = analysis.macs.get(id(node))
    if not m:
        return 0.0
    frac = _frac(analysis, sel, node.outputs[0])
    if not (node.op_type == "Conv" and int(attr(node, "group", 1)) > 1):
        frac *= _frac(analysis, sel, node.inputs[0])
    return m * frac


def node_params_after(analysis: Analysis, sel: Selection, node: ir.Node) -> tuple[int, float]:
    """Weight elements of a Conv/Gemm/MatMul before and (estimated) after applying ``sel``."""
    w = const_array(node.inputs[1]) if len(node.inputs) > 1 else None
    if w is None or node.op_type not in ("Conv", "Gemm", "MatMul"):
        return 0, 0.0
    frac = _frac(analysis, sel, node.outputs[0])
    if not (node.op_type == "Conv" and int(attr(node, "group", 1)) > 1):
        frac *= _frac(analysis, sel, node.inputs[0])
    return int(w.size), w.size * frac


def _frac(analysis: Analysis, sel: Selection, value: ir.Value | None) -> float:
    k = sel.kept(value)
    if k is None or value is None:
        return 1.0
    info = analysis.memo.get(id(value))
    return len(k) / info[0] if info else 1.0


def choose_ratio(analysis: Analysis, graph: ir.Graph, ratio: float, macs_target: float, **kw) -> tuple[float, Selection]:
    """The smallest uniform ratio >= ``ratio`` whose estimated MAC reduction reaches ``macs_target``
    (bisection; capped at 0.75 so no group loses more than three quarters of its channels)."""
    sel = select(analysis, ratio, **kw)
    if macs_target <= 0 or analysis.total_macs == 0:
        return ratio, sel

    def reduction(s: Selection) -> float:
        return 1 - estimate_macs(analysis, graph, s) / analysis.total_macs

    if reduction(sel) >= macs_target:
        return ratio, sel
    lo, hi = ratio, 0.75
    best = (hi, select(analysis, hi, **kw))
    for _ in range(12):
        mid = (lo + hi) / 2
        s = select(analysis, mid, **kw)
        if reduction(s) >= macs_target:
            hi, best = mid, (mid, s)
        else:
            lo = mid
    return best


# ------------------------------------------------------------------------------------------ rewriting
def apply_selection(model: ir.Model, analysis: Analysis, sel: Selection) -> list[str]:
    """Shrink every weight and shape constant of the pruned groups. Returns the rewritten node names."""
    touched: list[str] = []
    blocks = {name: b for g in analysis.groups for name, b in g.blocks.items()}
    for node in list(model.graph):
        values = [*node.inputs, *node.outputs]
        if not any(sel.kept(v) is not None for v in values if v is not None):
            continue
        _rewrite(node, sel, blocks)
        touched.append(node.name or node.op_type)
    for node in model.graph:
        for out in node.outputs:
            if not out.is_graph_output():
                out.shape = None  # stale: shape inference recomputes them
    return touched


def _expand(idx: np.ndarray, block: int) -> np.ndarray:
    return (idx[:, None] * block + np.arange(block)[None, :]).reshape(-1) if block > 1 else idx


def _rewrite(node: ir.Node, sel: Selection, blocks: dict[str, int]) -> None:
    op = node.op_type
    x, out = node.inputs[0], node.outputs[0]
    ki, ko = sel.kept(x), sel.kept(out)
    if op == "Conv":
        w = const_array(node.inputs[1])
        b = const_array(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
        assert w is not None
        if int(attr(node, "group", 1)) > 1:  # depthwise: its own channels go
            k = ko if ko is not None else ki
            assert k is not None
            set_input_const(node, 1, w[k])
            if b is not None:
                set_input_const(node, 2, b[k])
            node.attributes["group"] = ir.AttrInt64("group", len(k))
            return
        if ko is not None:
            w = w[ko]
            if b is not None:
                set_input_const(node, 2, b[ko])
        if ki is not None:
            w = w[:, ki]
        set_input_const(node, 1, w)
        return
    if op in ("Gemm", "MatMul"):
        w = const_array(node.inputs[1])
        assert w is not None
        trans = op == "Gemm" and int(attr(node, "transB", 0))
        wk = w.T if trans else w  # [K, N]
        if ki is not None:
            wk = wk[_expand(ki, blocks.get(x.name, 1))]  # type: ignore[union-attr]
        if ko is not None:
            wk = wk[:, ko]
            c = const_array(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
            if c is not None and c.size > 1:
                set_input_const(node, 2, c.reshape(-1)[ko])
        set_input_const(node, 1, np.ascontiguousarray(wk.T if trans else wk))
        return
    if op in ("BatchNormalization", "InstanceNormalization"):
        k = ki if ki is not None else ko
        for i in range(1, len(node.inputs)):
            arr = const_array(node.inputs[i])
            if arr is not None and arr.ndim == 1 and k is not None:
                set_input_const(node, i, arr[k])
        return
    if op in BINARY:
        k = ko
        rank = len(out.shape) if out.shape is not None else 4
        for i, v in enumerate(node.inputs):
            arr = const_array(v)
            if arr is None or k is None:
                continue
            axis = arr.ndim - (rank - 1)
            if axis >= 0 and arr.shape[axis] > 1:
                set_input_const(node, i, np.take(arr, k, axis=axis))
        return
    if op == "Split":
        sizes = [len(sel.kept(o)) for o in node.outputs]  # type: ignore[arg-type]
        if len(node.inputs) > 1 or _opset(node) >= 13:
            node.attributes.pop("num_outputs", None)
            set_input_const(node, 1, np.array(sizes, dtype=np.int64), name=f"{node.name or 'split'}_sizes")
        else:
            node.attributes["split"] = ir.AttrInt64s("split", sizes)
        return
    if op == "Slice":
        _rewrite_slice(node, sel)
        return
    if op == "Reshape":
        shape = const_array(node.inputs[1])
        if shape is None or ki is None or x.shape is None:
            return
        old_c = int(x.shape[1])
        rest = math.prod(int(d) for d in list(x.shape)[2:])
        new = shape.copy()
        for i in range(1, new.size):
            if int(new[i]) == old_c * rest and len(new) == 2:
                new[i] = len(ki) * rest
            elif int(new[i]) == old_c and i == 1:
                new[i] = len(ki)
        set_input_const(node, 1, new)
        return
    if op == "Resize" and len(node.inputs) > 3 and node.inputs[3] is not None and ko is not None:
        sizes = const_array(node.inputs[3])
        if sizes is not None:
            new = sizes.copy()
            new[1] = len(ko)
            set_input_const(node, 3, new)


def _opset(node: ir.Node) -> int:
    graph = node.graph
    model_opsets = getattr(graph, "opset_imports", {}) if graph is not None else {}
    return int(node.version or model_opsets.get("", 13) or 13)


def _rewrite_slice(node: ir.Node, sel: Selection) -> None:
    x = node.inputs[0]
    ki, ko = sel.kept(x), sel.kept(node.outputs[0])
    params = slice_params(node)
    if ki is None or ko is None or params is None or x is None or x.shape is None:
        return
    starts, ends, axes, _ = params
    rank = len(x.shape)
    norm = [a % rank for a in axes]
    if 1 not in norm:
        return
    i = norm.index(1)
    c = int(x.shape[1])
    start = starts[i] + c if starts[i] < 0 else starts[i]
    new_start = int(np.searchsorted(ki, min(max(start, 0), c)))
    starts, ends = list(starts), list(ends)
    starts[i], ends[i] = new_start, new_start + len(ko)
    if len(node.inputs) > 1:
        set_input_const(node, 1, np.array(starts, dtype=np.int64))
        set_input_const(node, 2, np.array(ends, dtype=np.int64))
    else:
        node.attributes["starts"] = ir.AttrInt64s("starts", starts)
        node.attributes["ends"] = ir.AttrInt64s("ends", ends)


# ------------------------------------------------------------------------------------------ the plan
def plan(model: ir.Model | str | os.PathLike, shapes: dict[str, tuple[int, ...]] | None = None) -> list[dict]:
    """`edgec prune-plan`: one row per dependency group: channels, ops, MAC share, and why it is skipped.

    ``shapes`` pins dynamic input dims (as ``--shape``); without them symbolic dims count as 1, so MAC
    shares of a model with dynamic spatial size are rough.
    """
    from edgec.api import load_model
    from edgec.graph import infer_shapes

    model = load_model(model, shapes)
    infer_shapes(model)
    analysis = analyze(model)
    rows = []
    total = max(analysis.total_macs, 1)
    for g in analysis.groups:
        if not g.producers and not g.consumers:
            continue
        macs = sum(analysis.macs.get(id(n), 0) for n in g.nodes())
        params = sum(int(const_array(n.inputs[1]).size) for n in g.nodes()  # type: ignore[union-attr]
                     if n.op_type in ("Conv", "Gemm", "MatMul") and const_array(n.inputs[1]) is not None)
        classes = sorted(len(c) for c in g.classes()) if g.prunable else []
        rows.append({
            "group": g.id,
            "status": "prunable" if g.prunable else "skipped",
            "reason": g.reason or "",
            "channels": "+".join(str(c) for c in classes) if classes else
            ",".join(sorted({str(c) for c in g.channels.values()})),
            "tensors": len(g.tensors),
            "producers": [n.name for n in g.producers],
            "consumers": [n.name for n in g.consumers],
            "through": sorted({n.op_type for n in g.through}),
            "macs": int(macs),
            "mac_share": macs / total,
            "params": params,
        })
    return rows


def format_plan(rows: list[dict]) -> str:
    """The plan as a text table. MAC share counts every Conv/Gemm whose input or output channels the group
    sets, so a layer appears in two groups and shares add up to about 2."""
    head = f"{'group':>5} {'status':<9} {'channels':<12} {'MAC share':>9} {'params':>9}  producers -> consumers / reason"
    lines = [head, "-" * len(head)]
    for r in rows:
        prod = ", ".join(r["producers"][:3]) + (" ..." if len(r["producers"]) > 3 else "")
        cons = ", ".join(r["consumers"][:2]) + (" ..." if len(r["consumers"]) > 2 else "")
        tail = r["reason"] if r["status"] != "prunable" else f"{prod} -> {cons or '-'}"
        lines.append(f"{r['group']:>5} {r['status']:<9} {r['channels']:<12} {100 * r['mac_share']:>8.1f}% "
                     f"{r['params']:>9}  {tail}")
    n_ok = sum(r["status"] == "prunable" for r in rows)
    lines.append(f"{n_ok} of {len(rows)} groups prunable; channel counts are units per class "
                 "(a+b: Concat/Split halves pruned separately)")
    return "\n".join(lines)
