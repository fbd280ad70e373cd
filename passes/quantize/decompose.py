"""Rewrite HardSwish / HardSigmoid into ops ONNX Runtime runs in int8 (exact in float).

ORT has no int8 HardSwish: left float, every HardSwish costs DequantizeLinear + HardSigmoid + Mul +
QuantizeLinear on the full map (measured on PP-LCNet: as much time as all its QLinearConvs saved). With

    HardSigmoid(x; a, b) = a * Clip(x + b/a, 0, 1/a)        HardSwish(x) = x * HardSigmoid(x; 1/6, 1/2)

the Add becomes QLinearAdd, the Clip disappears into the Add's output range [0, 1/a] (the requantize
saturates), x * (.) becomes QLinearMul, and the constant factor ``a`` is folded into the scale of a
second DequantizeLinear on the same integer tensor (see insert.fold_scalar_muls) — no op left for it.
The split is the rewrite rule pair ``split_rules`` of passes/patterns.py.
"""

from __future__ import annotations

from collections.abc import Iterable

import onnx_ir as ir

from edgec.passes import patterns


def decompose_hard_activations(graph: ir.Graph, keep: Iterable[str] = ()) -> int:
    """Replace every HardSwish/HardSigmoid by Add -> Clip (-> Mul x) -> Mul(a); returns how many.

    Nodes named in ``keep`` (kept float by the user or the mixed-precision search) stay one op: their
    pieces would otherwise carry new names the exclusion no longer matches, and be quantized."""
    return len(patterns.apply(graph, patterns.split_rules(graph, keep)))
