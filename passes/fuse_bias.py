"""Fold an Add of a constant per-channel vector into the bias of the preceding Conv or Gemm.   exact

conv(x) + c with c broadcasting only along the channel axis ([C], [C,1,1], [1,C,1,1]) is conv(x)
with bias b + c. A rank-2 MatMul with a constant weight followed by such an Add becomes one Gemm,
which every backend runs as a single fully-connected kernel.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from edgec.graph import attr, bypass, const_array, nodes_of, only_consumer, set_input_const
from edgec.graph import infer_shapes as _infer_shapes
from edgec.pass_infra import Pass, PassContext, register


@register("fuse-bias", exact=True)
class FuseBias(Pass):
    """Fold Add(constant per-channel vector) into a preceding Conv / ConvTranspose / Gemm / MatMul bias."""

    def apply(self, model: ir.Model, ctx: PassContext) -> bool:
        fused = []
        _infer_shapes(model)  # matching needs output ranks (Add broadcasting, MatMul rank)
        for add in nodes_of(model.graph, "Add"):
            for k in (0, 1):
                src, other = add.inputs[k], add.inputs[1 - k]
                c = const_array(other)
                producer = src.producer() if src is not None else None
                if c is None or producer is None or only_consumer(src) is not add:
                    continue
                if producer.domain not in ("", "ai.onnx") or producer.op_type not in _WEIGHTED:
                    continue
                if len(producer.inputs) < 2 or const_array(producer.inputs[1]) is None:
                    continue
                if fold_bias_add(producer, c):
                    bypass(add, keep=k)
                    fused.append({"node": add.name, "into": producer.name or producer.op_type})
                    break
        ctx.details["fused"] = fused
        return bool(fused)


_WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def channel_vector(c: np.ndarray, channels: int, axis_from_end: int, out_rank: int) -> np.ndarray | None:
    """``c`` as a [channels] vector if it broadcasts along the channel axis only, else None."""
    if c.ndim > out_rank:
        return None
    shape = (1,) * (out_rank - c.ndim) + c.shape
    ch_axis = out_rank - axis_from_end
    if any(d != 1 for i, d in enumerate(shape) if i != ch_axis):
        return None
    if shape[ch_axis] not in (1, channels):
        return None
    return np.broadcast_to(c.reshape(-1), (channels,)).astype(np.float64)


def fold_bias_add(node: ir.Node, c: np.ndarray) -> bool:
    w = const_array(node.inputs[1])
    out = node.outputs[0]
    if w is None or out.shape is None:
        return False
    rank = len(out.shape)
    if node.op_type in ("Conv", "ConvTranspose"):
        channels = w.shape[0] if node.op_type == "Conv" else w.shape[1] * int(attr(node, "group", 1))
        vec = channel_vector(c, channels, rank - 1, rank)
        bias_index = 2
    elif node.op_type == "Gemm":
        trans_b = int(attr(node, "transB", 0))
        channels = w.shape[0] if trans_b else w.shape[1]
        vec = channel_vector(c, channels, 1, 2)
        beta = float(attr(node, "beta", 1.0))
        old = const_array(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
        if old is not None and old.size not in (1, channels):
            return False
        if vec is None:
            return False
        base = np.zeros(channels) if old is None else beta * np.broadcast_to(old.reshape(-1), (channels,))
        set_input_const(node, 2, (base + vec).astype(w.dtype), name=f"{node.name or 'gemm'}_bias")
        node.attributes["beta"] = ir.AttrFloat32("beta", 1.0)
        return True
    elif node.op_type == "MatMul":
        a = node.inputs[0]
        if w.ndim != 2 or a is None or a.shape is None or len(a.shape) != 2:
            return False
        vec = channel_vector(c, w.shape[1], 1, 2)
        if vec is None:
            return False
        node.op_type = "Gemm"
        node.version = None
        set_input_const(node, 2, vec.astype(w.dtype), name=f"{node.name or 'matmul'}_bias")
        return True
    else:
        return False
    if vec is None or c.dtype != w.dtype:
        return False
    old = const_array(node.inputs[bias_index]) if len(node.inputs) > bias_index and node.inputs[bias_index] else None
    base = np.zeros(channels) if old is None else old.astype(np.float64)
    set_input_const(node, bias_index, (base + vec).astype(w.dtype), name=f"{node.name or 'conv'}_bias")
    return True
