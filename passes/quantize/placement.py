"""Where Q/DQ pairs go, per runtime. Placement decides tensors and shared-scale groups, never numbers.

It follows the target's rule table (rules.py, named by the scheme's ``placement``): which ops run int8,
which share their input's scale, which activations are absorbed, where the runtime wants Q/DQ
(``qdq_at``: around int8 ops for ORT, on weighted inputs and residual Adds for TensorRT, everywhere for
TFLite). ORT: data-movement ops share their input's scale so ORT drops the DQ->op->Q around them; a
Relu/Clip that is the only reader of a quantized op's output is absorbed: the Q goes after it with a range
starting at 0, so ORT's ReluQuantFusion/ClipQuantFusion delete it; ops ORT has no int8 kernel for
(HardSwish, HardSigmoid, Softmax by default) stay float between DQ and Q. TensorRT: nothing between a Conv
and its activation or pool; Concat inputs share one scale. TFLite: every float activation is quantized
(Relu/Clip still absorbed, as TFLite fuses activations); Sigmoid/Softmax outputs take the fixed range.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np
import onnx_ir as ir

from edgec.graph import attr, const_array, only_consumer
from edgec.passes.quantize.rules import ABSORBED, PASS_THROUGH, WEIGHTED, RuntimeRules
from edgec.passes.quantize.scheme import QuantScheme

__all__ = ["ABSORBED", "ACTIVATIONS", "PASS_THROUGH", "WEIGHTED", "Placement", "place"]


@dataclasses.dataclass
class Placement:
    """The decision: which nodes run int8, which activations get Q/DQ, and which share one scale."""

    nodes: list[ir.Node]  # nodes whose weights (if any) are quantized
    tensors: list[ir.Value]  # activations that get a Q -> DQ pair (shared by all readers)
    groups: list[list[ir.Value]]  # tensors that must share scale and zero point
    fixed: dict[str, tuple[float, int]]  # tensor name -> (scale, zero point) fixed by the runtime
    skipped: list[dict[str, str]]  # nodes left float, with why
    consts: list[tuple[ir.Node, int]] = dataclasses.field(default_factory=list)  # constant data inputs
    scaled: list[ir.Node] = dataclasses.field(default_factory=list)  # Mul by c > 0 folded into a DQ scale
    wide: set[str] = dataclasses.field(default_factory=set)  # tensor names quantized to 16 bits (A16W8)


def data_inputs(node: ir.Node) -> list[int]:
    """Indices of the inputs that carry float activation data (not shapes, scales, weights or biases)."""
    op = node.op_type
    if op in ("Conv", "ConvTranspose", "Gemm"):
        return [0]
    if op == "MatMul":
        return [i for i in (0, 1) if const_array(node.inputs[i]) is None]
    if op in ("Add", "Mul", "Concat"):
        return list(range(len(node.inputs)))
    return [0]


def is_float(v: ir.Value | None) -> bool:
    return v is not None and v.dtype == ir.DataType.FLOAT


def excluded(node: ir.Node, exclude: Iterable[str]) -> bool:
    names = set(exclude)
    return bool(names) and (node.name in names or node.op_type in names or
                            any(o.name in names for o in node.outputs))


def place(graph: ir.Graph, scheme: QuantScheme, exclude: Iterable[str] = (), share_concat: bool = True,
          wide: Iterable[str] = ()) -> Placement:
    """``exclude``: node names, op types or output names kept float END TO END: their data inputs and
    outputs carry no Q/DQ even where a neighbour would quantize them (the neighbour then reads or writes
    float there). Keeping a layer float thus only ever removes noise sources: before, an excluded conv
    still read and wrote Q/DQ tensors its int8 neighbours asked for, and its float output no longer had
    the int8 conv's absorbed activation, so PP-LCNet fell from 14.3 to 6.1 dB with every conv "float".
    ``wide``: tensor names, or node names whose quantized inputs and outputs, take 16-bit activations
    (A16W8; ORT only)."""
    exclude = list(exclude)
    floats = float_tensors(graph, exclude)
    if scheme.rules.qdq_at == "weighted-inputs":
        plan = _place_weighted_inputs(graph, scheme.rules, exclude)
    else:
        plan = _place_all(graph, scheme, exclude, share_concat, floats)
    plan.tensors = [t for t in plan.tensors if id(t) not in floats]
    kept = {id(t) for t in plan.tensors}
    plan.groups = [g for g in ([v for v in grp if id(v) in kept] for grp in plan.groups) if len(g) > 1]
    plan.wide = _wide_tensors(graph, list(wide), plan) if wide else set()
    return plan


# Elementwise activations a runtime fuses into the layer before them.
ACTIVATIONS = ("Relu", "Clip", "LeakyRelu", "PRelu", "HardSwish", "HardSigmoid", "Sigmoid", "Tanh", "Elu",
               "Selu", "Softplus", "Gelu", "Identity")


def with_activations(graph: ir.Graph, exclude: Iterable[str]) -> list[str]:
    """``exclude`` plus the named activation that is the only reader of an excluded weighted layer: the
    runtimes fuse it into the layer, so a float layer keeps it float too. Left int8, PP-LCNet's
    HardSwish pieces after float convs re-quantized every conv output (``--exclude Conv``: 8.4 dB on
    photos against 11.3 dB all int8); with them, keeping a layer float removes its noise end to end."""
    out = list(exclude)
    if not out:
        return out
    for node in graph:
        if node.op_type in WEIGHTED and node.outputs and excluded(node, out):
            nxt = only_consumer(node.outputs[0])
            if nxt is not None and nxt.op_type in ACTIVATIONS and nxt.name and nxt.name not in out:
                out.append(nxt.name)
    return out


def float_tensors(graph: ir.Graph, exclude: Iterable[str]) -> set[int]:
    """Ids of the computed float tensors read or written by an excluded node: never quantized."""
    names = list(exclude)
    out: set[int] = set()
    if not names:
        return out
    for node in graph:
        if node.domain in ("", "ai.onnx") and excluded(node, names):
            for v in (*node.inputs, *node.outputs):
                if is_float(v) and const_array(v) is None:
                    out.add(id(v))
    return out


def _wide_tensors(graph: ir.Graph, wide: list[str], plan: Placement) -> set[str]:
    """Names of the quantized tensors next to the ``wide`` nodes (and their whole shared-scale groups)."""
    quantized = {id(t): t for t in plan.tensors}
    names = set(wide)
    picked: set[int] = {i for i, t in quantized.items() if t.name in names}
    for node in graph:
        if not excluded(node, wide):
            continue
        for v in (*node.inputs, *node.outputs):
            if v is not None and id(v) in quantized:
                picked.add(id(v))
        nxt = only_consumer(node.outputs[0]) if node.outputs else None
        if nxt is not None and nxt.op_type in ABSORBED and id(nxt.outputs[0]) in quantized:
            picked.add(id(nxt.outputs[0]))  # the output Q sits after the absorbed Relu/Clip
    for g in plan.groups:
        if any(id(v) in picked for v in g):
            picked.update(id(v) for v in g)
    return {quantized[i].name or "" for i in picked}


def _weighted_ok(node: ir.Node) -> bool:
    if node.op_type == "MatMul":
        return True
    if len(node.inputs) < 2 or const_array(node.inputs[1]) is None:
        return False
    w = const_array(node.inputs[1])
    if node.op_type == "Gemm":
        return w is not None and w.ndim == 2 and not int(node.attributes.get("transA", ir.AttrInt64("transA", 0)).value)
    return w is not None and w.ndim >= 3


def _place_all(graph: ir.Graph, scheme: QuantScheme, exclude: list[str], share_concat: bool,
               floats: set[int] | None = None) -> Placement:
    floats = floats or set()
    rules = scheme.rules
    full = rules.qdq_at == "everywhere"
    int8_ops = set(rules.weighted) | set(rules.int8_ops) | ({"Softmax"} if scheme.softmax or full else set())
    chosen: list[ir.Node] = []
    skipped: list[dict[str, str]] = []
    quantized_values: set[int] = set()  # ids of values that will carry a Q/DQ (for pass-through ops)
    tensors: dict[int, ir.Value] = {}
    groups: list[list[ir.Value]] = []
    fixed: dict[str, tuple[float, int]] = {}
    absorbed: set[int] = set()  # Relu/Clip nodes whose output carries their producer's Q

    scaled_out: set[int] = set()
    consts: list[tuple[ir.Node, int]] = []
    scaled: list[ir.Node] = []

    def add(v: ir.Value) -> None:
        if id(v) in scaled_out or id(v) in floats:
            return  # read through the folded DequantizeLinear of the Mul's input / kept float
        tensors.setdefault(id(v), v)
        quantized_values.add(id(v))

    def output_of(node: ir.Node) -> ir.Value:
        """The tensor to quantize for ``node``'s output: after an absorbed Relu/Clip if one follows."""
        out = node.outputs[0]
        nxt = only_consumer(out)
        if nxt is not None and nxt.op_type in rules.absorbed and nxt.domain in ("", "ai.onnx") and is_float(nxt.outputs[0]) \
                and not excluded(nxt, exclude):
            absorbed.add(id(nxt))
            return nxt.outputs[0]
        return out

    for node in list(graph):
        if node.domain not in ("", "ai.onnx") or not node.outputs or not is_float(node.outputs[0]):
            continue
        ins = [i for i in data_inputs(node) if i < len(node.inputs)]
        if not ins or not all(is_float(node.inputs[i]) for i in ins):
            continue
        op = node.op_type
        if excluded(node, exclude):
            skipped.append({"node": node.name or op, "op": op, "reason": "excluded"})
            continue
        if op == "Softmax" and op in rules.fixed_outputs and _long_softmax(node):
            skipped.append({"node": node.name or op, "op": op,
                            "reason": "TFLite's int8 Softmax output step is 1/256: too coarse over > 64 entries"})
            continue
        if op in rules.weighted and not _weighted_ok(node):
            skipped.append({"node": node.name or op, "op": op, "reason": "weights are not constant"})
            continue
        if op in ("Mul", "Div") and rules.fold_scalar_mul and scalar_factor(node) is not None:
            src = node.inputs[1 - scalar_factor(node)[0]]  # type: ignore[index]
            if src is not None and id(src) in quantized_values and not src.is_graph_input() \
                    and id(node.outputs[0]) not in floats:
                scaled.append(node)
                scaled_out.add(id(node.outputs[0]))
                quantized_values.add(id(node.outputs[0]))
                chosen.append(node)
                continue
        if op in rules.pass_through:
            # Worth it only when the input is quantized anyway; otherwise the op just stays float.
            src = node.inputs[0]
            if src is not None and (id(src) in quantized_values or full) and len(node.outputs) == 1 \
                    and id(src) not in scaled_out:
                add(src)
                out = output_of(node)
                add(out)
                groups.append([src, out])
                chosen.append(node)
            elif src is not None and id(src) in quantized_values and not full and len(node.outputs) > 1 \
                    and id(src) not in scaled_out and all(is_float(o) for o in node.outputs):
                # Split: every output on the input's scale, as ORT's QDQ rules want to run it on the
                # integers (own ranges per output left DQ -> Split -> Q float islands: 7 in the YOLO net).
                add(src)
                for o in node.outputs:
                    add(o)
                groups.append([src, *node.outputs])
                chosen.append(node)
            continue
        if op in rules.absorbed:
            if full and id(node) not in absorbed and node.inputs[0] is not None and id(node.inputs[0]) not in quantized_values:
                add(node.inputs[0])
                add(node.outputs[0])
                chosen.append(node)
            continue
        if op not in int8_ops and not full:
            continue
        for i in ins:
            if const_array(node.inputs[i]) is not None:
                consts.append((node, i))  # quantized from its own values, no calibration
            else:
                add(node.inputs[i])  # type: ignore[arg-type]
        outs = [output_of(node)] if len(node.outputs) == 1 else [o for o in node.outputs if is_float(o)]
        for out in outs:
            if out.is_graph_output() and op in rules.float_outputs:
                continue  # ORT fuses DQ->Gemm/MatMul with a float output (QGemm, MatMulIntegerToFloat)
            add(out)
        if op == "Concat" and share_concat and rules.concat_shares_scale:
            # Not shared: an input read through a folded scale (its own DQ carries the factor), and in
            # TFLite a Sigmoid/Softmax output on its fixed 1/256 (the converter requantizes it; sharing
            # would put every other input, e.g. YOLO's box coordinates, on that scale and saturate them).
            members = [node.inputs[i] for i in ins if id(node.inputs[i]) not in scaled_out
                       and (node.inputs[i].name or "") not in fixed]  # type: ignore[union-attr]
            groups.append([*members, outs[0]])  # type: ignore[list-item]
        if op in rules.fixed_outputs and scheme.act_dtype == "int8" and not scheme.act_symmetric:
            fixed[outs[0].name or ""] = rules.fixed_outputs[op]
        chosen.append(node)
    return Placement(chosen, list(tensors.values()), _merge(groups), fixed, skipped, consts, scaled)


