"""The depthwise pass's view of the graph: which convs qualify, their real input patches, the rewrite.

Helpers of ``passes/depthwise.py`` (no pass is registered here).
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from edgec import runtime
from edgec.graph import NameSource, add_initializer, attr, const_array, set_input_const, static_shape
from edgec.pass_infra import Feed, PassContext


@dataclass
class Layer:
    """A 2-D group-1 KxK Conv with constant weights, and the real input patches gathered for it."""

    node: ir.Node
    weight: np.ndarray  # [Cout, Cin, kh, kw]
    bias: np.ndarray | None
    kernel: tuple[int, int]
    strides: tuple[int, int]
    dilations: tuple[int, int]
    out_hw: tuple[int, int] | None
    fit: np.ndarray | None = None  # input patches [P, Cin, K] from even feeds (fitting)
    test: np.ndarray | None = None  # from odd feeds (the error the decision uses)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def cout(self) -> int:
        return self.weight.shape[0]

    @property
    def cin(self) -> int:
        return self.weight.shape[1]

    @property
    def full_rank(self) -> int:
        return min(self.cout, self.kernel[0] * self.kernel[1])


def label(node: ir.Node) -> str:
    return node.name or node.outputs[0].name or "Conv"


def selected(node: ir.Node, patterns: list[str]) -> bool:
    names = [n for n in (node.name, node.outputs[0].name) if n]
    return any(fnmatch.fnmatchcase(n, p) for n in names for p in patterns)


def match(conv: ir.Node) -> tuple[Layer | None, str]:
    """A 2-D group-1 KxK Conv with constant weights, else None and why not."""
    w = const_array(conv.inputs[1]) if len(conv.inputs) > 1 else None
    if w is None:
        return None, "weight is not a constant"
    if w.ndim != 4:
        return None, f"{w.ndim - 2}-D convolution (only 2-D is separated)"
    group = int(attr(conv, "group", 1))
    if group != 1:
        kind = "already depthwise" if w.shape[1] == 1 else "grouped"
        return None, (f"group={group} ({kind}): a grouped conv has no full channel mixing to separate; "
                      "only group=1 convs are replaced")
    kh, kw = w.shape[2:]
    if kh * kw == 1:
        return None, "1x1: already pointwise"
    if not np.issubdtype(w.dtype, np.floating):
        return None, f"{w.dtype} weights (float only)"
    b = const_array(conv.inputs[2]) if len(conv.inputs) > 2 and conv.inputs[2] is not None else None
    if len(conv.inputs) > 2 and conv.inputs[2] is not None and b is None:
        return None, "bias is not a constant"
    out = static_shape(conv.outputs[0])
    return Layer(conv, w, b, (kh, kw), tuple(attr(conv, "strides", [1, 1])),  # type: ignore[arg-type]
                 tuple(attr(conv, "dilations", [1, 1])), out[2:] if out and len(out) == 4 else None), ""


# --------------------------------------------------------------------------------------------- activations
def pick_feeds(ctx: PassContext, n: int) -> list[Feed]:
    source = ctx.calib if ctx.calib is not None else (ctx.samples or None)
    if source is None:
        return []
    if ctx.calib is None:
        ctx.warn("depthwise: no --calib given: layer errors are measured on the sample inputs only")
    step = max(1, len(source) // n)
    return [source[i] for i in range(0, len(source), step)][:n]


def pads(layer: Layer, hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """(top, left, bottom, right), resolving auto_pad as the ONNX spec does."""
    node = layer.node
    auto = attr(node, "auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("NOTSET", "") or auto is None:
        p = list(attr(node, "pads", [0, 0, 0, 0]))
        return p[0], p[1], p[2], p[3]
    if auto == "VALID":
        return 0, 0, 0, 0
    begin, end = [], []
    for size, k, s, d in zip(hw, layer.kernel, layer.strides, layer.dilations):
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        small, big = total // 2, total - total // 2
        begin.append(big if auto == "SAME_LOWER" else small)
        end.append(small if auto == "SAME_LOWER" else big)
    return begin[0], begin[1], end[0], end[1]


def positions_budget(layer: Layer) -> int:
    # Enough positions for a well-posed fit (the ALS fit estimates a (Cin*K)^2 input covariance), bounded
    # for memory: 8192 x 2304 floats is 75 MB for a 256-input 3x3 conv.
    return int(np.clip(4 * layer.cin * layer.kernel[0] * layer.kernel[1], 2048, 8192))


def gather_patches(model: ir.Model, layers: list[Layer], feeds: list[Feed]) -> None:
    """Run ORT once per feed with every layer input as an extra output; keep random K-patches."""
    graph = model.graph
    names = NameSource(graph)
    for layer in layers:
        x = layer.node.inputs[0]
        if x is not None and not x.name:
            x.name = names("dw_input")
    proto = ir.serde.serialize_model(model)
    present = {o.name for o in proto.graph.output} | {i.name for i in proto.graph.input}
    wanted = []
    for layer in layers:
        name = str(layer.node.inputs[0].name)  # type: ignore[union-attr]
        if name not in present:
            proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
            present.add(name)
        wanted.append(name)
    sess = runtime.session(proto.SerializeToString(), optimization="basic")
    outs = [o.name for o in sess.get_outputs()]
    rng = np.random.default_rng(0)
    parts: dict[int, tuple[list[np.ndarray], list[np.ndarray]]] = {id(la): ([], []) for la in layers}
    for f, feed in enumerate(feeds):
        values = dict(zip(outs, sess.run(outs, runtime.input_feed(sess, feed))))
        values.update({k: v for k, v in feed.items() if k not in values})
        for layer, name in zip(layers, wanted):
            per_feed = math.ceil(positions_budget(layer) / max(1, math.ceil(len(feeds) / 2)))
            act = np.asarray(values[name], dtype=np.float32)
            layer.extra["input_shape"] = list(act.shape)
            patches = _patches(layer, act, per_feed if len(feeds) > 1 else 2 * per_feed, rng)
            fit, test = parts[id(layer)]
            if len(feeds) == 1:
                half = len(patches) // 2
                fit.append(patches[:half])
                test.append(patches[half:])
            else:
                (fit if f % 2 == 0 else test).append(patches)
    for layer in layers:
        fit, test = parts[id(layer)]
        layer.fit, layer.test = np.concatenate(fit), np.concatenate(test)


def _patches(layer: Layer, x: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` random output positions of the conv as input patches [P, Cin, kh*kw]."""
    (kh, kw), (sh, sw), (dh, dw) = layer.kernel, layer.strides, layer.dilations
    top, left, bottom, right = pads(layer, x.shape[2:])
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    ho = (xp.shape[2] - (kh - 1) * dh - 1) // sh + 1
    wo = (xp.shape[3] - (kw - 1) * dw - 1) // sw + 1
    layer.out_hw = layer.out_hw or (ho, wo)
    total = x.shape[0] * ho * wo
    flat = rng.choice(total, size=min(count, total), replace=False)
    n, oy, ox = np.unravel_index(flat, (x.shape[0], ho, wo))
    rows = oy[:, None] * sh + np.arange(kh) * dh
    cols = ox[:, None] * sw + np.arange(kw) * dw
    # Advanced indices around a slice put the indexed axes first: [P, kh, kw, Cin].
    p = xp[n[:, None, None], :, rows[:, :, None], cols[:, None, :]]
    return np.ascontiguousarray(p.transpose(0, 3, 1, 2).reshape(len(flat), x.shape[1], kh * kw))


