"""Cross-layer equalization (Nagel et al., "Data-Free Quantization Through Weight Equalization and Bias
Correction", ICCV 2019).   exact (unless clip=relu)

For two convolutions A -> act -> B where act is positively homogeneous (act(s*x) = s*act(x) for s > 0:
Relu, LeakyRelu, PRelu, or nothing), dividing A's output channel i (weights and bias) by s_i and
multiplying every weight of B that reads channel i by s_i leaves the outputs unchanged. Choosing
s_i = sqrt(r1_i * r2_i) / r2_i, with r1_i the range of A's output channel i and r2_i the range of B's
input channel i, makes both ranges sqrt(r1_i * r2_i): no channel of A dwarfs the others any more, so a
per-tensor weight scale wastes far fewer int8 levels. Chains (Conv1x1 -> depthwise -> Conv1x1 in an
inverted residual) share a layer between two pairs, so the pairs are equalized in turn until the
scales stop moving (the paper's iterative scheme).

ReLU6 (Clip 0..6) is NOT scale-equivariant: clip(s*x, 0, 6) != s*clip(x, 0, 6). ``clip`` says what to do:
  skip   (default) leave such pairs alone;
  split  rewrite Clip(lo, hi) as Relu (lo = 0) or Max(lo/S) then Min(hi/S) with per-channel bounds, which
         is exact because the bounds move with the channel scale S (a Clip cannot hold per-channel bounds);
  relu   replace Clip(0, hi) by Relu as the paper does for MobileNetV2: LOSSY, the pass is then not exact.
High-bias absorption (the paper's section 4.2) needs activation statistics and is not done here.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from edgec.graph import (
    NameSource,
    add_initializer,
    attr,
    const_array,
    nodes_of,
    only_consumer,
    set_input_const,
)
from edgec.pass_infra import Pass, PassContext, register

# Activations f with f(s * x) = s * f(x) for every s > 0 (per channel too: PRelu's slope is per channel).
_HOMOGENEOUS = ("Relu", "LeakyRelu", "PRelu", "Identity")
_CLIP_MODES = ("skip", "split", "relu")


@register("equalize", exact=True)
class Equalize(Pass):
    """Cross-layer equalization of consecutive Conv pairs (Nagel 2019); exact in fp32."""

    add_after = "cleanup"  # where --add inserts it in a target's pipeline

    clip: str = "skip"
    iterations: int = 20
    #: stop when no scale moved by more than this (relative) in one sweep
    tolerance: float = 1e-4

    def __post_init__(self) -> None:
        if self.clip not in _CLIP_MODES:
            raise ValueError(f"clip must be one of {', '.join(_CLIP_MODES)}, got {self.clip!r}")

    def is_exact(self) -> bool:
        return self.clip != "relu"

    def apply(self, model: ir.Model, ctx: PassContext) -> bool:
        pairs, skipped = find_pairs(model.graph, self.clip)
        if skipped:
            ctx.details["skipped"] = skipped
        if not pairs:
            ctx.details["pairs"] = []
            return False
        # Work on float64 copies keyed by node; write each weight back once at the end.
        weights: dict[int, np.ndarray] = {}
        biases: dict[int, np.ndarray | None] = {}
        for p in pairs:
            for node in (p.a, p.b):
                if id(node) not in weights:
                    weights[id(node)] = const_array(node.inputs[1]).astype(np.float64)  # type: ignore[union-attr]
                    b = const_array(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
                    biases[id(node)] = None if b is None else b.astype(np.float64).reshape(-1)
        before = [_balance(weights[id(p.a)], weights[id(p.b)], p.b) for p in pairs]
        util_before = {id(n): _utilization(w) for n, w in ((p.a, weights[id(p.a)]) for p in pairs)}
        totals = [np.ones(weights[id(p.a)].shape[0]) for p in pairs]
        sweeps = 0
        for sweeps in range(1, self.iterations + 1):
            moved = 0.0
            for k, p in enumerate(pairs):
                wa, wb = weights[id(p.a)], weights[id(p.b)]
                r1 = np.abs(wa).reshape(wa.shape[0], -1).max(axis=1)
                r2 = _input_channel_range(wb, p.b)
                ok = (r1 > 0) & (r2 > 0)
                s = np.ones_like(r1)
                s[ok] = np.sqrt(r1[ok] * r2[ok]) / r2[ok]
                weights[id(p.a)] = wa / s.reshape(-1, *([1] * (wa.ndim - 1)))
                if biases[id(p.a)] is not None:
                    biases[id(p.a)] = biases[id(p.a)] / s  # type: ignore[operator]
                weights[id(p.b)] = _scale_input_channels(wb, p.b, s)
                totals[k] = totals[k] * s
                moved = max(moved, float(np.max(np.abs(s - 1.0))))
            if moved < self.tolerance:
                break
        for node_id, node in {id(n): n for p in pairs for n in (p.a, p.b)}.items():
            w_old = const_array(node.inputs[1])
            assert w_old is not None
            set_input_const(node, 1, weights[node_id].astype(w_old.dtype))
            if biases[node_id] is not None:
                set_input_const(node, 2, biases[node_id].astype(w_old.dtype))  # type: ignore[union-attr]
        names = NameSource(model.graph)
        for p, total in zip(pairs, totals):
            if p.clip is not None:
                _rewrite_clip(model.graph, p.clip, total, self.clip, names, weights[id(p.a)].ndim)
        rows = []
        for p, (b0, _), total in zip(pairs, before, totals):
            b1, _ = _balance(weights[id(p.a)], weights[id(p.b)], p.b)
            rows.append({"a": p.a.name, "b": p.b.name, "via": p.via,
                         "max_log_range_ratio_before": round(b0, 4), "max_log_range_ratio_after": round(b1, 4),
                         "utilization_a_before": round(util_before[id(p.a)], 4),
                         "utilization_a_after": round(_utilization(weights[id(p.a)]), 4),
                         "scale_min": float(total.min()), "scale_max": float(total.max())})
        ctx.details["pairs"] = rows
        ctx.details["sweeps"] = sweeps
        ctx.details["high_bias_absorption"] = "not done (needs activation statistics)"
        return True


@dataclasses.dataclass
class Pair:
    a: ir.Node
    b: ir.Node
    via: str  # the activation between them ("" for none)
    clip: ir.Node | None = None  # a Clip to rewrite (clip=split|relu)


def find_pairs(graph: ir.Graph, clip_mode: str = "skip") -> tuple[list[Pair], list[dict[str, str]]]:
    """Conv A -> [one homogeneous activation] -> Conv B, where each value on the path has one reader.

    Returns the pairs and, for the report, the Conv->Clip->Conv pairs skipped because of ``clip=skip``.
    """
    pairs: list[Pair] = []
    skipped: list[dict[str, str]] = []
    for a in nodes_of(graph, "Conv"):
        if not _const_weight(a):
            continue
        out = a.outputs[0]
        nxt = only_consumer(out)
        via, clip = "", None
        if nxt is not None and nxt.domain in ("", "ai.onnx") and nxt.op_type in (*_HOMOGENEOUS, "Clip"):
            if nxt.op_type == "Clip":
                bounds = _clip_bounds(nxt)
                b_after = only_consumer(nxt.outputs[0])
                if b_after is None or b_after.op_type != "Conv":
                    continue
                if bounds is not None and bounds[0] in (0.0, -np.inf) and bounds[1] == np.inf:
                    pass  # Clip(0, inf) is a Relu (and Clip(-inf, inf) the identity): scale-equivariant as is
                elif clip_mode == "skip" or bounds is None or (clip_mode == "relu" and bounds[0] != 0.0):
                    skipped.append({"a": a.name or "", "b": b_after.name or "",
                                    "reason": "Clip (ReLU6) is not scale-equivariant; use equalize:clip=split"
                                    if bounds is not None else "Clip bounds are not constant"})
                    continue
                else:
                    clip = nxt
            elif nxt.op_type == "PRelu" and const_array(nxt.inputs[1]) is None:
                continue
            via = nxt.op_type
            act_out = nxt.outputs[0]
            nxt = only_consumer(act_out)
            if nxt is not None and nxt.inputs[0] is not act_out:
                continue
        if nxt is None or nxt.op_type != "Conv" or nxt.domain not in ("", "ai.onnx") or not _const_weight(nxt):
            continue
        path = nxt.inputs[0] if via else a.outputs[0]
        if nxt.inputs[0] is not path or any(v is path for v in nxt.inputs[1:]):
            continue  # B must read the path as its data input, not as a weight
        pairs.append(Pair(a, nxt, via, clip))
    return pairs, skipped


def _const_weight(conv: ir.Node) -> bool:
    w = const_array(conv.inputs[1])
    if w is None or w.dtype.kind != "f":
        return False
    return len(conv.inputs) < 3 or conv.inputs[2] is None or const_array(conv.inputs[2]) is not None


def _clip_bounds(clip: ir.Node) -> tuple[float, float] | None:
    if len(clip.inputs) > 1 or "min" not in clip.attributes and "max" not in clip.attributes:
        lo = const_array(clip.inputs[1]) if len(clip.inputs) > 1 and clip.inputs[1] is not None else None
        hi = const_array(clip.inputs[2]) if len(clip.inputs) > 2 and clip.inputs[2] is not None else None
        if (len(clip.inputs) > 1 and clip.inputs[1] is not None and lo is None) or (
                len(clip.inputs) > 2 and clip.inputs[2] is not None and hi is None):
            return None
        return (float(lo) if lo is not None else -np.inf, float(hi) if hi is not None else np.inf)
    return float(attr(clip, "min", -np.inf)), float(attr(clip, "max", np.inf))  # opset < 11


def _groups(w: np.ndarray, conv: ir.Node) -> tuple[int, int, int]:
    g = int(attr(conv, "group", 1))
    return g, w.shape[0] // g, w.shape[1]  # groups, outputs per group, inputs per group


def _input_channel_range(w: np.ndarray, conv: ir.Node) -> np.ndarray:
    """max |W| over every weight that reads input channel c, for each c (grouped convs included)."""
    g, cout_g, cin_g = _groups(w, conv)
    blocks = np.abs(w).reshape(g, cout_g, cin_g, -1)
    return blocks.max(axis=(1, 3)).reshape(g * cin_g)


def _scale_input_channels(w: np.ndarray, conv: ir.Node, s: np.ndarray) -> np.ndarray:
    # Input channel c sits in group c // cin_g at local index c % cin_g; only that group's outputs read it.
    g, cout_g, cin_g = _groups(w, conv)
    scaled = w.reshape(g, cout_g, cin_g, -1) * s.reshape(g, 1, cin_g, 1)
    return scaled.reshape(w.shape)


def _balance(wa: np.ndarray, wb: np.ndarray, b: ir.Node) -> tuple[float, float]:
    """max over channels of |log(r1_i / r2_i)|: 0 when every channel is balanced."""
    r1 = np.abs(wa).reshape(wa.shape[0], -1).max(axis=1)
    r2 = _input_channel_range(wb, b)
    ok = (r1 > 0) & (r2 > 0)
    return (float(np.max(np.abs(np.log(r1[ok] / r2[ok])))) if ok.any() else 0.0), 0.0


def _utilization(w: np.ndarray) -> float:
    """Mean over output channels of range_i / max range: 1.0 means a per-tensor scale fits every channel."""
    r = np.abs(w).reshape(w.shape[0], -1).max(axis=1)
    return float(r.mean() / r.max()) if r.max() > 0 else 1.0


def _rewrite_clip(graph: ir.Graph, clip: ir.Node, total: np.ndarray, mode: str, names: NameSource,
                  weight_rank: int) -> None:
    lo, hi = _clip_bounds(clip)  # type: ignore[misc]
    src = clip.inputs[0]
    out = clip.outputs[0]
    assert src is not None
    if mode == "relu":
        new: list[ir.Node] = [ir.node("Relu", [src], name=names(f"{clip.name or 'clip'}_relu"))]
    else:
        # After A's channel i was divided by S_i, the activation it feeds is clip(y/S_i, lo/S_i, hi/S_i).
        # Per-channel bounds broadcast over the spatial dims: [C, 1, ...] with one 1 per kernel dim of A.
        shape = (-1,) + (1,) * (weight_rank - 2)
        new = []
        cur = src
        if lo == 0.0:
            new.append(ir.node("Relu", [cur], name=names(f"{clip.name or 'clip'}_relu")))
            cur = new[-1].outputs[0]
        elif np.isfinite(lo):
            bound = add_initializer(graph, (lo / total).astype(np.float32).reshape(shape), f"{clip.name}_lo", names)
            new.append(ir.node("Max", [cur, bound], name=names(f"{clip.name or 'clip'}_max")))
            cur = new[-1].outputs[0]
        if np.isfinite(hi):
            bound = add_initializer(graph, (hi / total).astype(np.float32).reshape(shape), f"{clip.name}_hi", names)
            new.append(ir.node("Min", [cur, bound], name=names(f"{clip.name or 'clip'}_min")))
    for n in new:
        n.outputs[0].type = out.type
        n.outputs[0].shape = out.shape
    graph.insert_after(clip, new)
    ir.convenience.replace_all_uses_with(out, new[-1].outputs[0], replace_graph_outputs=True)
    if out.is_graph_output():
        name = out.name
        out.name = None
        new[-1].outputs[0].name = name
    bounds = list(clip.inputs[1:])
    graph.remove(clip, safe=True)
    for v in bounds:
        if v is not None and v.is_initializer() and not v.uses() and v.name in graph.initializers:
            graph.initializers.pop(v.name)
