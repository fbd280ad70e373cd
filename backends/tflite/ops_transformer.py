"""Handlers for the ops transformer exports add: LayerNormalization and Gelu.

TFLite has no LayerNormalization builtin (the schema's L2_NORMALIZATION and
LOCAL_RESPONSE_NORMALIZATION are other functions), so it is lowered to the ops the TFLite converter
itself emits for ``tf.keras.layers.LayerNormalization``: MEAN, SUB, MUL, MEAN, ADD, RSQRT, MUL, then
the affine MUL/ADD -- all run by XNNPACK. It always computes in float (DEQUANTIZE/QUANTIZE around it
in an int8 graph), because an int8 variance of an int8 difference loses most of its bits.

ONNX has no Gelu before opset 20 and PyTorch exports ``nn.GELU()`` as
``Mul(Mul(x, Add(Erf(Div(x, sqrt 2)), 1)), 0.5)``; the legalize pass ``tflite-gelu``
(passes/legalize_tflite.py) makes that chain one Gelu, which becomes one GELU here (``approximate=False``:
the erf form). A lone Erf has no TFLite builtin and stays a clear error.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from edgec.errors import EdgecError
from edgec.graph import attr

from . import layout as L
from .converter import F32, Converter
from .registry import register
from .writer import BuiltinOp, options


def layer_norm(cv: Converter, node: ir.Node) -> None:
    x, out = node.inputs[0], node.outputs[0]
    if len(node.outputs) > 1 and any(o is not None and o.consumers() for o in node.outputs[1:]):
        raise EdgecError(f"node '{node.name}': LayerNormalization mean/inv_std_dev outputs have no TFLite mapping")
    s = cv.slot(x)
    rank = len(s.shape)
    axis = int(attr(node, "axis", -1)) % rank
    eps = float(attr(node, "epsilon", 1e-5))
    axes = sorted(L.axis_in(s.perm, a) for a in range(axis, rank))
    xin = cv.act(x, s.perm, "float")
    full = L.shape_in(s.perm, s.shape)
    reduced = tuple(1 if i in axes else d for i, d in enumerate(full))
    axes_t = cv.b.i32(f"{node.name}_axes", axes)

    def tensor(suffix: str, shape: tuple[int, ...]) -> int:
        return cv.b.tensor(f"{node.name}_{suffix}", shape, F32)

    mean, diff, sq, var, var_eps, inv = (tensor(n, sh) for n, sh in (
        ("mean", reduced), ("centered", full), ("sq", full), ("var", reduced), ("var_eps", reduced),
        ("rstd", reduced)))
    keep = options("ReducerOptionsT", keepDims=True)
    cv.b.op(BuiltinOp.MEAN, [xin, axes_t], [mean], keep)
    cv.b.op(BuiltinOp.SUB, [xin, mean], [diff], options("SubOptionsT"))
    cv.b.op(BuiltinOp.MUL, [diff, diff], [sq], options("MulOptionsT"))
    cv.b.op(BuiltinOp.MEAN, [sq, axes_t], [var], keep)
    cv.b.op(BuiltinOp.ADD, [var, cv.fconst(f"{node.name}_eps", np.asarray([eps], np.float32))], [var_eps],
            options("AddOptionsT"))
    cv.b.op(BuiltinOp.RSQRT, [var_eps], [inv])
    gamma = node.inputs[1]
    beta = node.inputs[2] if len(node.inputs) > 2 else None
    if cv.const(gamma) is None or (beta is not None and cv.const(beta) is None):
        raise EdgecError(f"node '{node.name}': LayerNormalization with non-constant scale/bias has no TFLite mapping")
    normed = tensor("normed", full)
    cv.b.op(BuiltinOp.MUL, [diff, inv], [normed], options("MulOptionsT"))
    if beta is None:
        cv.emit(BuiltinOp.MUL, [normed, cv.operand(gamma, s.perm, rank, None)], out, s.perm, None,
                options("MulOptionsT"))
        return
    scaled = tensor("scaled", full)
    cv.b.op(BuiltinOp.MUL, [normed, cv.operand(gamma, s.perm, rank, None)], [scaled], options("MulOptionsT"))
    cv.emit(BuiltinOp.ADD, [scaled, cv.operand(beta, s.perm, rank, None)], out, s.perm, None,
            options("AddOptionsT"))


def gelu(cv: Converter, node: ir.Node) -> None:
    """ONNX Gelu (opset 20; the legalize pass tflite-gelu makes it from the erf chain PyTorch exports).
    In an int8 graph its input and output quantizations are GELU's: TFLite's int8 GELU is a lookup table
    for any in/out scales."""
    x, out = node.inputs[0], node.outputs[0]
    approximate = attr(node, "approximate", "none")
    if approximate not in ("none", "tanh"):
        raise EdgecError(f"node '{node.name}': Gelu approximate={approximate!r} has no TFLite mapping")
    q = cv.quant_mode([x], out)
    s = cv.slot(x)
    cv.emit(BuiltinOp.GELU, [cv.act(x, s.perm, "int8" if q else "float")], out, s.perm, q,
            options("GeluOptionsT", approximate=approximate == "tanh"))


register({"LayerNormalization": layer_norm, "Gelu": gelu})
