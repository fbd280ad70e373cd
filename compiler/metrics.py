"""Figures of a model (nodes, params, MACs, bytes) and drift between two sets of outputs."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np
import onnx
import onnx_ir as ir

from edgec.graph import opset_version
from edgec.model_io import PROTO_LIMIT, checkable_proto
from edgec.records import COLLAPSE_DB, CONFIDENT, Drift, Summary

Feed = dict[str, np.ndarray]


def summarize(model: ir.Model, proto: onnx.ModelProto | None = None) -> Summary:
    """Node count by op type, parameter count, MACs and serialized bytes.

    Parameters are the elements of floating-point and 8/32-bit integer initializers (weights, biases,
    quantized weights); int64 tensors are shape plumbing and do not count.
    """
    ops = Counter(n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}" for n in model.graph)
    tensors = [v.const_value for v in model.graph.initializers.values() if v.const_value is not None]
    # Weights still in Constant nodes (before lift-constants) are parameters too.
    tensors += [n.attributes["value"].as_tensor() for n in model.graph
                if n.op_type == "Constant" and "value" in n.attributes]
    params = sum(math.prod(t.shape.numpy()) for t in tensors
                 if t.dtype not in (ir.DataType.INT64, ir.DataType.BOOL, ir.DataType.STRING))
    if proto is None:
        proto = ir.serde.serialize_model(model)
    weights = _weight_bytes(model)
    # Past the 2 GiB proto limit the weights live in external data: count them, and skip shape inference.
    small = weights < PROTO_LIMIT
    return Summary(nodes=model.graph.num_nodes(), ops=dict(sorted(ops.items())), params=int(params),
                   macs=int(count_macs(proto)) if small else 0, bytes=int(proto.ByteSize() if small else weights),
                   opset=opset_version(model))


def _weight_bytes(model: ir.Model) -> int:
    return sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)


def _proto_shapes(proto: onnx.ModelProto) -> dict[str, list[int]]:
    """Every tensor's shape after ONNX shape inference (symbolic dims, e.g. batch, count as 1)."""
    try:
        # Weights over 1 MB stand in as typed inputs: inference needs their shapes, not a copy of their bytes
        # (a second copy of ResNet-18's 45 MB on every pass record).
        inferred = onnx.shape_inference.infer_shapes(checkable_proto(proto), data_prop=True)
    except Exception:  # noqa: BLE001 - a model inference cannot handle still gets a summary
        inferred = proto
    g = inferred.graph
    shapes: dict[str, list[int]] = {}
    for vi in [*g.input, *g.output, *g.value_info]:
        t = vi.type.tensor_type
        if t.HasField("shape"):
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else 1 for d in t.shape.dim]
    for init in proto.graph.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


def node_macs(op: str, attrs: dict[str, int], ins: list[list[int] | None], outs: list[list[int] | None]) -> int:
    """Multiply-accumulates of one node from its input/output shapes; 0 when a shape is unknown."""
    def prod(xs: list[int]) -> int:
        return int(np.prod(xs, dtype=np.int64))

    if op in ("Conv", "ConvInteger", "QLinearConv"):
        w = ins[3] if op == "QLinearConv" and len(ins) > 3 else (ins[1] if len(ins) > 1 else None)
        out = outs[0] if outs else None
        return prod(out) * prod(w[1:]) if out and w else 0
    if op == "ConvTranspose":
        x, w = ins[0], ins[1] if len(ins) > 1 else None
        return prod(x) * prod(w[1:]) if x and w else 0
    if op in ("Gemm", "MatMul", "MatMulInteger", "QLinearMatMul"):
        a, out = ins[0], outs[0] if outs else None
        if not a or not out:
            return 0
        k = a[0] if op == "Gemm" and attrs.get("transA", 0) else a[-1]
        return prod(out) * k
    return 0