# --------------------------------------------------------------------------------------------- rewriting
def rewrite(graph: ir.Graph, layer: Layer, dw_w: np.ndarray, pw_w: np.ndarray, bias: np.ndarray | None) -> None:
    """Insert the depthwise conv before the original node and turn the original into the pointwise one.

    Reusing the node keeps its name, output value (and graph-output name) and bias input in place; ``bias``
    replaces the bias when the fit corrected it (the ALS fit folds the mean of its error into it).
    """
    conv = layer.node
    name = label(conv)
    names = NameSource(graph)
    dw_value = add_initializer(graph, dw_w, f"{name}_dw_weight", names)
    geometry = {k: a.value for k, a in conv.attributes.items()
                if k in ("kernel_shape", "strides", "pads", "dilations", "auto_pad")}
    dw = ir.node("Conv", [conv.inputs[0], dw_value], attributes={**geometry, "group": layer.cin},
                 name=names(f"{name}_dw"))
    dw.outputs[0].name = names(f"{name}_dw_out")
    graph.insert_before(conv, dw)
    conv.replace_input_with(0, dw.outputs[0])
    set_input_const(conv, 1, pw_w, name=f"{name}_pw_weight")
    if bias is not None:
        set_input_const(conv, 2, bias.astype(layer.weight.dtype), name=f"{name}_pw_bias")
    for key in ("strides", "pads", "dilations", "auto_pad"):
        conv.attributes.pop(key, None)
    conv.attributes["kernel_shape"] = ir.AttrInt64s("kernel_shape", [1, 1])
    conv.attributes.pop("group", None)
