"""Fold BatchNormalization into the preceding weighted op.   exact

y = gamma * (z - mean) / sqrt(var + eps) + beta with z = conv(x) is again a convolution:
W' = W * s (per output channel), b' = (b - mean) * s + beta, s = gamma / sqrt(var + eps).
The same holds for ConvTranspose (output channels on weight axis 1, per group), Gemm (columns of
B), and a rank-2 MatMul with a constant weight (becomes a Gemm with a bias).
Refused when the weighted op's output has other readers (they would see the fused values) or the
BatchNormalization is in training mode.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from edgec.graph import attr, bypass, const_array, nodes_of, only_consumer, set_input_const, static_shape
from edgec.graph import infer_shapes as _infer_shapes
from edgec.pass_infra import Pass, PassContext, register


@register("fuse-bn", exact=True)
class FuseBatchNorm(Pass):
    """Fold BatchNormalization into a preceding Conv, ConvTranspose, Gemm or rank-2 MatMul."""

    def apply(self, model: ir.Model, ctx: PassContext) -> bool:
        fused, refused = [], []
        _infer_shapes(model)  # matching needs output ranks (Add broadcasting, MatMul rank)
        for producer, bn in weighted_op_then_batchnorm(model.graph):
            stats = _bn_scale_shift(bn)
            if stats is None:
                refused.append({"node": bn.name, "reason": "statistics are not constant or training mode is on"})
                continue
            scale, shift = stats
            ok = {"Conv": _fold_conv, "ConvTranspose": _fold_conv_transpose, "Gemm": _fold_gemm,
                  "MatMul": _fold_matmul}[producer.op_type](producer, scale, shift)
            if not ok:
                refused.append({"node": bn.name, "reason": f"cannot fold into {producer.op_type} '{producer.name}'"})
                continue
            bypass(bn)
            fused.append({"node": bn.name, "into": producer.name or producer.op_type})
        ctx.details["fused"] = fused
        if refused:
            ctx.details["refused"] = refused
        return bool(fused)


def weighted_op_then_batchnorm(graph: ir.Graph):
    """(producer, bn) for every BatchNormalization whose input comes from a weighted op it alone reads."""
    for bn in nodes_of(graph, "BatchNormalization"):
        if bn.graph is None:
            continue  # removed by an earlier match
        producer = bn.inputs[0].producer() if bn.inputs[0] is not None else None
        if producer is None or producer.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            continue
        if producer.domain not in ("", "ai.onnx") or only_consumer(producer.outputs[0]) is not bn:
            continue
        if const_array(producer.inputs[1]) is None:
            continue
        yield producer, bn


def _bn_scale_shift(bn: ir.Node) -> tuple[np.ndarray, np.ndarray] | None:
    if len(bn.outputs) > 1 and any(o.uses() for o in bn.outputs[1:]):
        return None
    if attr(bn, "training_mode", 0):
        return None
    if attr(bn, "spatial", 1) == 0 and (static_shape(bn.inputs[0]) or (0, 0, 0))[2:] not in ((), (1, 1)):
        return None  # opset < 9 per-element statistics do not map onto output channels
    arrays = [const_array(v) for v in bn.inputs[1:5]]
    if any(a is None for a in arrays):
        return None
    gamma, beta, mean, var = (np.asarray(a, dtype=np.float64).reshape(-1) for a in arrays)  # type: ignore[arg-type]
    eps = float(attr(bn, "epsilon", 1e-5))
    scale = gamma / np.sqrt(var + eps)
    return scale, beta - mean * scale


def _bias(node: ir.Node, index: int, channels: int, dtype: np.dtype) -> np.ndarray:
    b = const_array(node.inputs[index]) if len(node.inputs) > index and node.inputs[index] is not None else None
    return np.zeros(channels, dtype=np.float64) if b is None else np.asarray(b, dtype=np.float64).reshape(-1)


def _fold_conv(conv: ir.Node, scale: np.ndarray, shift: np.ndarray) -> bool:
    w = const_array(conv.inputs[1])
    if w is None or w.shape[0] != scale.size:
        return False
    b = _bias(conv, 2, w.shape[0], w.dtype)
    if b.size not in (1, w.shape[0]):
        return False
    w_new = (w.astype(np.float64) * scale.reshape(-1, *([1] * (w.ndim - 1)))).astype(w.dtype)
    set_input_const(conv, 1, w_new)
    set_input_const(conv, 2, (b * scale + shift).astype(w.dtype), name=f"{conv.name or 'conv'}_bias")
    return True


def _fold_conv_transpose(node: ir.Node, scale: np.ndarray, shift: np.ndarray) -> bool:
    w = const_array(node.inputs[1])
    if w is None:
        return False
    groups = int(attr(node, "group", 1))
    cin, cout_g = w.shape[0], w.shape[1]
    if cout_g * groups != scale.size:
        return False
    # Weight [Cin, Cout/g, k...]: input channel i belongs to group i // (Cin/g), whose outputs are
    # the block [g*Cout/g, (g+1)*Cout/g).
    s = scale.reshape(groups, 1, cout_g)
    w64 = w.astype(np.float64).reshape(groups, cin // groups, cout_g, -1) * s[..., None]
    b = _bias(node, 2, scale.size, w.dtype)
    set_input_const(node, 1, w64.reshape(w.shape).astype(w.dtype))
    set_input_const(node, 2, (b * scale + shift).astype(w.dtype), name=f"{node.name or 'convT'}_bias")
    return True


def _fold_gemm(gemm: ir.Node, scale: np.ndarray, shift: np.ndarray) -> bool:
    w = const_array(gemm.inputs[1])
    if w is None or w.ndim != 2:
        return False
    trans_b = int(attr(gemm, "transB", 0))
    n = w.shape[0] if trans_b else w.shape[1]
    if n != scale.size:
        return False
    alpha, beta = float(attr(gemm, "alpha", 1.0)), float(attr(gemm, "beta", 1.0))
    w_new = w.astype(np.float64) * (scale[:, None] if trans_b else scale[None, :])
    c = const_array(gemm.inputs[2]) if len(gemm.inputs) > 2 and gemm.inputs[2] is not None else None
    if c is not None and c.size not in (1, n):
        return False  # a full [M, N] bias cannot absorb a per-column shift in general
    c64 = np.zeros(n) if c is None else np.broadcast_to(np.asarray(c, np.float64).reshape(-1), (n,))
    # New Gemm: alpha * A @ (B * s) + 1.0 * (beta * C * s + shift)
    set_input_const(gemm, 1, w_new.astype(w.dtype))
    set_input_const(gemm, 2, (beta * c64 * scale + shift).astype(w.dtype), name=f"{gemm.name or 'gemm'}_bias")
    gemm.attributes["beta"] = ir.AttrFloat32("beta", 1.0)
    gemm.attributes["alpha"] = ir.AttrFloat32("alpha", alpha)
    return True


def _fold_matmul(mm: ir.Node, scale: np.ndarray, shift: np.ndarray) -> bool:
    w = const_array(mm.inputs[1])
    a_shape = mm.inputs[0].shape if mm.inputs[0] is not None else None
    if w is None or w.ndim != 2 or a_shape is None or len(a_shape) != 2 or w.shape[1] != scale.size:
        return False  # for rank > 2 the BN channel axis (1) is not the MatMul's output axis
    mm.op_type = "Gemm"
    mm.version = None
    set_input_const(mm, 1, (w.astype(np.float64) * scale[None, :]).astype(w.dtype))
    set_input_const(mm, 2, shift.astype(w.dtype), name=f"{mm.name or 'matmul'}_bias")
    return True
