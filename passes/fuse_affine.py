"""Fold constant per-channel scales and shifts into the neighbouring Conv / Gemm weights.   exact

Exported graphs often carry a scalar or per-channel affine next to a convolution: PaddlePaddle's
"learnable affine blocks" (PP-LCNetV3, PP-OCRv4) put ``Mul(s) -> Add(b)`` after every Conv and after
every activation; other exporters leave ``Div`` by a constant or a ``Sub`` of a mean. Each one is an
extra memory pass in float, and in int8 an extra requantization whose range is set by the wrong tensor.

After a weighted op (its output read by nothing else), with ``c`` broadcasting along the channel axis:
    conv(x) * c  ->  conv'(x)  with W[o] * c[o], bias[o] * c[o]      (Div: c -> 1/c)
    conv(x) - c  ->  conv'(x)  with bias - c                          (Add: see fuse-bias)
Before a Conv without padding, or a Gemm (the affine's output read by nothing else):
    conv(x * a)  ->  conv'(x)  with W[:, j] * a[j]
    conv(x + b)  ->  conv'(x)  with bias[o] + sum_j,k W[o, j, k] * b[j]
A padded Conv is left alone on its input side: its zero border would become -b / a in the folded form.

The matcher stays hand-written, not an onnxscript rewrite rule (passes/patterns.py says why): the fold
edits the weights of the Conv/Gemm in place and removes the Mul/Add; there is no subgraph to replace.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from edgec.graph import attr, bypass, const_array, nodes_of, only_consumer, set_input_const
from edgec.graph import infer_shapes as _infer_shapes
from edgec.pass_infra import Pass, PassContext, register
from edgec.passes.fuse_bias import channel_vector, fold_bias_add

_AFTER = ("Conv", "ConvTranspose", "Gemm")


@register("fuse-affine", exact=True)
class FuseAffine(Pass):
    """Fold constant per-channel Mul/Div/Add/Sub around Conv and Gemm into their weights and bias."""

    def apply(self, model: ir.Model, ctx: PassContext) -> bool:
        fused: list[dict[str, str]] = []
        _infer_shapes(model)  # broadcasting checks need ranks
        changed = True
        while changed:  # Mul then Add after one Conv fold one at a time
            changed = False
            for node in nodes_of(model.graph, "Mul", "Div", "Add", "Sub"):
                if node.graph is None:
                    continue
                into = _fold_after(node) or _fold_before(node)
                if into:
                    fused.append({"node": node.name or node.op_type, "op": node.op_type, "into": into})
                    changed = True
        ctx.details["fused"] = fused
        return bool(fused)


def _operands(node: ir.Node) -> list[tuple[ir.Value, np.ndarray, int]]:
    """(tensor, constant, index of the tensor) for each way the node is ``tensor <op> constant``."""
    out = []
    for k in (0, 1):
        if node.op_type in ("Div", "Sub") and k == 1:
            break  # c / x and c - x are not affine in a foldable way
        x, c = node.inputs[k], const_array(node.inputs[1 - k])
        if x is not None and c is not None and const_array(x) is None and c.dtype.kind == "f":
            out.append((x, c, k))
    return out


def _weight(node: ir.Node) -> np.ndarray | None:
    if node.domain not in ("", "ai.onnx") or len(node.inputs) < 2:
        return None
    w = const_array(node.inputs[1])
    return w if w is not None and w.dtype.kind == "f" else None


def _fold_after(node: ir.Node) -> str | None:
    for x, c, k in _operands(node):
        prod = x.producer()
        if prod is None or prod.op_type not in _AFTER or only_consumer(x) is not node:
            continue
        w = _weight(prod)
        if w is None or prod.outputs[0].shape is None:
            continue
        if node.op_type == "Add":
            ok = fold_bias_add(prod, c)
        elif node.op_type == "Sub":
            ok = fold_bias_add(prod, -c)
        else:
            ok = _scale_outputs(prod, w, c if node.op_type == "Mul" else None if np.any(c == 0) else 1.0 / c)
        if ok:
            bypass(node, keep=k)
            return prod.name or prod.op_type
    return None


def _out_axis_and_channels(node: ir.Node, w: np.ndarray) -> tuple[int, int, int]:
    """(weight axis of the output channels, output channel count, axis of the channels in the output)."""
    rank = len(node.outputs[0].shape or ())
    if node.op_type == "Conv":
        return 0, w.shape[0], 1
    if node.op_type == "ConvTranspose":
        return 1, w.shape[1] * int(attr(node, "group", 1)), 1
    trans_b = int(attr(node, "transB", 0))
    return (0 if trans_b else 1), (w.shape[0] if trans_b else w.shape[1]), rank - 1


def _scale_outputs(node: ir.Node, w: np.ndarray, c: np.ndarray | None) -> bool:
    if c is None:
        return False
    w_axis, channels, out_axis = _out_axis_and_channels(node, w)
    rank = len(node.outputs[0].shape or ())
    vec = channel_vector(c, channels, rank - out_axis, rank)
    if vec is None:
        return False
    if node.op_type == "Gemm" and float(attr(node, "alpha", 1.0)) != 1.0 and len(node.inputs) > 2:
        return False  # keep the alpha/beta bookkeeping simple: fuse-bn normalizes Gemm first
    w64 = w.astype(np.float64)
    if node.op_type == "ConvTranspose":
        g = int(attr(node, "group", 1))
        per = w.shape[1]
        scale = vec.reshape(g, per)  # output channel o = group * per + j sits at W[group's rows, j]
        rows = w.shape[0] // g
        w64 = w64 * np.repeat(scale, rows, axis=0).reshape((w.shape[0], per) + (1,) * (w.ndim - 2))
    else:
        shape = [1] * w.ndim
        shape[w_axis] = channels
        w64 = w64 * vec.reshape(shape)
    set_input_const(node, 1, w64.astype(w.dtype), name=f"{node.name or node.op_type}_w")
    bias = const_array(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
    if bias is not None:
        if node.op_type == "Gemm":
            beta = float(attr(node, "beta", 1.0))
            b = beta * np.broadcast_to(bias.astype(np.float64).reshape(-1), (channels,))
            node.attributes["beta"] = ir.AttrFloat32("beta", 1.0)
        else:
            b = bias.astype(np.float64)
        set_input_const(node, 2, (b * vec).astype(bias.dtype), name=f"{node.name or node.op_type}_bias")
    return True


def _fold_before(node: ir.Node) -> str | None:
    if node.op_type not in ("Mul", "Add", "Sub", "Div"):
        return None
    for x, c, k in _operands(node):
        out = node.outputs[0]
        user = only_consumer(out)
        if user is None or user.op_type not in ("Conv", "Gemm") or user.inputs[0] is not out:
            continue
        w = _weight(user)
        if w is None or out.shape is None or out.is_graph_output():
            continue
        if user.op_type == "Conv" and not _unpadded(user):
            continue
        if user.op_type == "Gemm" and (int(attr(user, "transA", 0)) or float(attr(user, "alpha", 1.0)) != 1.0):
            continue
        if _fold_input(user, w, node.op_type, c, len(out.shape)):
            bypass(node, keep=k)
            return user.name or user.op_type
    return None


def _unpadded(conv: ir.Node) -> bool:
    pads = attr(conv, "pads", None)
    auto = attr(conv, "auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    return auto in ("NOTSET", "VALID") and (pads is None or not any(pads))


def _fold_input(user: ir.Node, w: np.ndarray, op: str, c: np.ndarray, rank: int) -> bool:
    if user.op_type == "Conv":
        g = int(attr(user, "group", 1))
        cin = w.shape[1] * g
        vec = channel_vector(c, cin, rank - 1, rank)
        if vec is None:
            return False
        # Input channel of weight slot (o, j): the group of o times the group width, plus j.
        groups = np.arange(w.shape[0]) // (w.shape[0] // g)
        per_slot = vec[groups[:, None] * w.shape[1] + np.arange(w.shape[1])[None, :]]  # [Cout, Cin/g]
        per_slot = per_slot.reshape(per_slot.shape + (1,) * (w.ndim - 2))
    else:
        trans_b = int(attr(user, "transB", 0))
        k_in = w.shape[1] if trans_b else w.shape[0]
        vec = channel_vector(c, k_in, 1, rank)
        if vec is None or rank != 2:
            return False
        per_slot = vec[None, :] if trans_b else vec[:, None]
    w64 = w.astype(np.float64)
    cout = w.shape[0] if user.op_type == "Conv" or int(attr(user, "transB", 0)) else w.shape[1]
    bias = const_array(user.inputs[2]) if len(user.inputs) > 2 and user.inputs[2] is not None else None
    if bias is not None and bias.size not in (1, cout):
        return False
    b = np.zeros(cout) if bias is None else np.broadcast_to(bias.astype(np.float64).reshape(-1), (cout,))
    if user.op_type == "Gemm":
        b = b * float(attr(user, "beta", 1.0))
    if op in ("Mul", "Div"):
        if op == "Div" and np.any(per_slot == 0):
            return False
        w_new = w64 * (per_slot if op == "Mul" else 1.0 / per_slot)
        b_new = b
    else:
        shift = per_slot if op == "Add" else -per_slot
        w_new = w64
        contrib = w64 * shift
        b_new = b + (contrib.reshape(cout, -1).sum(axis=1) if user.op_type == "Conv" or int(attr(user, "transB", 0))
                     else contrib.sum(axis=0))
    set_input_const(user, 1, w_new.astype(w.dtype), name=f"{user.name or user.op_type}_w")
    if op in ("Add", "Sub") or bias is not None:
        set_input_const(user, 2, b_new.astype(w.dtype), name=f"{user.name or user.op_type}_bias")
        if user.op_type == "Gemm":
            user.attributes["beta"] = ir.AttrFloat32("beta", 1.0)
    return True