def _long_softmax(node: ir.Node, limit: int = 64) -> bool:
    """A Softmax over more than ``limit`` entries (attention over tokens): its probabilities, ~1/n each,
    fall below TFLite's fixed int8 output step of 1/256 (the ViT test model: 19.7 dB int8, 33.0 kept float)."""
    x = node.inputs[0]
    if x is None or x.shape is None or len(x.shape) == 0:
        return False
    axis = int(attr(node, "axis", -1))
    d = x.shape[axis % len(x.shape)]
    return not isinstance(d, int) or d > limit


def scalar_factor(node: ir.Node) -> tuple[int, float] | None:
    """(input index, factor) when one input of a Mul is a positive scalar constant, or the divisor of a
    Div is (x / c == x * (1/c): HardSwish's "/ 6" in PaddleOCR exports)."""
    for i in ((1,) if node.op_type == "Div" else (0, 1)):
        c = const_array(node.inputs[i]) if i < len(node.inputs) else None
        if c is not None and c.size == 1 and float(c.reshape(())) > 0 and np.issubdtype(c.dtype, np.floating):
            v = float(c.reshape(()))
            return i, (1.0 / v if node.op_type == "Div" else v)
    return None


def _place_weighted_inputs(graph: ir.Graph, rules: RuntimeRules, exclude: list[str]) -> Placement:
    """TensorRT's placement: Q/DQ on the data inputs of weighted ops (the runtime fuses the rest)."""
    chosen: list[ir.Node] = []
    skipped: list[dict[str, str]] = []
    tensors: dict[int, ir.Value] = {}
    for node in list(graph):
        if node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type in rules.weighted:
            if excluded(node, exclude):
                skipped.append({"node": node.name or node.op_type, "op": node.op_type, "reason": "excluded"})
                continue
            ins = data_inputs(node)
            if not _weighted_ok(node) or not all(is_float(node.inputs[i]) for i in ins):
                continue
            for i in ins:
                tensors.setdefault(id(node.inputs[i]), node.inputs[i])  # type: ignore[arg-type]
            chosen.append(node)
        elif rules.residual_add and node.op_type == "Add" and len(node.inputs) == 2 and not excluded(node, exclude):
            # Conv -> Add(residual): quantizing the residual input lets TensorRT fuse the Add into the Conv.
            for i, other in ((0, 1), (1, 0)):
                prod = node.inputs[i].producer() if node.inputs[i] is not None else None
                if prod is not None and prod.op_type == "Conv" and only_consumer(node.inputs[i]) is node \
                        and is_float(node.inputs[other]) and const_array(node.inputs[other]) is None:
                    tensors.setdefault(id(node.inputs[other]), node.inputs[other])  # type: ignore[arg-type]
                    break
    # Concat inputs share one scale when the Concat output is quantized (TensorRT removes the Concat).
    groups = []
    for node in graph:
        if node.op_type == "Concat" and rules.concat_shares_scale and id(node.outputs[0]) in tensors:
            members = [v for v in node.inputs if v is not None]
            for v in members:
                tensors.setdefault(id(v), v)
            groups.append([*members, node.outputs[0]])
    return Placement(chosen, list(tensors.values()), _merge(groups), {}, skipped)


def _merge(groups: list[list[ir.Value]]) -> list[list[ir.Value]]:
    """Union of overlapping groups (a tensor in two Concats ties both together)."""
    parent: dict[int, int] = {}
    by_id: dict[int, ir.Value] = {}

    def find(x: int) -> int:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for g in groups:
        for v in g:
            by_id[id(v)] = v
        for v in g[1:]:
            parent[find(id(v))] = find(id(g[0]))
    out: dict[int, list[ir.Value]] = {}
    for k, v in by_id.items():
        out.setdefault(find(k), []).append(v)
    return [g for g in out.values() if len(g) > 1]