def count_macs(proto: onnx.ModelProto) -> int:
    shapes = _proto_shapes(proto)
    total = 0
    for node in proto.graph.node:
        attrs = {a.name: a.i for a in node.attribute if a.type == onnx.AttributeProto.INT}
        total += node_macs(node.op_type, attrs, [shapes.get(i) for i in node.input],
                           [shapes.get(o) for o in node.output])
    return total


def drift(reference: Sequence[Feed], candidate: Sequence[Feed], indices: Sequence[int] | None = None) -> Drift:
    """Worst-output drift of ``candidate`` against ``reference`` over all samples, and its spread.

    max_rel is max|a-b| / max|a| over an output (elementwise relative error explodes near zero, so the
    scale is the output's own range). top-1 agreement is given for outputs shaped like logits [N, C].
    The spread (per-sample SQNR min / p10 / median, inputs below 10 dB, top-1 flips) names samples by
    ``indices`` (their positions in the user's data), 0, 1, 2 ... when not given.
    """
    d = _pooled(reference, candidate)
    if reference and len(reference) == len(candidate):
        _spread(d, reference, candidate, list(indices) if indices is not None else list(range(len(reference))))
    return d


def _pooled(reference: Sequence[Feed], candidate: Sequence[Feed]) -> Drift:
    names = list(reference[0]) if reference else []
    per: dict[str, dict[str, float | None]] = {}
    for name in names:
        if not all(_numeric(r[name]) for r in reference):
            # Strings, sequences, maps: no distance, only equal or not (0 or inf).
            same = all(_same(r[name], c.get(name)) for r, c in zip(reference, candidate))
            per[name] = {"max_abs": 0.0 if same else math.inf, "max_rel": 0.0 if same else math.inf,
                         "sqnr_db": math.inf if same else -math.inf, "cosine": 1.0 if same else 0.0, "top1": None}
            continue
        a = np.concatenate([np.asarray(r[name], dtype=np.float64).ravel() for r in reference])
        b = np.concatenate([np.asarray(c[name], dtype=np.float64).ravel() for c in candidate])
        if a.shape != b.shape:
            per[name] = {"max_abs": math.inf, "max_rel": math.inf, "sqnr_db": -math.inf, "cosine": 0.0,
                         "top1": 0.0}
            continue
        err = np.abs(a - b)
        max_abs = float(err.max()) if err.size else 0.0
        scale = float(np.abs(a).max()) if a.size else 0.0
        max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf)
        noise = float(np.sum((a - b) ** 2))
        signal = float(np.sum(a**2))
        sqnr = math.inf if noise == 0 else (10 * math.log10(signal / noise) if signal > 0 else -math.inf)
        na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
        cosine = float(a @ b / (na * nb)) if na > 0 and nb > 0 else (1.0 if na == nb else 0.0)
        per[name] = {"max_abs": max_abs, "max_rel": max_rel, "sqnr_db": sqnr, "cosine": cosine,
                     "top1": _top1(reference, candidate, name)}
    if not per:
        return Drift(0.0, 0.0, math.inf, 1.0)
    worst = max(per, key=lambda n: (per[n]["max_rel"] or 0.0))
    tops = [p["top1"] for p in per.values() if p["top1"] is not None]
    return Drift(max_abs=max(p["max_abs"] or 0.0 for p in per.values()),
                 max_rel=per[worst]["max_rel"] or 0.0,
                 sqnr_db=min(p["sqnr_db"] for p in per.values()),  # type: ignore[type-var]
                 cosine=min(p["cosine"] for p in per.values()),  # type: ignore[type-var]
                 top1=min(tops) if tops else None, worst_output=worst, per_output=per)


def _numeric(x: object) -> bool:
    return isinstance(x, np.ndarray) and x.dtype.kind in "biufc" or np.isscalar(x) and not isinstance(x, str)


