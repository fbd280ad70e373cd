"""Activation patterns written once, as onnxscript rewrite rules, for every pass and target that needs them.

The rules (``onnxscript.rewriter.pattern.RewriteRuleClassBase``: a ``pattern``, a ``check`` for what a
pattern cannot say, a ``rewrite``):

- HardSwish spelled out, ``x * Clip(x + 3, 0, 6) / 6`` in four spellings of the tail (``Div(m, 6)``,
  ``Mul(m, 1/6)``, and the division before the product, ``Mul(x, Div(c, 6))`` / ``Mul(x, Mul(c, 1/6))``),
  and ``x * HardSigmoid(x; 1/6, 1/2)``: one ``HardSwish`` (opset 14+), or ``x * HardSigmoid(x)`` on older
  opsets. Used by fuse-activation (every target) and tflite-hardswish.
- GELU (Hendrycks & Gimpel 2016), as PyTorch exports it below opset 20: the erf form
  ``x * 0.5 * (1 + erf(x / sqrt 2))`` and the tanh form
  ``x * 0.5 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))`` (the 0.5 on either product, x^3 as
  ``x * (x * x)`` or ``Pow(x, 3)``), each with or without a QuantizeLinear -> DequantizeLinear pair on every
  edge of the chain (a QDQ graph): one ``Gelu`` (``approximate="tanh"`` for the second). Used by tflite-gelu.
- The inverse, ``HardSwish`` / ``HardSigmoid`` -> ``Add -> Clip (-> Mul x) -> Mul(a)``, the split form
  ONNX Runtime runs in int8 (passes/quantize/decompose.py says why).

The checks hold what the pattern language cannot: constants within a tolerance (the exported 1/6 and
1/sqrt 2 are rounded to float32), a constant seen through a DequantizeLinear (a QDQ graph's scalars),
the Clip bounds as inputs (opset 11+) or attributes, the same tensor on both sides of a QDQ chain.

``apply`` runs a rule set the way onnxscript's ``RewriteRuleSet.apply_to_model`` does (every node, rules
in order, ``RewriteRule.try_rewrite`` to match, check and build) and then splices the replacement in
itself, for three reasons: the replacement takes the replaced tensor's name and a node name from edgec's
``NameSource`` (reports, ``--exclude`` and later passes find tensors by name; onnxscript would run
``NameFixPass`` over the whole graph and tag nodes with rule-name metadata, which changes every
artifact's bytes); a GELU goes where the chain started, so the op order the TFLite writer follows stays
the same; and the caller gets the matched nodes for its record (how many ops, how many Q/DQ removed).
Without those, ``RewriteRuleSet(rules).apply_to_model(model)`` applies the same rules.

fuse-affine keeps its hand-written matcher: it folds a constant into the weights of the Conv/Gemm it
follows or feeds, editing that node's initializers in place (the node keeps its name and position) and
repeating until nothing folds; there is no subgraph to replace, so a rewrite rule would only wrap a
weight update in a node swap.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern
from onnxscript.rewriter.pattern import MatchResult, RewriteRule, RewriteRuleSet

from edgec.graph import NameSource, add_initializer, attr, const_array

SQRT2 = math.sqrt(2.0)
QDQ = ("QuantizeLinear", "DequantizeLinear")
Names = Callable[[str], str]


# ------------------------------------------------------------------------------------------- constants
def scalar(value: ir.Value | None) -> float | None:
    """A float constant with one element (an initializer or a Constant node), else None."""
    c = const_array(value)
    return float(c.reshape(())) if c is not None and c.size == 1 and c.dtype.kind == "f" else None


def close(value: float | None, want: float) -> bool:
    return value is not None and abs(value - want) <= 1e-6 * abs(want)


def dequantized(v: ir.Value | None) -> np.ndarray | None:
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


def const_is(v: ir.Value | None, value: float) -> bool:
    """``v`` is a one-element constant (possibly behind a DequantizeLinear) equal to ``value``."""
    c = dequantized(v)
    return c is not None and c.size == 1 and abs(float(c.reshape(-1)[0]) - value) <= 1e-6 * max(1.0, abs(value))


def root(v: ir.Value | None) -> ir.Value | None:
    """``v`` with a QuantizeLinear -> DequantizeLinear pair in front of it looked through."""
    p = v.producer() if v is not None else None
    if p is not None and p.op_type == "DequantizeLinear" and p.inputs[0] is not None:
        q = p.inputs[0].producer()
        if q is not None and q.op_type == "QuantizeLinear":
            return q.inputs[0]
    return v


def clip_bounds(clip: ir.Node) -> tuple[float | None, float | None]:
    if len(clip.inputs) > 1:  # opset 11+: bounds are inputs
        lo = scalar(clip.inputs[1]) if clip.inputs[1] is not None else None
        hi = scalar(clip.inputs[2]) if len(clip.inputs) > 2 and clip.inputs[2] is not None else None
        return lo, hi
    return attr(clip, "min", None), attr(clip, "max", None)


def _fail(reason: str) -> MatchResult:
    return MatchResult().fail(reason)


# ------------------------------------------------------------------------------------------- HardSwish
class _HardSwishRule(pattern.RewriteRuleClassBase):
    """Shared check and rewrite; subclasses spell the pattern. ``one_op``: the opset has HardSwish."""

    tail_is_div = True

    def __init__(self, names: Names, one_op: bool) -> None:
        super().__init__()
        self.names, self.one_op = names, one_op

    def check(self, op: Any, x: ir.Value, three: ir.Value, clipped: ir.Value, six: ir.Value,
              **_: Any) -> MatchResult:
        if const_array(x) is not None or not close(scalar(three), 3.0):
            return _fail("not x + 3 with a tensor x")
        clip = clipped.producer()
        if clip is None or clip_bounds(clip) != (0.0, 6.0):
            return _fail("Clip bounds are not (0, 6)")
        if not close(scalar(six), 6.0 if self.tail_is_div else 1.0 / 6.0):
            return _fail("not a division by 6")
        return MatchResult()

    def rewrite(self, op: Any, x: ir.Value, shifted: ir.Value, **_: Any) -> ir.Value:
        add = shifted.producer()
        return _hardswish(op, x, (add.name if add is not None else None) or "hardswish", self.names, self.one_op)


def _hardswish(op: Any, x: ir.Value, base: str, names: Names, one_op: bool) -> ir.Value:
    if one_op:
        return op.HardSwish(x, _name=names(f"{base}_fused"))
    hs = op.HardSigmoid(x, alpha=1.0 / 6.0, beta=0.5, _name=names(f"{base}_hsig"))
    return op.Mul(x, hs, _name=names(f"{base}_mul"))


def _clip(op: Any, x: ir.Value, three: ir.Value) -> ir.Value:
    shifted = op.Add(x, three, _outputs=["shifted"])
    return op.Clip(shifted, _allow_other_inputs=True, _allow_other_attributes=True, _outputs=["clipped"])


class HardSwishDivAfter(_HardSwishRule):
    """x * Clip(x + 3, 0, 6) / 6"""

    def pattern(self, op: Any, x: ir.Value, three: ir.Value, six: ir.Value) -> ir.Value:
        return op.Div(op.Mul(x, _clip(op, x, three)), six)


class HardSwishMulAfter(_HardSwishRule):
    """x * Clip(x + 3, 0, 6) * (1/6)"""

    tail_is_div = False

    def pattern(self, op: Any, x: ir.Value, three: ir.Value, six: ir.Value) -> ir.Value:
        return op.Mul(op.Mul(x, _clip(op, x, three)), six)


class HardSwishDivBefore(_HardSwishRule):
    """x * (Clip(x + 3, 0, 6) / 6)"""

    def pattern(self, op: Any, x: ir.Value, three: ir.Value, six: ir.Value) -> ir.Value:
        return op.Mul(x, op.Div(_clip(op, x, three), six))


class HardSwishMulBefore(_HardSwishRule):
    """x * (Clip(x + 3, 0, 6) * (1/6))"""

    tail_is_div = False

    def pattern(self, op: Any, x: ir.Value, three: ir.Value, six: ir.Value) -> ir.Value:
        return op.Mul(x, op.Mul(_clip(op, x, three), six))


class HardSwishFromHardSigmoid(pattern.RewriteRuleClassBase):
    """x * HardSigmoid(x; alpha 1/6, beta 1/2) -> HardSwish (only where the opset has it)."""

    def __init__(self, names: Names) -> None:
        super().__init__()
        self.names = names

    def pattern(self, op: Any, x: ir.Value) -> ir.Value:
        return op.Mul(x, op.HardSigmoid(x, _allow_other_attributes=True, _outputs=["gate"]))

    def check(self, op: Any, x: ir.Value, gate: ir.Value) -> MatchResult:
        hs = gate.producer()
        if hs is None or not (close(attr(hs, "alpha", 0.2), 1.0 / 6.0) and close(attr(hs, "beta", 0.5), 0.5)):
            return _fail("HardSigmoid constants are not 1/6, 1/2")
        return MatchResult()

    def rewrite(self, op: Any, x: ir.Value, gate: ir.Value) -> ir.Value:
        hs = gate.producer()
        return _hardswish(op, x, (hs.name if hs is not None else None) or "hardswish", self.names, True)


def hardswish_rules(names: Names, one_op: bool) -> RewriteRuleSet:
    """The spelled-out HardSwish forms -> HardSwish (``one_op``) or x * HardSigmoid(x)."""
    rules = [cls.rule(names, one_op) for cls in (HardSwishDivAfter, HardSwishMulAfter, HardSwishDivBefore,
                                                 HardSwishMulBefore)]
    if one_op:  # below opset 14 x * HardSigmoid(x) is already the fused form
        rules.append(HardSwishFromHardSigmoid.rule(names))
    return RewriteRuleSet(rules, commute=True)


# ------------------------------------------------------------------------------------------------ GELU
_EDGES = itertools.count()


def _edge(op: Any, v: Any) -> Any:
    """``v`` as the next op reads it: directly, or through a QuantizeLinear -> DequantizeLinear pair.

    Each choice gets its own tag variable: onnxscript 0.7 cannot copy (commute) an untagged choice
    whose alternatives are not told apart by their op type."""
    q = op.QuantizeLinear(v, _allow_other_inputs=True, _allow_other_attributes=True)
    dq = op.DequantizeLinear(q, _allow_other_inputs=True, _allow_other_attributes=True)
    return pattern.OrValue([dq, v], tag_var=f"edge{next(_EDGES)}")


class _GeluRule(pattern.RewriteRuleClassBase):
    """x * 0.5 * (1 + erf(x / sqrt 2)) -> Gelu(x); subclasses spell the first op (Div or Mul)."""

    scale = SQRT2

    def __init__(self, names: Names) -> None:
        super().__init__()
        self.names = names

    def _chain(self, op: Any, first: Any, a: ir.Value, b: ir.Value, one: ir.Value) -> Any:
        erf = op.Erf(_edge(op, first))
        return op.Mul(_edge(op, op.Mul(_edge(op, op.Add(_edge(op, erf), one)), a)), b)

    def check(self, op: Any, x: ir.Value, c: ir.Value, one: ir.Value, a: ir.Value, b: ir.Value,
              **_: Any) -> MatchResult:
        if not const_is(c, self.scale) or not const_is(one, 1.0):
            return _fail("not erf(x / sqrt 2) + 1")
        if dequantized(x) is not None or x.dtype not in (None, ir.DataType.FLOAT):
            return _fail("x is a constant or not float32")
        if not ((root(a) is root(x) and const_is(b, 0.5)) or (const_is(a, 0.5) and root(b) is root(x))):
            return _fail("not x * 0.5 * (.)")
        return MatchResult()

    def rewrite(self, op: Any, x: ir.Value, scaled: ir.Value, **_: Any) -> ir.Value:
        first = scaled.producer()
        return op.Gelu(x, _name=self.names(f"{(first.name if first is not None else None) or 'gelu'}_gelu"))


class GeluDiv(_GeluRule):
    """x * 0.5 * (1 + erf(x / sqrt 2)), as PyTorch exports nn.GELU()"""

    def pattern(self, op: Any, x: ir.Value, c: ir.Value, one: ir.Value, a: ir.Value, b: ir.Value) -> Any:
        return self._chain(op, op.Div(x, c, _outputs=["scaled"]), a, b, one)


class GeluMul(_GeluRule):
    """x * 0.5 * (1 + erf(x * (1 / sqrt 2)))"""

    scale = 1.0 / SQRT2

    def pattern(self, op: Any, x: ir.Value, c: ir.Value, one: ir.Value, a: ir.Value, b: ir.Value) -> Any:
        return self._chain(op, op.Mul(x, c, _outputs=["scaled"]), a, b, one)


class GeluTanh(_GeluRule):
    """x * 0.5 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3))), as PyTorch exports GELU(approximate="tanh")."""

    def pattern(self, op: Any, x: ir.Value, x2: ir.Value, x3: ir.Value, x4: ir.Value, k: ir.Value,
                c: ir.Value, one: ir.Value, a: ir.Value, b: ir.Value, p: ir.Value) -> Any:
        cube = pattern.OrValue([op.Mul(x2, _edge(op, op.Mul(x, x3)), _outputs=["cube"]),
                                op.Pow(x, p, _outputs=["cube"])])
        inner = op.Add(x4, _edge(op, op.Mul(k, _edge(op, cube))))
        t = op.Tanh(_edge(op, op.Mul(c, _edge(op, inner))))
        return op.Mul(_edge(op, op.Mul(_edge(op, op.Add(_edge(op, t), one)), a)), b)

    def check(self, op: Any, x: ir.Value, c: ir.Value, one: ir.Value, a: ir.Value, b: ir.Value,  # type: ignore[override]
              x4: ir.Value, k: ir.Value, cube: ir.Value, x2: ir.Value | None = None, x3: ir.Value | None = None,
              p: ir.Value | None = None, **_: Any) -> MatchResult:
        if not const_is(c, math.sqrt(2.0 / math.pi)) or not const_is(k, 0.044715) or not const_is(one, 1.0):
            return _fail("not tanh(sqrt(2/pi) * (x + 0.044715 x^3)) + 1")
        if p is not None and not const_is(p, 3.0):
            return _fail("not x^3")
        if any(root(v) is not root(x) for v in (x2, x3, x4) if v is not None) or dequantized(x) is not None:
            return _fail("not one tensor x")
        if x.dtype not in (None, ir.DataType.FLOAT):
            return _fail("x is not float32")
        if not ((root(a) is root(x) and const_is(b, 0.5)) or (const_is(a, 0.5) and root(b) is root(x))):
            return _fail("not x * 0.5 * (.)")
        return MatchResult()

    def rewrite(self, op: Any, x: ir.Value, cube: ir.Value, **_: Any) -> ir.Value:  # type: ignore[override]
        first = cube.producer()  # x * (x * x) or Pow(x, 3): where the chain starts
        name = (first.name if first is not None else None) or "gelu"
        return op.Gelu(x, approximate="tanh", _name=self.names(f"{name}_gelu"))


def gelu_rules(names: Names, graph: ir.Graph | None = None) -> RewriteRuleSet | list[RewriteRule]:
    """The GELU forms; with ``graph``, only those whose Erf / Tanh it has (the tanh form's eight
    commutative ops make 256 pattern variants, tried at every Mul: 3 s on a small transformer)."""
    present = {n.op_type for n in graph} if graph is not None else {"Erf", "Tanh"}
    rules = ([GeluDiv.rule(names), GeluMul.rule(names)] if "Erf" in present else []) + \
        ([GeluTanh.rule(names)] if "Tanh" in present else [])
    return RewriteRuleSet(rules, commute=True) if rules else []


# ------------------------------------------------------------------------------ HardSwish split for int8
class _SplitHard(pattern.RewriteRuleClassBase):
    """HardSigmoid(x; a, b) = a * Clip(x + b/a, 0, 1/a); HardSwish(x) = x * HardSigmoid(x; 1/6, 1/2)."""

    op_type = "HardSwish"

    def __init__(self, graph: ir.Graph, names: NameSource, keep: set[str],
                 shared: dict[tuple[str, float], ir.Value]) -> None:
        super().__init__()
        self.graph, self.names, self.keep, self.shared = graph, names, keep, shared

    def pattern(self, op: Any, x: ir.Value) -> Any:
        return getattr(op, self.op_type)(x, _allow_other_attributes=True, _outputs=["out"])

    def _alpha_beta(self, node: ir.Node) -> tuple[float, float]:
        if node.op_type == "HardSwish":
            return 1.0 / 6.0, 0.5
        return float(attr(node, "alpha", 0.2)), float(attr(node, "beta", 0.5))

    def check(self, op: Any, x: ir.Value, out: ir.Value) -> MatchResult:
        node = out.producer()
        if node is None or x.dtype != ir.DataType.FLOAT or node.name in self.keep:
            return _fail("not float, or kept one op by the user")
        if self._alpha_beta(node)[0] <= 0:
            return _fail("alpha <= 0")
        return MatchResult()

    def _scalar(self, kind: str, value: float) -> ir.Value:
        """One initializer per distinct constant: 34 HardSigmoids of PP-OCRv4 det share 4 scalars."""
        key = (kind, float(np.float32(value)))
        if key not in self.shared:
            self.shared[key] = add_initializer(self.graph, np.asarray(value, np.float32), f"hsig_{kind}",
                                               self.names)
        return self.shared[key]

    def rewrite(self, op: Any, x: ir.Value, out: ir.Value) -> ir.Value:
        node = out.producer()
        assert node is not None
        alpha, beta = self._alpha_beta(node)
        base, names = node.name or node.op_type, self.names
        shift, lo = self._scalar("shift", beta / alpha), self._scalar("lo", 0.0)
        hi, a = self._scalar("hi", 1.0 / alpha), self._scalar("alpha", alpha)
        # Node names first, then tensor names, in the order the hand-written split used (same bytes).
        steps = [("Add", "add"), ("Clip", "clip")] + ([("Mul", "mulx")] if node.op_type == "HardSwish" else [])
        node_names = [names(f"{base}_{suffix}") for _, suffix in steps + [("Mul", "scale")]]
        y = op.Add(x, shift, _name=node_names[0])
        y = op.Clip(y, lo, hi, _name=node_names[1])
        if node.op_type == "HardSwish":
            y = op.Mul(x, y, _name=node_names[2])
        y = op.Mul(y, a, _name=node_names[-1])
        for n in op.nodes:
            n.outputs[0].name = names(f"{n.name}_o")
            n.outputs[0].dtype = ir.DataType.FLOAT
            n.outputs[0].shape = x.shape
        y.shape = out.shape or x.shape
        return y


class SplitHardSwish(_SplitHard):
    op_type = "HardSwish"


class SplitHardSigmoid(_SplitHard):
    op_type = "HardSigmoid"


def split_rules(graph: ir.Graph, keep: Iterable[str] = ()) -> RewriteRuleSet:
    shared: dict[tuple[str, float], ir.Value] = {}  # one constant pool (and NameSource) for both rules
    names, kept = NameSource(graph), set(keep)
    return RewriteRuleSet([cls.rule(graph, names, kept, shared) for cls in (SplitHardSwish, SplitHardSigmoid)])


# ------------------------------------------------------------------------------------------ the driver
@dataclass
class Rewrite:
    """One applied rule: the nodes it replaced (graph order) and the nodes it put in."""

    rule: str
    old: list[ir.Node]
    new: list[ir.Node]
    loose: list[ir.Value]  # inputs of the replaced nodes the new ones do not read (maybe left unread)


def apply(graph: ir.Graph, rules: RewriteRuleSet | Sequence[RewriteRule], at: str = "last") -> list[Rewrite]:
    """Apply ``rules`` to ``graph`` (every node in order, first matching rule wins); the rewrites.

    The replacement goes before the matched chain's ``last`` node (where its result was computed) or
    its ``first``; its output takes the replaced output's name, shape and type."""
    # try_rewrite records the opsets a replacement uses in the model's graph: this graph.
    model = ir.Model(graph, ir_version=10)
    done: list[Rewrite] = []
    order: dict[ir.Node, int] = {}
    for node in list(graph):
        if node.graph is not graph:
            continue  # removed by an earlier rewrite
        for rule in rules:
            delta = rule.try_rewrite(model, graph, node)
            if delta is None:
                continue
            if any(n not in order for n in delta.match.nodes):
                order = {n: i for i, n in enumerate(graph)}
            old = sorted(delta.match.nodes, key=order.__getitem__)
            (before,), (after,) = delta.match.outputs, delta.new_outputs
            after.shape = before.shape if before.shape is not None else after.shape
            after.type = before.type if before.type is not None else after.type
            name = before.name
            ir.convenience.replace_all_uses_with(before, after, replace_graph_outputs=True)
            before.name = None
            after.name = name  # the tensor keeps its name: reports and later passes still find it
            for init in delta.new_initializers:
                graph.register_initializer(init)
            graph.insert_before(old[0] if at == "first" else old[-1], delta.new_nodes)
            reads = {v for n in delta.new_nodes for v in n.inputs}
            loose = [v for n in old for v in n.inputs if v is not None and v not in reads]
            for n in reversed(old):
                graph.remove(n, safe=True)
            done.append(Rewrite(rule.name or "", old, list(delta.new_nodes), loose))
            break
    return done


def matches(graph: ir.Graph, rules: RewriteRuleSet | Sequence[RewriteRule]) -> bool:
    """Whether any rule matches somewhere in ``graph`` (nothing is changed)."""
    model = ir.Model(graph, ir_version=10)
    return any(rule.match(model, graph, node) for node in graph for rule in rules)


def prune(graph: ir.Graph, values: list[ir.Value]) -> None:
    """Remove what only a replaced chain read: DequantizeLinear/QuantizeLinear/Constant producers of
    ``values`` left without readers, then initializers left without readers."""
    todo = list(values)
    while todo:
        v = todo.pop()
        if v.uses() or v.is_graph_output():
            continue
        p = v.producer()
        if p is not None and p.graph is graph and p.op_type in (*QDQ, "Constant") \
                and not any(o.uses() or o.is_graph_output() for o in p.outputs):
            todo.extend(i for i in p.inputs if i is not None)
            graph.remove(p, safe=True)
        elif v.is_initializer() and not v.is_graph_input() and v.name is not None and v.name in graph.initializers:
            del graph.initializers[v.name]
