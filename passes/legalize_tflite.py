"""Legalize for TFLite: the fusions the writer maps to one builtin, as checked passes.   exact (see tflite-gelu)

The TFLite backend used to match these chains while writing the flatbuffer, where the manager never saw
them. As passes they are validated, drift-checked and recorded, and the writer maps the one-op forms
(``HardSwish`` -> HARD_SWISH, ``Gelu`` -> GELU) one to one. They are the last passes of the tflite-*
targets (stages ``legalize-tflite`` and ``legalize-tflite-int8`` in compiler/targets.toml).

ONNX has HardSwish from opset 14 and Gelu from opset 20: a pass that finds a chain in an older model
raises the model's opset first with ONNX's version converter (as the manager does for ``min_opset``), and
leaves models without such a chain exactly as they are. The chains are the rewrite rules of
passes/patterns.py (``hardswish_rules``, ``gelu_rules``).
"""

from __future__ import annotations

import onnx_ir as ir

from edgec import model_io
from edgec.graph import NameSource, opset_version
from edgec.pass_infra import Pass, PassContext, register
from edgec.passes import patterns
from edgec.passes.fuse_activation import FuseActivation


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
        if not patterns.matches(model.graph, patterns.hardswish_rules(NameSource(model.graph), one_op=True)):
            return False
        upgraded = raise_opset(model, 14, ctx)
        return FuseActivation().apply(model, ctx) or upgraded


@register("tflite-gelu", exact=True)
class TfliteGelu(Pass):
    """TFLite legalize: the erf and tanh GELU chains PyTorch exports become one Gelu (-> GELU).

    PyTorch exports ``nn.GELU()`` as ``Mul(Mul(x, Add(Erf(Div(x, sqrt 2)), 1)), 0.5)``; the 0.5 may also
    sit on the other product (``Mul(x, Mul(1 + erf, 0.5))``). ``GELU(approximate="tanh")`` becomes
    ``Gelu(approximate="tanh")`` (TFLite's GELU with its approximate flag). In a QDQ graph the Q -> DQ pairs between the
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
        if not patterns.matches(g, patterns.gelu_rules(NameSource(g), g)):
            return False
        upgraded = raise_opset(model, 20, ctx)
        g = model.graph
        # At the chain's first node, where the writer used to emit GELU: the op order stays the same.
        done = patterns.apply(g, patterns.gelu_rules(NameSource(g), g), at="first")
        fused = []
        for r in done:
            patterns.prune(g, r.loose)
            qdq = sum(n.op_type in patterns.QDQ for n in r.old)
            self._removed_qdq |= qdq > 0
            fused.append({"node": r.old[0].name or r.old[0].op_type, "ops": len(r.old), "qdq_removed": qdq})
        ctx.details["fused"] = fused
        return bool(fused) or upgraded
