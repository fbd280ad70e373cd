"""Cleanup passes: lift constants, fold constants, eliminate dead code, infer shapes.   all exact

These make every later pass's job simpler: weights become initializers (Paddle exports keep them in
Constant nodes), shape arithmetic disappears, and nothing is left that does not feed an output.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx_ir.passes import common

from edgec.graph import (
    NameSource,
    add_initializer,
    attr,
    bypass,
    bypass_needs_identity,
    const_array,
    consumers,
    infer_shapes,
    initializer_inputs_to_constants,
    static_shape,
)
from edgec.pass_infra import Pass, PassContext, register, register_ir_pass

# onnx_ir's own passes, registered as they are (their constructor arguments are the pass parameters):
# the manager checks and records them like any edgec pass. Not in any target's pipeline yet (adding one
# changes artifacts); `--add cse` or `--passes ...,cse` runs them.
register_ir_pass("cse", common.CommonSubexpressionEliminationPass, exact=True,
                 doc="Merge nodes computing the same op on the same inputs (onnx_ir's CSE).")
register_ir_pass("dedup-initializers", common.DeduplicateInitializersPass, exact=True,
                 doc="Merge initializers with the same dtype, shape and bytes (onnx_ir).")


@register("lift-constants", exact=True)
class LiftConstants(Pass):
    """Constant / ConstantOfShape nodes and initializers listed as graph inputs become initializers."""

    def apply(self, model: ir.Model, ctx: PassContext) -> bool:
        # IR < 4 requires every initializer to be an input: lifting first would write an invalid model.
        changed = initializer_inputs_to_constants(model)
        changed |= common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model).modified
        names = NameSource(model.graph)
        for node in [n for n in model.graph if n.op_type == "ConstantOfShape" and n.domain in ("", "ai.onnx")]:
            shape = const_array(node.inputs[0])
            if shape is None or node.outputs[0].is_graph_output():
                continue
            value = node.attributes.get("value")
            fill = value.as_tensor().numpy().reshape(-1) if value is not None else np.zeros(1, np.float32)
            array = np.full(tuple(int(d) for d in shape), fill[0], dtype=fill.dtype)
            new = add_initializer(model.graph, array, node.outputs[0].name or "const_fill", names)
            ir.convenience.replace_all_uses_with(node.outputs[0], new)
            model.graph.remove(node, safe=True)
            changed = True
        # Since IR version 4 initializers need not be inputs; as inputs they could be overridden, so
        # nothing downstream of them could be folded or fused.
        if model.ir_version >= 4:
            changed |= common.RemoveInitializersFromInputsPass()(model).modified
        return changed


# Ops whose result is not a function of their inputs, or whose structure later passes rely on.
_NO_FOLD = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli",
            "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "If", "Loop", "Scan", "Constant"}


@register("fold", exact=True)
class FoldConstants(Pass):
    """Evaluate nodes whose inputs are all constant (and Shape/Size of static tensors) into initializers."""

    max_elements: int = 1 << 24
    #: sweeps at most (each infers shapes anew)
    rounds: int = 8

    def apply(self, model: ir.Model, ctx: PassContext) -> bool:
        common.TopologicalSortPass()(model)
        changed = False
        # Folding a shape constant (a Reshape's target built by Concat) lets inference reach tensors it
        # could not size before, whose Shape then folds in turn: sweep until nothing more folds.
        for _ in range(self.rounds):
            if not self._sweep(model):
                break
            changed = True
        if changed:
            common.RemoveUnusedNodesPass()(model)
        return changed

    def _sweep(self, model: ir.Model) -> bool:
        graph = model.graph
        infer_shapes(model)  # Shape/Size fold only where the shape is known
        names = NameSource(graph)
        opset = model.opset_imports.get("", 13)
        changed = False
        keep = _if_condition_cone(graph)
        for node in list(graph):
            if node.domain not in ("", "ai.onnx") or node.op_type in _NO_FOLD or id(node) in keep:
                continue
            if any(o.is_graph_output() for o in node.outputs):
                continue
            results = self._shape_result(node)
            if results is None:
                arrays = [None if v is None else const_array(v) for v in node.inputs]
                if not node.inputs or any(a is None for v, a in zip(node.inputs, arrays) if v is not None):
                    continue
                results = _evaluate(node, arrays, opset)
            if results is None or any(r.size > self.max_elements for r in results):
                continue
            for out, array in zip(node.outputs, results):
                if not consumers(out):
                    continue
                new = add_initializer(graph, array, out.name or "folded", names)
                ir.convenience.replace_all_uses_with(out, new)
            graph.remove(node, safe=True)
            changed = True
        return changed

    @staticmethod
    def _shape_result(node: ir.Node) -> list[np.ndarray] | None:
        if node.op_type not in ("Shape", "Size"):
            return None
        shape = static_shape(node.inputs[0])
        if shape is None:
            return None
        if node.op_type == "Size":
            return [np.array(int(np.prod(shape)), dtype=np.int64)]
        start, end = attr(node, "start", 0), attr(node, "end", None)
        return [np.array(shape[start:end], dtype=np.int64)]


def _if_condition_cone(graph: ir.Graph) -> set[int]:
    """Nodes an If's condition depends on: they are never folded.

    ONNX Runtime inlines the branch of an If whose condition is a constant, and an inlined branch can
    fail ORT's inference where the If ran fine (AffineGrid's expanded body passes the [1]-shaped pieces
    of a Split to Range, which then demands scalars). A condition left computed keeps the If an If.
    """
    cone: set[int] = set()
    stack = [n.inputs[0] for n in graph if n.op_type == "If" and n.inputs and n.inputs[0] is not None]
    while stack:
        producer = stack.pop().producer()
        if producer is None or id(producer) in cone or producer.graph is not graph:
            continue
        cone.add(id(producer))
        stack.extend(v for v in producer.inputs if v is not None)
    return cone


def _evaluate(node: ir.Node, arrays: list[np.ndarray | None], opset: int) -> list[np.ndarray] | None:
    """Run one node in ONNX Runtime on constant inputs. None when ORT cannot (then we do not fold)."""
    in_names = [f"i{k}" if a is not None else "" for k, a in enumerate(arrays)]
    out_names = [f"o{k}" for k in range(len(node.outputs))]
    proto = ir.serde.serialize_node(node)
    del proto.input[:]
    proto.input.extend(in_names)
    del proto.output[:]
    proto.output.extend(out_names)
    inputs = [onnx.helper.make_tensor_value_info(n, onnx.helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
              for n, a in zip(in_names, arrays) if a is not None]
    outputs = [onnx.helper.make_empty_tensor_value_info(n) for n in out_names]
    graph = onnx.helper.make_graph([proto], "fold", inputs, outputs)
    m = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
    m.ir_version = min(m.ir_version, 10)
    try:
        opts = ort.SessionOptions()
        opts.log_severity_level = 4
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        feeds = {n: a for n, a in zip(in_names, arrays) if a is not None}
        return [np.asarray(r) for r in sess.run(out_names, feeds)]
    except Exception:  # noqa: BLE001 - an op ORT cannot run alone is simply left unfolded
        return None


@register("dce", exact=True)
class EliminateDeadCode(Pass):
    """Remove Identity, inference-time Dropout, nodes that feed no output and unused initializers."""

    def apply(self, model: ir.Model, ctx: PassContext) -> bool:
        changed = False
        for node in list(model.graph):
            if node.domain not in ("", "ai.onnx"):
                continue
            if node.op_type == "Identity" or (node.op_type == "Dropout" and _inference_dropout(node)):
                if bypass_needs_identity(node):
                    continue  # the Identity is the only thing giving the output its own name
                bypass(node)
                changed = True
        changed |= common.RemoveUnusedNodesPass()(model).modified
        changed |= common.RemoveUnusedOpsetsPass()(model).modified
        return changed


def _inference_dropout(node: ir.Node) -> bool:
    """Dropout is the identity at inference unless training_mode is set or its mask is read."""
    if len(node.outputs) > 1 and consumers(node.outputs[1]):
        return False
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        mode = const_array(node.inputs[2])
        if mode is None or bool(mode):
            return False
    return True


@register("shape-infer", exact=True)
class InferShapes(Pass):
    """Run ONNX shape inference (with data propagation) and keep every inferred shape and type."""

    def apply(self, model: ir.Model, ctx: PassContext) -> bool:
        # Shapes around If/Loop/Scan are kept as they were (see edgec.graph.infer_shapes).
        return infer_shapes(model, check_type=True)
