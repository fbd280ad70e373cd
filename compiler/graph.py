"""Small helpers over the onnx_ir graph shared by several passes and backends.

Matching helpers say what they match in their names ("the only consumer of", "constant array of"),
so the passes that use them read like the subgraphs they rewrite.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator

import numpy as np
import onnx_ir as ir


def const_array(value: ir.Value | None) -> np.ndarray | None:
    """The numpy array behind a constant value (initializer or Constant output), else None.

    A graph input that is also an initializer is *not* constant: the caller may override it.
    """
    if value is None:
        return None
    if value.const_value is not None and not value.is_graph_input():
        return value.const_value.numpy()
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant" and producer.domain in ("", "ai.onnx"):
        attr = producer.attributes.get("value")
        if attr is not None:
            return attr.as_tensor().numpy()
    return None


def feed_inputs(graph: ir.Graph) -> list[ir.Value]:
    """The graph inputs a caller must feed: initializers listed as inputs have a value already.

    Under IR < 4 they are constants (see ``initializer_inputs_to_constants``); from IR 4 on ONNX Runtime
    lets a caller override them but does not require it, so sample data never needs them.
    """
    return [v for v in graph.inputs if not v.is_initializer()]


def initializer_inputs_to_constants(model: ir.Model) -> bool:
    """IR < 4: initializers listed among the graph inputs are constants; say so in IR 4 form.

    IR version 3 made every initializer a graph input as well, and ONNX Runtime treats them as constants
    there (it refuses a feed for one). Left as inputs, nothing downstream of a weight could be folded or
    fused, and sample files would be asked for weights. They are dropped from the inputs and the model
    becomes IR 4 (the first version where an initializer need not be an input): the same computation,
    and a model later passes may add initializers to without breaking the IR-3 rule.
    """
    if model.ir_version >= 4:
        return False
    keep = feed_inputs(model.graph)
    model.graph.inputs.clear()
    model.graph.inputs.extend(keep)
    model.ir_version = 4
    return True


def is_const(value: ir.Value | None) -> bool:
    return const_array(value) is not None


def consumers(value: ir.Value) -> list[ir.Node]:
    """Distinct nodes that read ``value`` (a node reading it twice counts once)."""
    seen: dict[int, ir.Node] = {}
    for node in value.consumers():
        seen.setdefault(id(node), node)
    return list(seen.values())


def only_consumer(value: ir.Value) -> ir.Node | None:
    """The single node reading ``value`` when nothing else (graph output included) reads it."""
    users = consumers(value)
    if len(users) != 1 or value.is_graph_output():
        return None
    # A reader inside an If/Loop/Scan body is out of reach: fusing it would pull a node out of its body.
    producer = value.producer()
    home = producer.graph if producer is not None else value.graph
    if users[0].graph is not home:
        return None
    return users[0]


def used_names(graph: ir.Graph) -> set[str]:
    names = {v.name for v in graph.inputs if v.name}
    names.update(graph.initializers.keys())
    for node in graph.all_nodes():
        names.update(v.name for v in node.outputs if v.name)
        if node.name:
            names.add(node.name)
    return names


class NameSource:
    """Hands out names not yet used in a graph: ``base``, ``base_1``, ``base_2`` ..."""

    def __init__(self, graph: ir.Graph) -> None:
        self._used = used_names(graph)

    def __call__(self, base: str) -> str:
        base = base or "v"
        if base not in self._used:
            self._used.add(base)
            return base
        for i in itertools.count(1):
            name = f"{base}_{i}"
            if name not in self._used:
                self._used.add(name)
                return name
        raise AssertionError("unreachable")


def add_initializer(graph: ir.Graph, array: np.ndarray, name: str, names: NameSource | None = None) -> ir.Value:
    """Register ``array`` as a new initializer under a fresh name derived from ``name``."""
    fresh = (names or NameSource(graph))(name)
    tensor = ir.tensor(np.asarray(array, order="C"), name=fresh)  # ascontiguousarray would make 0-d arrays 1-d
    value = ir.Value(name=fresh, shape=ir.Shape(array.shape), type=ir.TensorType(tensor.dtype),
                     const_value=tensor)
    graph.register_initializer(value)
    return value


def set_input_const(node: ir.Node, index: int, array: np.ndarray, name: str | None = None) -> ir.Value:
    """Point input ``index`` of ``node`` at a new initializer holding ``array``.

    A new value is made rather than overwriting the old tensor, because the old one may be shared
    by other nodes; the old initializer is dropped by dead-code elimination if nothing uses it.
    """
    graph = node.graph
    assert isinstance(graph, ir.Graph), "node must belong to the main graph"
    old = node.inputs[index] if index < len(node.inputs) else None
    base = name or (old.name if old is not None and old.name else f"{node.name or node.op_type}_in{index}")
    value = add_initializer(graph, array, base)
    if index >= len(node.inputs):
        node.resize_inputs(index + 1)
    node.replace_input_with(index, value)
    drop_orphan(graph, old)
    return value


def drop_orphan(graph: ir.Graph, value: ir.Value | None) -> None:
    """Remove an initializer nothing reads any more, so figures after a pass are not inflated.

    Graph inputs (overridable), graph outputs and an initializer registered under the name by another
    value are left alone.
    """
    if value is None or not value.is_initializer() or value.uses() or value.is_graph_output():
        return
    if value.is_graph_input() or value.name is None:
        return
    if value.name in graph.initializers and graph.initializers[value.name] is value:
        graph.initializers.pop(value.name)


def bypass_needs_identity(node: ir.Node, keep: int = 0) -> bool:
    """Whether removing ``node`` would leave an Identity behind: its output is a graph output and its input
    ``keep`` already has an interface name (graph input, another graph output, an initializer), which
    cannot be renamed to the output's without breaking that other name.

    onnx_ir's IdentityEliminationPass misses the graph-output case (``a = Relu(x); b = Identity(a)`` with
    both outputs leaves outputs ``[b, b]``), so Identity and Dropout removal go through ``bypass``.
    """
    src = node.inputs[keep]
    return node.outputs[0].is_graph_output() and src is not None and (
        src.is_graph_input() or src.is_graph_output() or src.is_initializer())


def bypass(node: ir.Node, keep: int = 0) -> None:
    """Remove a one-in one-out node by rewiring its output's readers to its input ``keep``.

    When the output is a graph output, the graph output is rewired to the kept value and the kept
    value takes the output's name, so the model's interface keeps its names (or, where the kept value
    has an interface name of its own, ``bypass_needs_identity``, an Identity takes the node's place).
    """
    src = node.inputs[keep]
    out = node.outputs[0]
    assert src is not None
    graph = node.graph
    assert isinstance(graph, ir.Graph)
    if out.is_graph_output():
        if bypass_needs_identity(node, keep):
            # Renaming would break another interface name: keep an Identity instead.
            ident = ir.node("Identity", [src], name=node.name)
            ident.outputs[0].name = None
            graph.insert_before(node, ident)
            ir.convenience.replace_all_uses_with(out, ident.outputs[0], replace_graph_outputs=True)
            name = out.name
            out.name = None
            ident.outputs[0].name = name
            ident.outputs[0].shape, ident.outputs[0].type = out.shape, out.type
        else:
            ir.convenience.replace_all_uses_with(out, src, replace_graph_outputs=True)
            name = out.name
            out.name = None
            src.name = name
            # The graph output must keep a full type: take the declared one where src has none.
            if src.type is None:
                src.type = out.type
            if src.shape is None:
                src.shape = out.shape
    else:
        ir.convenience.replace_all_uses_with(out, src)
    others = [v for v in node.inputs if v is not None and v is not src]
    graph.remove(node, safe=True)
    for v in others:
        drop_orphan(graph, v)


def static_shape(value: ir.Value | None) -> tuple[int, ...] | None:
    """The shape of ``value`` when every dim is a known integer, else None."""
    if value is None or value.shape is None:
        return None
    dims = []
    for d in value.shape:
        if not isinstance(d, int):
            return None
        dims.append(d)
    return tuple(dims)


def nodes_of(graph: ir.Graph, *op_types: str) -> Iterator[ir.Node]:
    """Nodes of the standard domain with one of ``op_types``, in a snapshot safe to mutate under."""
    for node in list(graph):
        if node.op_type in op_types and node.domain in ("", "ai.onnx"):
            yield node


def attr(node: ir.Node, name: str, default=None):
    """Attribute value of ``node`` as a plain Python value (int, float, str, list), or ``default``."""
    a = node.attributes.get(name)
    if a is None:
        return default
    return a.value


def opset_version(model: ir.Model) -> int:
    return int(model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1)))


def infer_shapes(model: ir.Model, *, check_type: bool = False) -> bool:
    """Fill in value shapes and types (ONNX shape inference, lenient) for matchers that need ranks.

    Outputs of If/Loop/Scan and every value inside their subgraphs keep the shapes they had: inference
    there merges branches (or loop iterations) that ONNX Runtime only ever runs one at a time, and a
    shape written into the model is a claim ORT checks when it loads it. Passes leave subgraphs alone,
    so they need no shapes there.
    """
    from onnx_ir.passes import common

    if _has_non_tensor_values(model.graph):
        # onnx_ir merges an inferred seq(tensor(float)) as a float *tensor* type, which ORT then refuses
        # ("Type (tensor(float)) of output arg (seq_1) does not match expected type"): models that
        # build sequences or optionals keep every value as it was.
        values = [*model.graph.inputs, *(o for n in model.graph.all_nodes() for o in n.outputs)]
    else:
        values = _control_flow_values(model.graph)
    kept = [(v, v.shape, v.type) for v in values]
    # Shapes are a help for matching, never a requirement: a model inference cannot handle is fine.
    changed = False
    with contextlib.suppress(Exception):
        changed = common.ShapeInferencePass(check_type=check_type, strict_mode=False, data_prop=True)(model).modified
    for v, shape, type_ in kept:
        v.shape, v.type = shape, type_
    return changed


def _has_non_tensor_values(graph: ir.Graph) -> bool:
    if any(v.type is not None and not isinstance(v.type, ir.TensorType) for v in [*graph.inputs, *graph.outputs]):
        return True
    return any(n.op_type.startswith(("Sequence", "Optional")) or n.op_type == "SplitToSequence"
               for n in graph.all_nodes())


def has_subgraphs(node: ir.Node) -> bool:
    return any(a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for a in node.attributes.values())


def _control_flow_values(graph: ir.Graph) -> list[ir.Value]:
    """Outputs of nodes with subgraphs (If, Loop, Scan) and all values inside those subgraphs."""
    out: list[ir.Value] = []
    for node in graph:
        if not has_subgraphs(node):
            continue
        out.extend(node.outputs)
        for a in node.attributes.values():
            subs = [a.value] if a.type == ir.AttributeType.GRAPH else list(a.value) if a.type == ir.AttributeType.GRAPHS else []
            for sub in subs:
                out.extend(sub.inputs)
                for inner in sub.all_nodes() if hasattr(sub, "all_nodes") else sub:
                    out.extend(inner.outputs)
    return out
