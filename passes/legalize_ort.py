"""Legalize for ONNX Runtime: the int8 file compaction, as a checked pass (``qdq-compact``).   exact

The ORT backend used to edit the serialized protobuf after the manager's checks; here the same edits
work on the onnx_ir model, so the manager checks validity and drift (exact: 1e-4) and records them,
and the backend only serialises. The last exact pass of cpu-int8 / cpu-int8-vnni (compiler/targets.toml).

Three edits, none of which changes what ONNX Runtime computes:
  * a Relu/Clip whose only reader is a QuantizeLinear that saturates inside the clip bounds is dropped:
    the integers are the same with or without it, and ORT's ClipQuantFusion drops it at load anyway
    (PP-OCRv4 det: 34 HardSigmoid clips). The quantize pass's per-layer figures were measured before,
    on the clipped tensor, so they still compare like with like;
  * one copy of each distinct constant only Q/DQ nodes read, and one DequantizeLinear per distinct constant
    input triple (the quantized HardSigmoid shifts and factors repeat dozens of times). ORT gives each
    consumer its own DQ again at load (EnsureUniqueDQForNodeUnit), so its fusions are unchanged;
  * short names (``k<i>`` for those constants, ``d<i>`` for DequantizeLinear outputs) and unnamed Q/DQ
    nodes: their long names repeat the float tensor's (``conv2d_451.tmp_0_zp``) three times each, 8 % of
    an int8 detector's file. Float tensors, graph inputs/outputs and compute nodes keep their names, so a
    quantized tensor is still found through its QuantizeLinear's input.

``--set keep_names=true`` makes the pass a no-op (names as the user gave them, nothing dropped).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from edgec import model_io
from edgec.pass_infra import Pass, PassContext, register

QDQ = frozenset({"QuantizeLinear", "DequantizeLinear"})


@register("qdq-compact", exact=True)
class QdqCompact(Pass):
    """ORT int8 file compaction: drop clips a Q saturates anyway, share Q/DQ constants, short Q/DQ names."""

    #: leave the file as it is (``--set keep_names=true``; edgec.settings checks the value is a bool)
    keep_names: bool = False

    def apply(self, model: ir.Model, ctx: PassContext) -> bool:
        if self.keep_names:
            ctx.details["skipped"] = "keep_names=true"
            return False
        g = model.graph
        if any(isinstance(v.const_value, ir.ExternalTensor) for v in g.initializers.values()) \
                or model_io.in_memory_bytes(model) > model_io.PROTO_LIMIT:
            # As the file writer did before this was a pass: the weights dominate such files, and reading
            # external tensors back only to compare them would load gigabytes for a few kilobytes of names.
            ctx.details["skipped"] = "weights on external data or above 2 GiB"
            return False
        clips = _drop_clips_inside_q_range(g)
        consts, dqs = _share_qdq_constants(g)
        renamed = _short_names(g)
        ctx.details.update({"clips_dropped": clips, "constants_shared": consts, "dequantize_shared": dqs,
                            "renamed": renamed})
        return bool(clips or consts or dqs or renamed)


def _is_qdq_only(v: ir.Value) -> bool:
    """An initializer, not part of the interface, read only by Q/DQ nodes."""
    uses = v.uses()
    return bool(uses) and not v.is_graph_input() and not v.is_graph_output() \
        and all(u.node.op_type in QDQ for u in uses)


def _small_const(v: ir.Value | None) -> np.ndarray | None:
    """A small initializer's value (the Q's scale and zero point; a Clip bound): None otherwise."""
    if v is None or v.const_value is None or v.is_graph_input() or v.const_value.size > 8:
        return None
    return v.const_value.numpy()


def _scalar(v: ir.Value | None, default: float) -> float | None:
    """A scalar constant input's value; ``default`` for an omitted input, None when it is not constant."""
    if v is None:
        return default
    c = _small_const(v)
    return float(c.reshape(())) if c is not None and c.size == 1 else None


