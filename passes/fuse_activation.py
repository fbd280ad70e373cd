"""Recognise activations that exporters spell out in elementwise ops and emit the one-op form.   exact

HardSwish written as ``x * Clip(x + 3, 0, 6) / 6`` (PaddlePaddle, older PyTorch exports) costs four
passes over the tensor, four int8 requantizations and four TFLite ops. It becomes one ``HardSwish``
(opset 14+), or ``x * HardSigmoid(x)`` (alpha 1/6, beta 1/2; two ops) on older opsets, which keeps the
model's opset as the user gave it. ``x * HardSigmoid(x)`` with those constants becomes ``HardSwish``
when the opset allows.

Accepted spellings of the tail: ``Div(m, 6)``, ``Mul(m, 1/6)``, and the division before the product,
``Mul(x, Div(c, 6))`` / ``Mul(x, Mul(c, 1/6))``.
"""

from __future__ import annotations

import onnx_ir as ir

from edgec.graph import NameSource, attr, const_array, only_consumer, opset_version
from edgec.pass_infra import Pass, PassContext, register


@register("fuse-activation", exact=True)
class FuseActivation(Pass):
    """Spelled-out HardSwish (x * clip(x + 3, 0, 6) / 6, x * HardSigmoid(x)) becomes one HardSwish op."""

    def apply(self, model: ir.Model, ctx: PassContext) -> bool:
        names = NameSource(model.graph)
        one_op = opset_version(model) >= 14
        fused = []
        for node in list(model.graph):
            if node.graph is None:
                continue
            match = _match_clip_form(node) or _match_hardsigmoid_form(node)
            if match is None:
                continue
            x, out, dead = match
            if one_op:
                new = [ir.node("HardSwish", [x], name=names(f"{node.name or 'hardswish'}_fused"))]
            elif dead[0].op_type == "HardSigmoid":
                continue  # already the two-op form and the opset has no HardSwish
            else:
                hs = ir.node("HardSigmoid", [x], attributes={"alpha": 1.0 / 6.0, "beta": 0.5},
                             name=names(f"{node.name or 'hardswish'}_hsig"))
                new = [hs, ir.node("Mul", [x, hs.outputs[0]], name=names(f"{node.name or 'hardswish'}_mul"))]
            _replace(model.graph, dead, out, new)
            fused.append({"node": node.name or node.op_type, "ops": len(dead), "into": new[-1].op_type})
        ctx.details["fused"] = fused
        return bool(fused)


def _scalar(value: ir.Value | None) -> float | None:
    c = const_array(value)
    return float(c.reshape(())) if c is not None and c.size == 1 and c.dtype.kind == "f" else None


def _other(node: ir.Node, value: ir.Value) -> ir.Value | None:
    """The input of a binary node that is not ``value`` (None when both or neither are)."""
    a, b = node.inputs[0], node.inputs[1]
    return b if a is value and b is not value else a if b is value and a is not value else None


def _sole(value: ir.Value | None, op: str) -> ir.Node | None:
    """The only reader of ``value`` when it is ``op`` and the value is internal."""
    if value is None or value.is_graph_output():
        return None
    user = only_consumer(value)
    return user if user is not None and user.op_type == op and user.domain in ("", "ai.onnx") else None


def _is_div6(node: ir.Node | None, value: ir.Value) -> bool:
    if node is None or node.inputs[0] is None:
        return False
    if node.op_type == "Div":
        return node.inputs[0] is value and _close(_scalar(node.inputs[1]), 6.0)
    if node.op_type == "Mul":
        return _close(_scalar(_other(node, value)), 1.0 / 6.0)
    return False


def _close(v: float | None, want: float) -> bool:
    return v is not None and abs(v - want) <= 1e-6 * abs(want)


def _clip_bounds(clip: ir.Node) -> tuple[float | None, float | None]:
    if len(clip.inputs) > 1:  # opset 11+: bounds are inputs
        lo = _scalar(clip.inputs[1]) if clip.inputs[1] is not None else None
        hi = _scalar(clip.inputs[2]) if len(clip.inputs) > 2 and clip.inputs[2] is not None else None
        return lo, hi
    return attr(clip, "min", None), attr(clip, "max", None)


def _match_clip_form(add: ir.Node) -> tuple[ir.Value, ir.Value, list[ir.Node]] | None:
    """Add(x, 3) -> Clip(0, 6) -> [Div 6] -> Mul(x, .) -> [Div 6]: (x, final output, nodes to drop)."""
    if add.op_type != "Add" or add.domain not in ("", "ai.onnx"):
        return None
    for k in (0, 1):
        x = add.inputs[k]
        if x is None or not _close(_scalar(add.inputs[1 - k]), 3.0) or const_array(x) is not None:
            continue
        clip = _sole(add.outputs[0], "Clip")
        if clip is None or _clip_bounds(clip) != (0.0, 6.0):
            continue
        c = clip.outputs[0]
        user = only_consumer(c) if not c.is_graph_output() else None
        if user is not None and _is_div6(user, c) and not user.outputs[0].is_graph_output():
            mul = _sole(user.outputs[0], "Mul")  # x * (clip / 6)
            if mul is not None and _other(mul, user.outputs[0]) is x:
                return x, mul.outputs[0], [add, clip, user, mul]
        mul = _sole(c, "Mul")
        if mul is None or _other(mul, c) is not x or mul.outputs[0].is_graph_output():
            continue
        tail = only_consumer(mul.outputs[0])
        if _is_div6(tail, mul.outputs[0]):
            assert tail is not None
            return x, tail.outputs[0], [add, clip, mul, tail]
    return None


def _match_hardsigmoid_form(hs: ir.Node) -> tuple[ir.Value, ir.Value, list[ir.Node]] | None:
    """HardSigmoid(x; 1/6, 1/2) -> Mul(x, .)."""
    if hs.op_type != "HardSigmoid" or hs.domain not in ("", "ai.onnx") or hs.inputs[0] is None:
        return None
    if not (_close(attr(hs, "alpha", 0.2), 1.0 / 6.0) and _close(attr(hs, "beta", 0.5), 0.5)):
        return None
    x = hs.inputs[0]
    mul = _sole(hs.outputs[0], "Mul")
    if mul is None or _other(mul, hs.outputs[0]) is not x:
        return None
    return x, mul.outputs[0], [hs, mul]


def _replace(graph: ir.Graph, dead: list[ir.Node], out: ir.Value, new: list[ir.Node]) -> None:
    """Insert ``new`` where the pattern's last node was, hand its output to ``out``'s readers, drop ``dead``."""
    graph.insert_before(dead[-1], new)
    result = new[-1].outputs[0]
    result.shape, result.type = out.shape, out.type
    was_output = out.is_graph_output()
    name = out.name
    ir.convenience.replace_all_uses_with(out, result, replace_graph_outputs=True)
    out.name = None
    result.name = name  # the tensor keeps its name: reports and later passes still find it
    assert not was_output or result.is_graph_output()
    for n in reversed(dead):
        graph.remove(n, safe=True)
