"""Rewrite HardSwish / HardSigmoid into ops ONNX Runtime runs in int8 (exact in float).

ORT has no int8 HardSwish: left float, every HardSwish costs DequantizeLinear + HardSigmoid + Mul +
QuantizeLinear on the full map (measured on PP-LCNet: as much time as all its QLinearConvs saved). With

    HardSigmoid(x; a, b) = a * Clip(x + b/a, 0, 1/a)        HardSwish(x) = x * HardSigmoid(x; 1/6, 1/2)

the Add becomes QLinearAdd, the Clip disappears into the Add's output range [0, 1/a] (the requantize
saturates), x * (.) becomes QLinearMul, and the constant factor ``a`` is folded into the scale of a
second DequantizeLinear on the same integer tensor (see insert.fold_scalar_muls) — no op left for it.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx_ir as ir

from edgec.graph import NameSource, add_initializer, attr, nodes_of


def decompose_hard_activations(graph: ir.Graph, keep: Iterable[str] = ()) -> int:
    """Replace every HardSwish/HardSigmoid by Add -> Clip (-> Mul x) -> Mul(a); returns how many.

    Nodes named in ``keep`` (kept float by the user or the mixed-precision search) stay one op: their
    pieces would otherwise carry new names the exclusion no longer matches, and be quantized."""
    keep = set(keep)
    names = NameSource(graph)
    shared: dict[tuple[str, float], ir.Value] = {}

    def scalar(kind: str, value: float) -> ir.Value:
        """One initializer per distinct constant: 34 HardSigmoids of PP-OCRv4 det share 4 scalars."""
        key = (kind, float(np.float32(value)))
        if key not in shared:
            shared[key] = add_initializer(graph, np.asarray(value, np.float32), f"hsig_{kind}", names)
        return shared[key]

    count = 0
    for node in nodes_of(graph, "HardSwish", "HardSigmoid"):
        x = node.inputs[0]
        if x is None or x.dtype != ir.DataType.FLOAT or node.name in keep:
            continue
        if node.op_type == "HardSwish":
            alpha, beta = 1.0 / 6.0, 0.5
        else:
            alpha, beta = float(attr(node, "alpha", 0.2)), float(attr(node, "beta", 0.5))
        if alpha <= 0:
            continue
        base = node.name or node.op_type
        shift, lo = scalar("shift", beta / alpha), scalar("lo", 0.0)
        hi, a = scalar("hi", 1.0 / alpha), scalar("alpha", alpha)
        add = ir.node("Add", [x, shift], name=names(f"{base}_add"))
        clip = ir.node("Clip", [add.outputs[0], lo, hi], name=names(f"{base}_clip"))
        new = [add, clip]
        gate = clip.outputs[0]
        if node.op_type == "HardSwish":
            mul_x = ir.node("Mul", [x, gate], name=names(f"{base}_mulx"))
            new.append(mul_x)
            gate = mul_x.outputs[0]
        scale = ir.node("Mul", [gate, a], name=names(f"{base}_scale"))
        new.append(scale)
        for n in new:
            n.outputs[0].name = names(f"{n.name}_o")
            n.outputs[0].dtype = ir.DataType.FLOAT
            n.outputs[0].shape = x.shape
        graph.insert_before(node, new)
        out = node.outputs[0]
        ir.convenience.replace_all_uses_with(out, scale.outputs[0], replace_graph_outputs=True)
        name = out.name  # the last new op takes the old output's name (readers and graph outputs keep it)
        out.name = None
        scale.outputs[0].name = name
        scale.outputs[0].shape = out.shape or x.shape
        graph.remove(node, safe=True)
        count += 1
    return count