def _drop_clips_inside_q_range(g: ir.Graph) -> int:
    """Remove each Relu/Clip whose only reader is a QuantizeLinear saturating inside its bounds."""
    dropped = 0
    for n in list(g):
        if n.op_type not in ("Clip", "Relu") or n.domain not in ("", "ai.onnx") or not n.outputs:
            continue
        out, x = n.outputs[0], n.inputs[0] if n.inputs else None
        if x is None or out.is_graph_output():
            continue
        uses = out.uses()
        q = uses[0].node if len(uses) == 1 else None
        if q is None or q.op_type != "QuantizeLinear" or len(q.inputs) < 3 or uses[0].idx != 0:
            continue
        scale, zp = _small_const(q.inputs[1]), _small_const(q.inputs[2])
        if scale is None or zp is None or scale.size != 1 or zp.size != 1 or zp.dtype.kind not in "iu":
            continue
        if n.op_type == "Relu":
            lo, hi = 0.0, np.inf
        elif n.attributes:
            continue  # opset < 11: bounds as attributes (not produced by edgec)
        else:
            ins = [*n.inputs[1:3], None, None]
            lo_, hi_ = _scalar(ins[0], -np.inf), _scalar(ins[1], np.inf)
            if lo_ is None or hi_ is None:
                continue
            lo, hi = lo_, hi_
        info = np.iinfo(zp.dtype)
        s, z = float(scale.reshape(())), int(zp.reshape(()))
        q_lo, q_hi = (info.min - z) * s, (info.max - z) * s
        tol = 1e-6 * max(abs(q_lo), abs(q_hi), 1.0)  # float32 rounding of the step
        if q_lo >= lo - tol and q_hi <= hi + tol:
            q.replace_input_with(0, x)
            g.remove(n, safe=True)
            dropped += 1
    if dropped:
        # The clip bounds (and any other initializer nothing reads) go with them, as they did in the file.
        for name, v in list(g.initializers.items()):
            if not v.uses() and not v.is_graph_input() and not v.is_graph_output():
                del g.initializers[name]
    return dropped


def _share_qdq_constants(g: ir.Graph) -> tuple[int, int]:
    """One copy of each distinct Q/DQ-only constant; one DequantizeLinear per distinct constant input
    tuple. Returns (constants merged, DequantizeLinear nodes merged)."""
    first: dict[tuple, ir.Value] = {}
    merged = 0
    for name, v in list(g.initializers.items()):
        if v.const_value is None or not _is_qdq_only(v):
            continue
        arr = v.const_value.numpy()
        key = (v.const_value.dtype, tuple(arr.shape), arr.tobytes())
        if key in first:
            ir.convenience.replace_all_uses_with(v, first[key])
            del g.initializers[name]
            merged += 1
        else:
            first[key] = v
    seen: dict[tuple, ir.Value] = {}
    dq_merged = 0
    for n in list(g):
        if n.op_type != "DequantizeLinear" or n.attributes or n.inputs[0] is None \
                or not n.inputs[0].is_initializer() or n.outputs[0].is_graph_output():
            continue
        key = tuple(n.inputs)
        if key in seen:
            ir.convenience.replace_all_uses_with(n.outputs[0], seen[key])
            g.remove(n, safe=True)
            dq_merged += 1
        else:
            seen[key] = n.outputs[0]
    return merged, dq_merged


def _short_names(g: ir.Graph) -> int:
    """``k<i>``/``d<i>`` names (i: position among the initializers / nodes) and unnamed Q/DQ nodes."""
    renames: dict[ir.Value, str] = {}
    for k, v in enumerate(g.initializers.values()):
        if _is_qdq_only(v):
            renames[v] = f"k{k}"
    for k, n in enumerate(g):
        if n.op_type == "DequantizeLinear" and not n.outputs[0].is_graph_output():
            renames[n.outputs[0]] = f"d{k}"
    taken = {o.name for n in g for o in n.outputs} | set(g.initializers) \
        | {v.name for v in [*g.inputs, *g.outputs]}
    if any(name in taken for name in renames.values()):
        return 0  # a model already using such names: leave its names as they are
    order = list(g.initializers.values())
    for v, name in renames.items():
        v.name = name
    # A renamed initializer moves to the end of onnx_ir's table; keep the file's order as it was.
    for v in order:
        assert v.name is not None
        g.initializers.pop(v.name)
    for v in order:
        g.register_initializer(v)
    for n in g:
        if n.op_type in QDQ:
            n.name = None  # optional in ONNX; the compute nodes keep theirs for messages and profiles
    return len(renames)
