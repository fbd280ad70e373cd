"""Legalize for TFLite: the fusions the writer maps to one builtin, as checked passes.   exact (see tflite-gelu)

The TFLite backend used to match these chains while writing the flatbuffer, where the manager never saw
them. As passes they are validated, drift-checked and recorded, and the writer maps the one-op forms
(``HardSwish`` -> HARD_SWISH, ``Gelu`` -> GELU) one to one. They are the last passes of the tflite-*
targets (stages ``legalize-tflite`` and ``legalize-tflite-int8`` in compiler/targets.toml).

ONNX has HardSwish from opset 14 and Gelu from opset 20: a pass that finds a chain in an older model
raises the model's opset first with ONNX's version converter (as the manager does for ``min_opset``), and
leaves models without such a chain exactly as they are.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from edgec import model_io
from edgec.graph import NameSource, const_array, only_consumer, opset_version
from edgec.pass_infra import Pass, PassContext, register
from edgec.passes.fuse_activation import FuseActivation, _match_clip_form, _match_hardsigmoid_form

SQRT2 = math.sqrt(2.0)
QDQ = ("QuantizeLinear", "DequantizeLinear")


def raise_opset(model: ir.Model, version: int, ctx: PassContext) -> bool:
    """Upgrade ``model`` in place to at least ``version`` (the manager's ensure_opset, kept in place)."""
    if opset_version(model) >= version:
        return False
    new = model_io.ensure_opset(model, version)
    model.graph = new.graph
    model.ir_version = new.ir_version
    model.functions.clear()
    model.functions.update(new.functions)
    ctx.details["opset_upgraded_to"] = version
    return True


@register("tflite-hardswish", exact=True)
class TfliteHardSwish(Pass):
    """TFLite legalize: each spelled-out HardSwish becomes one HardSwish (-> HARD_SWISH), on any opset."""

    def apply(self, model: ir.Model, ctx: PassContext) -> bool:
        # fuse-activation fuses these already on opset 14+; below it keeps x * HardSigmoid(x), which
        # TFLite would run as four ops. Only a model with such a chain gets the opset raised.
        if not any(_match_clip_form(n) or _match_hardsigmoid_form(n) for n in model.graph):
            return False
        upgraded = raise_opset(model, 14, ctx)
        return FuseActivation().apply(model, ctx) or upgraded


@register("tflite-gelu", exact=True)
class TfliteGelu(Pass):
    """TFLite legalize: the erf GELU chain x * 0.5 * (1 + erf(x / sqrt 2)) becomes one Gelu (-> GELU).

    PyTorch exports ``nn.GELU()`` as ``Mul(Mul(x, Add(Erf(Div(x, sqrt 2)), 1)), 0.5)``; the 0.5 may also
    sit on the other product (``Mul(x, Mul(1 + erf, 0.5))``). In a QDQ graph the Q -> DQ pairs between the
    nodes go too: TFLite's int8 GELU is one lookup table from the input's to the output's quantization,
    so the intermediate roundings never happen in the artifact, and the ONNX graph now says so. That
    changes the QDQ graph's outputs (it rounds less), so the pass is exact only when it removed no Q/DQ.
    On an int8 target the pass waits for the QDQ graph: a Gelu in the float model would change what the
    quantizer places and calibrates (tools that run the float part of the pipeline reuse this list).
    """

    def __post_init__(self) -> None:
        self._removed_qdq = False

    def is_exact(self) -> bool:
        return not self._removed_qdq

    def apply(self, model: ir.Model, ctx: PassContext) -> bool:
        self._removed_qdq = False
        g = model.graph
        if ctx.scheme.get("precision") == "int8" and not any(n.op_type == "QuantizeLinear" for n in g):
            ctx.details["skipped"] = "int8 target, float graph: fused after quantize"
            return False
        if not any(_match_gelu(n) for n in g):
            return False
        upgraded = raise_opset(model, 20, ctx)
        g = model.graph
        names = NameSource(g)
        fused = []
        for node in list(g):
            if node.graph is None:
                continue
            match = _match_gelu(node)
            if match is None:
                continue
            x, out, dead, loose = match
            gelu = ir.node("Gelu", [x], name=names(f"{node.name or 'gelu'}_gelu"))
            # At the chain's first node, where the writer used to emit GELU: the op order stays the same.
            g.insert_before(node, gelu)
            y = gelu.outputs[0]
            y.shape, y.type = out.shape, out.type
            name = out.name
            ir.convenience.replace_all_uses_with(out, y, replace_graph_outputs=True)
            out.name = None
            y.name = name
            for n in reversed(dead):
                g.remove(n, safe=True)
            _prune(g, loose)
            qdq = sum(n.op_type in QDQ for n in dead)
            self._removed_qdq |= qdq > 0
            fused.append({"node": node.name or node.op_type, "ops": len(dead), "qdq_removed": qdq})
        ctx.details["fused"] = fused
        return bool(fused) or upgraded


def _const(v: ir.Value | None) -> np.ndarray | None:
    """A constant's value, a DequantizeLinear of a constant dequantized (a QDQ graph's quantized scalars)."""
    c = const_array(v)
    if c is not None or v is None:
        return c
    p = v.producer()
    if p is None or p.op_type != "DequantizeLinear" or p.attributes.get("axis") is not None:
        return None
    q, s, z = _scale_zp_input(p)
    if q is None and p.inputs[0] is not None:
        # QuantizeLinear(constant) -> DequantizeLinear, as ONNX Runtime's quantizer leaves scalar operands.
        qn = p.inputs[0].producer()
        if qn is not None and qn.op_type == "QuantizeLinear" and not qn.attributes:
            c, qs, qz = _scale_zp_input(qn)
            if c is not None and qs is not None and qz is not None and qs.size == 1 and qz.size == 1:
                info = np.iinfo(qz.dtype)
                q = np.clip(np.rint(c.astype(np.float32) / qs) + qz, info.min, info.max).astype(qz.dtype)
    if q is None or s is None or z is None or s.size != 1 or z.size != 1:
        return None
    return (q.astype(np.float32) - z.astype(np.float32)) * s.astype(np.float32)


def _scale_zp_input(n: ir.Node) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """A Q/DQ node's constant (input, scale, zero point); the zero point defaults to uint8 0."""
    z = const_array(n.inputs[2]) if len(n.inputs) > 2 and n.inputs[2] is not None else np.zeros((), np.uint8)
    return const_array(n.inputs[0]), const_array(n.inputs[1]), z


def _const_is(v: ir.Value | None, value: float) -> bool:
    c = _const(v)
    return c is not None and c.size == 1 and abs(float(c.reshape(-1)[0]) - value) <= 1e-6 * max(1.0, abs(value))


def _reader(v: ir.Value, chain: list[ir.Node]) -> ir.Node | None:
    """The only reader of ``v``, looking through one QuantizeLinear -> DequantizeLinear pair (added to
    ``chain``) as a QDQ graph has between every two ops."""
    if v.is_graph_output():
        return None
    node = only_consumer(v)
    if node is not None and node.op_type == "QuantizeLinear":
        if node.outputs[0].is_graph_output():
            return None
        dq = only_consumer(node.outputs[0])
        if dq is None or dq.op_type != "DequantizeLinear" or dq.outputs[0].is_graph_output():
            return None
        chain += [node, dq]
        node = only_consumer(dq.outputs[0])
    return node


def _root(v: ir.Value | None) -> ir.Value | None:
    """``v`` with a QuantizeLinear -> DequantizeLinear pair in front of it looked through."""
    p = v.producer() if v is not None else None
    if p is not None and p.op_type == "DequantizeLinear" and p.inputs[0] is not None:
        q = p.inputs[0].producer()
        if q is not None and q.op_type == "QuantizeLinear":
            return q.inputs[0]
    return v


def _input_from(node: ir.Node, producer: ir.Node) -> ir.Value | None:
    """The input of ``node`` that comes from ``producer`` (directly or through a Q -> DQ pair)."""
    return next((v for v in node.inputs if v is not None and _root(v) is producer.outputs[0]), None)


def _other(n: ir.Node, v: ir.Value | None) -> ir.Value | None:
    ins = list(n.inputs)
    if len(ins) != 2:
        return None
    return ins[1] if ins[0] is v else ins[0] if ins[1] is v else None


def _match_gelu(node: ir.Node) -> tuple[ir.Value, ir.Value, list[ir.Node], list[ir.Value]] | None:
    """(x, the chain's output, its nodes in order, values that may be left unread) for a GELU chain
    starting at ``node`` (the Div by sqrt 2, or a Mul by 1/sqrt 2)."""
    if node.op_type not in ("Div", "Mul") or node.domain not in ("", "ai.onnx") or len(node.inputs) != 2:
        return None
    x = node.inputs[0]
    if node.op_type == "Div":
        if not _const_is(node.inputs[1], SQRT2):
            return None
    elif _const_is(node.inputs[0], 1 / SQRT2):
        x = node.inputs[1]
    elif not _const_is(node.inputs[1], 1 / SQRT2):
        return None
    if x is None or _const(x) is not None or x.dtype not in (None, ir.DataType.FLOAT):
        return None
    chain: list[ir.Node] = [node]
    erf = _reader(node.outputs[0], chain)
    if erf is None or erf.op_type != "Erf":
        return None
    chain.append(erf)
    add = _reader(erf.outputs[0], chain)
    if add is None or add.op_type != "Add" or not _const_is(_other(add, _input_from(add, erf)), 1.0):
        return None
    chain.append(add)
    m1 = _reader(add.outputs[0], chain)
    if m1 is None or m1.op_type != "Mul":
        return None
    chain.append(m1)
    m1_other = _other(m1, _input_from(m1, add))
    last = _reader(m1.outputs[0], chain)
    if last is None or last.op_type != "Mul":
        return None
    chain.append(last)
    last_other = _other(last, _input_from(last, m1))
    if not ((_root(m1_other) is _root(x) and _const_is(last_other, 0.5))
            or (_const_is(m1_other, 0.5) and _root(last_other) is _root(x))):
        return None
    loose = [v for n in chain for v in n.inputs if v is not None and v is not x]
    return x, last.outputs[0], chain, loose


def _prune(g: ir.Graph, values: list[ir.Value]) -> None:
    """Remove what only the fused chain read: DequantizeLinear/QuantizeLinear/Constant producers of
    ``values`` left without readers, then initializers left without readers."""
    todo = list(values)
    while todo:
        v = todo.pop()
        if v.uses() or v.is_graph_output():
            continue
        p = v.producer()
        if p is not None and p.graph is g and p.op_type in (*QDQ, "Constant") \
                and not any(o.uses() or o.is_graph_output() for o in p.outputs):
            todo.extend(i for i in p.inputs if i is not None)
            g.remove(p, safe=True)
        elif v.is_initializer() and not v.is_graph_input() and v.name in g.initializers:
            del g.initializers[v.name]
