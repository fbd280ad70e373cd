"""Recognise activations that exporters spell out in elementwise ops and emit the one-op form.   exact

HardSwish written as ``x * Clip(x + 3, 0, 6) / 6`` (PaddlePaddle, older PyTorch exports) costs four
passes over the tensor, four int8 requantizations and four TFLite ops. It becomes one ``HardSwish``
(opset 14+), or ``x * HardSigmoid(x)`` (alpha 1/6, beta 1/2; two ops) on older opsets, which keeps the
model's opset as the user gave it. ``x * HardSigmoid(x)`` with those constants becomes ``HardSwish``
when the opset allows.

The spellings are rewrite rules in passes/patterns.py (``hardswish_rules``), shared with tflite-hardswish.
"""

from __future__ import annotations

import onnx_ir as ir

from edgec.graph import NameSource, opset_version
from edgec.pass_infra import Pass, PassContext, register
from edgec.passes import patterns


@register("fuse-activation", exact=True)
class FuseActivation(Pass):
    """Spelled-out HardSwish (x * clip(x + 3, 0, 6) / 6, x * HardSigmoid(x)) becomes one HardSwish op."""

    def apply(self, model: ir.Model, ctx: PassContext) -> bool:
        rules = patterns.hardswish_rules(NameSource(model.graph), one_op=opset_version(model) >= 14)
        done = patterns.apply(model.graph, rules)
        ctx.details["fused"] = [{"node": r.old[0].name or r.old[0].op_type, "ops": len(r.old),
                                 "into": r.new[-1].op_type} for r in done]
        return bool(done)
