"""Handlers for the ops transformer exports add: LayerNormalization and the erf-GELU pattern.

TFLite has no LayerNormalization builtin (the schema's L2_NORMALIZATION and
LOCAL_RESPONSE_NORMALIZATION are other functions), so it is lowered to the ops the TFLite converter
itself emits for ``tf.keras.layers.LayerNormalization``: MEAN, SUB, MUL, MEAN, ADD, RSQRT, MUL, then
the affine MUL/ADD -- all run by XNNPACK. It always computes in float (DEQUANTIZE/QUANTIZE around it
in an int8 graph), because an int8 variance of an int8 difference loses most of its bits.

ONNX has no Gelu before opset 20 and PyTorch exports ``nn.GELU()`` as
``Mul(Mul(x, Add(Erf(Div(x, sqrt 2)), 1)), 0.5)``; the whole chain becomes one GELU
(``approximate=False``: the erf form, not the tanh one). A lone Erf has no TFLite builtin and stays a
clear error.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from edgec.errors import EdgecError
from edgec.graph import attr, only_consumer

from . import layout as L
from .converter import F32, Converter
from .writer import BuiltinOp, options

SQRT2 = float(np.sqrt(2.0))


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


def gelu_pattern(cv: Converter, node: ir.Node) -> bool:
    """Emit one GELU for ``x * 0.5 * (1 + erf(x / sqrt 2))`` starting at its first node (the Div, or a
    Mul by 1/sqrt 2), in the two orders exporters write the 0.5: ``Mul(Mul(x, 1 + erf), 0.5)`` (PyTorch)
    and ``Mul(x, Mul(1 + erf, 0.5))``. In a QDQ graph the Q -> DQ pairs between the nodes are looked
    through and GELU runs in int8 (TFLite's int8 GELU is a lookup table for any in/out scales)."""
    if node.op_type not in ("Div", "Mul") or len(node.inputs) != 2:
        return False
    x = node.inputs[0]
    if node.op_type == "Div":
        if not _const_is(cv, node.inputs[1], SQRT2):
            return False
    elif _const_is(cv, node.inputs[1], 1 / SQRT2):
        pass
    elif _const_is(cv, node.inputs[0], 1 / SQRT2):
        x = node.inputs[1]
    else:
        return False
    if x is None or cv.const(x) is not None:
        return False
    chain: list[ir.Node] = []
    erf = _reader(cv, node.outputs[0], chain)
    if erf is None or erf.op_type != "Erf":
        return False
    add = _reader(cv, erf.outputs[0], chain)
    if add is None or add.op_type != "Add" or not _const_is(cv, _other(add, _input_from(add, erf)), 1.0):
        return False
    m1 = _reader(cv, add.outputs[0], chain)
    if m1 is None or m1.op_type != "Mul":
        return False
    m1_other = _other(m1, _input_from(m1, add))
    last = _reader(cv, m1.outputs[0], chain)
    if last is None or last.op_type != "Mul":
        return False
    last_other = _other(last, _input_from(last, m1))
    if not ((_root(m1_other) is _root(x) and _const_is(cv, last_other, 0.5))
            or (_const_is(cv, m1_other, 0.5) and _root(last_other) is _root(x))):
        return False
    out = last.outputs[0]
    q = cv.quant_mode([x], out)
    s = cv.slot(x)
    cv.emit(BuiltinOp.GELU, [cv.act(x, s.perm, "int8" if q else "float")], out, s.perm, q,
            options("GeluOptionsT", approximate=False))
    cv.absorb([*chain, erf, add, m1, last])
    return True


def _reader(cv: Converter, v: ir.Value, chain: list[ir.Node]) -> ir.Node | None:
    """The only reader of ``v``, looking through one QuantizeLinear -> DequantizeLinear pair (added
    to ``chain``) as a QDQ graph has between every two ops."""
    node = only_consumer(v)
    if node is not None and cv.int8 and node.op_type == "QuantizeLinear":
        dq = only_consumer(node.outputs[0])
        if dq is None or dq.op_type != "DequantizeLinear":
            return None
        chain += [node, dq]
        node = only_consumer(dq.outputs[0])
    return node


def _input_from(node: ir.Node, producer: ir.Node) -> ir.Value | None:
    """The input of ``node`` that comes from ``producer`` (directly or through a Q -> DQ pair)."""
    return next((v for v in node.inputs if v is not None and _root(v) is producer.outputs[0]), None)


def _root(v: ir.Value | None) -> ir.Value | None:
    """``v`` with a QuantizeLinear -> DequantizeLinear pair in front of it looked through."""
    p = v.producer() if v is not None else None
    if p is not None and p.op_type == "DequantizeLinear":
        q = p.inputs[0].producer() if p.inputs[0] is not None else None
        if q is not None and q.op_type == "QuantizeLinear":
            return q.inputs[0]
    return v


def _const_is(cv: Converter, v: ir.Value | None, value: float) -> bool:
    c = cv.const(v)
    return c is not None and c.size == 1 and abs(float(c.reshape(-1)[0]) - value) <= 1e-6 * max(1.0, abs(value))


def _other(n: ir.Node, v: ir.Value | None) -> ir.Value | None:
    ins = list(n.inputs)
    if len(ins) != 2:
        return None
    return ins[1] if ins[0] is v else ins[0] if ins[1] is v else None