def _same(a: object, b: object) -> bool:
    """Equality of outputs that have no numeric distance (string tensors, sequences, maps, None)."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if a is None or b is None:
        return a is b
    x, y = np.asarray(a), np.asarray(b)
    if x.dtype.kind in "biufc" and y.dtype.kind in "biufc":
        return x.shape == y.shape and bool(np.allclose(x, y, equal_nan=True))
    return x.shape == y.shape and bool(np.array_equal(x.astype(str), y.astype(str)))


def _spread(d: Drift, reference: Sequence[Feed], candidate: Sequence[Feed], indices: list[int]) -> None:
    per = per_sample_sqnr(reference, candidate)
    d.samples = len(per)
    d.sample_indices = indices
    d.per_sample_sqnr = [float(x) for x in per]
    if per.size:
        # "lower": an actual sample's figure, never an interpolation between two (or between inf and inf)
        d.sqnr_min = float(per.min())
        d.sqnr_p10 = float(np.percentile(per, 10, method="lower"))
        d.sqnr_median = float(np.percentile(per, 50, method="lower"))
        d.worst_sample = indices[int(per.argmin())]
        d.below_10db = int(np.sum(per < COLLAPSE_DB))
    for name in reference[0]:
        if not _numeric(reference[0][name]):
            continue
        shape = tuple(np.shape(reference[0][name]))
        if not looks_like_logits(shape) or any(name not in c or tuple(np.shape(c[name])) != shape for c in candidate):
            continue
        for k, (r, c) in enumerate(zip(reference, candidate)):
            ra = np.asarray(r[name], dtype=np.float64).reshape(-1, shape[-1])
            ca = np.asarray(c[name], dtype=np.float64).reshape(-1, shape[-1])
            changed = ra.argmax(-1) != ca.argmax(-1)
            if not changed.any():
                continue
            if indices[k] not in d.flips:
                d.flips.append(indices[k])
            sure = max(float(_probabilities(ra)[changed].max()), float(_probabilities(ca)[changed].max()))
            if sure >= CONFIDENT and indices[k] not in d.confident_flips:
                d.confident_flips.append(indices[k])


def _probabilities(rows: np.ndarray) -> np.ndarray:
    """Rows as class probabilities: as they are when they already are (a softmax head), else softmaxed."""
    if rows.min() >= 0 and np.allclose(rows.sum(-1), 1.0, atol=1e-3):
        return rows
    e = np.exp(rows - rows.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def looks_like_logits(shape: tuple[int, ...]) -> bool:
    return len(shape) == 2 and 2 <= shape[1] <= 100_000 or (len(shape) == 3 and shape[1] == 1 and shape[2] >= 2)


def _top1(reference: Sequence[Feed], candidate: Sequence[Feed], name: str) -> float | None:
    shape = np.shape(reference[0][name])
    if not looks_like_logits(tuple(shape)):
        return None
    ra = np.concatenate([np.asarray(r[name]).reshape(-1, shape[-1]).argmax(-1) for r in reference])
    ca = np.concatenate([np.asarray(c[name]).reshape(-1, shape[-1]).argmax(-1) for c in candidate])
    return float(np.mean(ra == ca))


def per_sample_sqnr(reference: Sequence[Feed], candidate: Sequence[Feed]) -> np.ndarray:
    """SQNR dB of each sample on its own (the worst of its outputs): the spread an aggregate hides."""
    return np.array([min((sqnr_db(r[n], c[n]) for n in r), default=math.inf)
                     for r, c in zip(reference, candidate)], dtype=np.float64)


def sqnr_db(reference: np.ndarray, candidate: np.ndarray) -> float:
    if not _numeric(reference):  # strings, sequences: equal (inf) or not (-inf)
        return math.inf if _same(reference, candidate) else -math.inf
    a = np.asarray(reference, dtype=np.float64)
    noise = float(np.sum((a - np.asarray(candidate, dtype=np.float64)) ** 2))
    signal = float(np.sum(a**2))
    if noise == 0:
        return math.inf
    return 10 * math.log10(signal / noise) if signal > 0 else -math.inf
