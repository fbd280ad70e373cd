"""Replace standard KxK convolutions by depthwise-separable pairs within a per-layer error budget.   lossy

A Conv with weight W[o, i, kh, kw] (group 1) computes y[o] = sum_i M_i x_i, where M_i = W[:, i] reshaped
to (Cout, K) with K = kh*kw and x_i is input channel i's K-patch. The rank-r truncated SVD
M_i ~= U_i[:, :r] S_i[:r] V_i[:r] turns the conv into
    depthwise Conv(group=Cin, Cin*r outputs, filters V_i[j], same kernel/stride/pad/dilation)
    -> pointwise 1x1 Conv (Cout outputs, weights U_i S_i, the original bias),
the decomposition of Jaderberg et al. 2014 / Zhang et al. 2015 applied per input channel. Full rank,
r = min(Cout, K), reproduces the conv exactly: any rank >= K (9 for 3x3; 49 also covers 7x7) means full rank.

With calibration data, two improvements are tried and kept only when they lower the error on feeds they
were not fit on: (1) the pointwise weights are refit by least squares on the real depthwise outputs (a
joint fit over all input channels, so the channels' truncation errors are traded against each other);
(2) the depthwise filters also come from the SVD of M_i L_i, C_i = L_i L_i^T the covariance of channel i's
input patches, which minimises the error on real inputs instead of on the weights ("whitened").

MACs per output position: Cin*Cout*K before, Cin*r*K + Cin*r*Cout after, so a replacement pays only when
r < Cout*K / (K + Cout) (the break-even rank: 7.9 for a 3x3 conv with 64 outputs, 6.5 with 24). In
automatic mode (rank 0 / unset) each layer gets the smallest r below break-even whose output SQNR meets
``max_error``, or is kept. A fixed ``rank`` is applied to every selected layer whatever its MACs and error
(both reported; a warning when below the floor). The error is the SQNR of the layer's own output (bias
included) against the original conv, on input patches gathered with ONNX Runtime from real calibration
feeds (fit on the even feeds, measured on the odd ones); without data it is measured on the weights.
Grouped convs (group > 1, depthwise included) are refused with the reason; 1x1 convs are skipped.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from edgec import metrics, runtime
from edgec.errors import EdgecError
from edgec.graph import (
    NameSource,
    add_initializer,
    attr,
    const_array,
    infer_shapes,
    nodes_of,
    set_input_const,
    static_shape,
)
from edgec.pass_infra import Feed, Pass, PassContext, register

DEFAULT_MAX_ERROR = 30.0  # dB: the layer's output keeps 99.9 % of its energy


@register("depthwise", exact=False)
class SeparateDepthwise(Pass):
    """Turn KxK convolutions into depthwise + pointwise pairs (per-channel SVD), within an SQNR floor."""

    #: depthwise channel multiplier for every selected layer; None: --dw-rank, else chosen per layer
    rank: int | None = None
    #: per-layer output SQNR floor in dB; None: --dw-max-error, else 30
    max_error: float | None = None
    #: only layers with at least this fraction of the model's MACs; None: --dw-min-macs, else 0
    min_macs: float | None = None
    #: fnmatch patterns on node (or output) names; None: --dw-layers, else all convs
    layers: tuple[str, ...] | None = None
    #: least-squares refit of the pointwise weights on calibration data
    refit: bool = True
    #: also try depthwise filters from the input-covariance-weighted SVD (calibration data only)
    whiten: bool = True
    #: calibration feeds used to gather each layer's inputs
    max_feeds: int = 16

    def is_exact(self) -> bool:
        # Known after apply: exact when every replacement used full rank (the SVD is then exact and no
        # refit happens); before apply the pass is lossy.
        return bool(getattr(self, "_exact", False))

    def apply(self, model: ir.Model, ctx: PassContext) -> bool:
        settings = self._settings(ctx)
        ctx.details["settings"] = settings
        infer_shapes(model)
        decisions: dict[int, dict[str, Any]] = {}  # by position in the graph, so the report reads in order
        layers: list[_Layer] = []
        position = {id(conv): i for i, conv in enumerate(nodes_of(model.graph, "Conv"))}
        for conv in nodes_of(model.graph, "Conv"):
            layer, reason = _match(conv)
            label = _label(conv)
            if layer is None:
                decisions[position[id(conv)]] = {"node": label, "reason": reason,
                                                 "decision": "refused" if "group" in reason else "skipped"}
            elif settings["layers"] and not _selected(conv, settings["layers"]):
                decisions[position[id(conv)]] = {"node": label, "decision": "skipped",
                                                 "reason": "not matched by the layer patterns"}
            else:
                layers.append(layer)
        full_rank = bool(settings["rank"]) and all(settings["rank"] >= la.full_rank for la in layers)
        feeds = [] if full_rank else _pick_feeds(ctx, self.max_feeds)  # full rank is exact: nothing to measure
        error_on = "none: full rank is exact" if full_rank else "weights (no calibration data)"
        if feeds and layers:
            _gather_patches(model, layers, feeds)
            error_on = ("layer outputs on held-out calibration feeds" if len(feeds) > 1
                        else "layer outputs on held-out positions of the single calibration feed")
        ctx.details["error_on"] = error_on
        total = metrics.count_macs(ir.serde.serialize_model(model))
        replaced = []
        for layer in layers:
            d = _decide(layer, settings, total, self.refit, self.whiten)
            decisions[position[id(layer.node)]] = d
            if d["decision"] == "replaced":
                if settings["rank"] and d["sqnr_db"] < settings["max_error"]:
                    ctx.warn(f"depthwise: '{d['node']}' at fixed rank {d['rank']} has {d['sqnr_db']:.1f} dB, "
                             f"below the {settings['max_error']:g} dB floor")
                replaced.append((layer, d))
        for layer, d in replaced:
            _rewrite(model.graph, layer, d.pop("_weights"))
        self._exact = all(d["rank"] >= d["full_rank"] and d["method"] == "svd" for _, d in replaced)
        before = sum(d["macs_before"] or 0 for _, d in replaced)
        after = sum(d["macs_after"] or 0 for _, d in replaced)
        ctx.details["layers"] = [decisions[i] for i in sorted(decisions)]
        ctx.details["replaced"] = len(replaced)
        ctx.details["macs_replaced_before"] = before
        ctx.details["macs_replaced_after"] = after
        ctx.details["macs_reduction"] = 1 - after / before if before else 0.0
        ctx.details["model_macs_before"] = total
        return bool(replaced)

    def _settings(self, ctx: PassContext) -> dict[str, Any]:
        """Pass fields win; unset ones come from the user's --dw-* options, then the defaults."""
        opts = ctx.options

        def pick(value: Any, key: str, default: Any) -> Any:
            return value if value is not None else (opts[key] if opts.get(key) is not None else default)

        rank = int(pick(self.rank, "dw_rank", 0))
        max_error = float(pick(self.max_error, "dw_max_error", DEFAULT_MAX_ERROR))
        min_macs = float(pick(self.min_macs, "dw_min_macs", 0.0))
        patterns = pick(self.layers, "dw_layers", ())
        if isinstance(patterns, str):
            patterns = [p for p in patterns.replace("+", ",").split(",") if p]
        if rank < 0:
            raise EdgecError(f"depthwise: rank must be >= 1 (or 0 to choose per layer), got {rank}")
        if not 0.0 <= min_macs <= 1.0:
            raise EdgecError(f"depthwise: min_macs is a fraction of the model's MACs in [0, 1], got {min_macs:g}",
                             hint="e.g. --dw-min-macs 0.02 for layers with at least 2 % of the MACs")
        return {"rank": rank, "max_error": max_error, "min_macs": min_macs, "layers": list(patterns)}


# --------------------------------------------------------------------------------------------- matching
@dataclass
class _Layer:
    node: ir.Node
    weight: np.ndarray  # [Cout, Cin, kh, kw]
    bias: np.ndarray | None
    kernel: tuple[int, int]
    strides: tuple[int, int]
    dilations: tuple[int, int]
    out_hw: tuple[int, int] | None
    fit: np.ndarray | None = None  # input patches [P, Cin, K] from even feeds (refit)
    test: np.ndarray | None = None  # from odd feeds (error)
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


def _label(node: ir.Node) -> str:
    return node.name or node.outputs[0].name or "Conv"


def _selected(node: ir.Node, patterns: list[str]) -> bool:
    names = [n for n in (node.name, node.outputs[0].name) if n]
    return any(fnmatch.fnmatchcase(n, p) for n in names for p in patterns)


def _match(conv: ir.Node) -> tuple[_Layer | None, str]:
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
    return _Layer(conv, w, b, (kh, kw), tuple(attr(conv, "strides", [1, 1])),  # type: ignore[arg-type]
                  tuple(attr(conv, "dilations", [1, 1])), out[2:] if out and len(out) == 4 else None), ""


# --------------------------------------------------------------------------------------------- activations
def _pick_feeds(ctx: PassContext, n: int) -> list[Feed]:
    source = ctx.calib if ctx.calib is not None else (ctx.samples or None)
    if source is None:
        return []
    if ctx.calib is None:
        ctx.warn("depthwise: no --calib given: layer errors are measured on the sample inputs only")
    step = max(1, len(source) // n)
    return [source[i] for i in range(0, len(source), step)][:n]


def _pads(layer: _Layer, hw: tuple[int, int]) -> tuple[int, int, int, int]:
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


def _positions_budget(layer: _Layer) -> int:
    # Enough positions for a well-posed refit (unknowns per output: Cin*r <= Cin*K), bounded for memory.
    return int(np.clip(4 * layer.cin * layer.kernel[0] * layer.kernel[1], 2048, 8192))


def _gather_patches(model: ir.Model, layers: list[_Layer], feeds: list[Feed]) -> None:
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
        name = layer.node.inputs[0].name  # type: ignore[union-attr]
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
            per_feed = math.ceil(_positions_budget(layer) / max(1, math.ceil(len(feeds) / 2)))
            x = np.asarray(values[name], dtype=np.float32)
            patches = _patches(layer, x, per_feed if len(feeds) > 1 else 2 * per_feed, rng)
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


def _patches(layer: _Layer, x: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` random output positions of the conv as input patches [P, Cin, kh*kw]."""
    (kh, kw), (sh, sw), (dh, dw) = layer.kernel, layer.strides, layer.dilations
    top, left, bottom, right = _pads(layer, x.shape[2:])
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


# --------------------------------------------------------------------------------------------- deciding
def _decide(layer: _Layer, settings: dict[str, Any], total_macs: int, refit: bool, whiten: bool) -> dict[str, Any]:
    cout, cin = layer.cout, layer.cin
    k = layer.kernel[0] * layer.kernel[1]
    full = min(cout, k)
    break_even = cout * k / (k + cout)
    hw = layer.out_hw[0] * layer.out_hw[1] if layer.out_hw else None
    macs_old = cin * cout * k * hw if hw else None
    d: dict[str, Any] = {"node": _label(layer.node), "kernel": list(layer.kernel), "cin": cin, "cout": cout,
                         "strides": list(layer.strides), "dilations": list(layer.dilations),
                         "full_rank": full, "break_even_rank": round(break_even, 2),
                         "macs_before": macs_old, "mac_share": macs_old / total_macs if macs_old and total_macs else None}
    if settings["min_macs"] > 0:
        if d["mac_share"] is None:
            return {**d, "decision": "kept", "reason": "MAC share unknown (dynamic shape): pin shapes with --shape"}
        if d["mac_share"] < settings["min_macs"]:
            return {**d, "decision": "kept",
                    "reason": f"{100 * d['mac_share']:.2f} % of the MACs < min_macs {100 * settings['min_macs']:g} %"}
    fixed = settings["rank"]
    ranks = [min(fixed, full)] if fixed else [r for r in range(1, full + 1) if r < break_even]
    if not ranks:
        return {**d, "decision": "kept",
                "reason": f"break-even rank {break_even:.2f} < 1: no depthwise pair has fewer MACs"}
    fitter = _Fitter(layer, refit, whiten)
    floor = settings["max_error"]
    results: dict[int, tuple[float, float, tuple[np.ndarray, np.ndarray], str]] = {}

    def meets(r: int) -> bool:
        results[r] = results.get(r) or fitter.at(r)
        return results[r][0] >= floor

    if fixed:
        chosen: int | None = ranks[0]
        meets(ranks[0])
    elif not meets(ranks[-1]):
        chosen = None
    else:
        # The bases are nested, so the error falls with r: bisect for the smallest rank meeting the floor
        # (3 evaluations instead of up to 8 for a 3x3 kernel; the largest rank was tried first so a layer
        # that cannot meet the floor costs one).
        lo, hi = 0, len(ranks) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if meets(ranks[mid]) else (mid + 1, hi)
        chosen = ranks[lo]
    if chosen is None:
        best = results[ranks[-1]][0]
        return {**d, "decision": "kept", "best_sqnr_db": best, "error_on": fitter.error_on,
                "reason": (f"no rank below break-even {break_even:.2f} meets {floor:g} dB "
                           f"(best {best:.1f} dB at r={ranks[-1]})")}
    r = chosen
    sqnr, sqnr_svd, weights, method = results[r]
    mac_note = f"MACs x{r * (k + cout) / (cout * k):.2f} (pays only when r < {break_even:.2f})"
    return {**d, "decision": "replaced", "rank": r, "method": method, "sqnr_db": sqnr, "sqnr_svd_db": sqnr_svd,
            "macs_after": cin * r * (k + cout) * hw if hw else None, "error_on": fitter.error_on,
            "reason": (f"fixed rank {r}: " if fixed else f"smallest rank meeting {floor:g} dB: ") + mac_note,
            "_weights": weights}


class _Fitter:
    """Errors and weights of rank-r pairs from two nested bases, each with and without the refit.

    "svd": depthwise filters V_i of M_i (the weights alone). "whitened" (calibration data only): the SVD of
    M_i L_i with C_i = L_i L_i^T the covariance of channel i's input patches, filters V_i^T L_i^{-1};
    it minimises E||(M_i - A_i B_i) x_i||^2 per channel, i.e. the error on real inputs rather than on
    weights (Zhang et al. 2015, "Efficient and accurate approximations of nonlinear convolutional
    networks"). The candidate with the best held-out SQNR wins at each rank.
    """

    def __init__(self, layer: _Layer, refit: bool, whiten: bool) -> None:
        w = layer.weight.astype(np.float64)
        self.layer = layer
        self.cout, self.cin = w.shape[:2]
        mats = w.reshape(self.cout, self.cin, -1).transpose(1, 0, 2)  # [Cin, Cout, K]: M_i
        u, s, vt = np.linalg.svd(mats, full_matrices=False)
        self.full = vt.shape[1]
        self.s2 = s**2
        # basis name -> (depthwise filters [Cin, R, K], pointwise weights [Cout, Cin, R])
        self.bases: dict[str, tuple[np.ndarray, np.ndarray]] = {"svd": (vt, (u * s[:, None, :]).transpose(1, 0, 2))}
        self.data = layer.fit is not None and layer.test is not None and len(layer.test) > 0 and len(layer.fit) > 0
        self.refit = refit and self.data
        self.error_on = "held-out layer outputs" if self.data else "weights"
        if not self.data:
            return
        fit, test = layer.fit, layer.test
        assert fit is not None and test is not None
        b = layer.bias.astype(np.float64).reshape(-1) if layer.bias is not None else np.zeros(self.cout)
        wmat = w.reshape(self.cout, -1).T.astype(np.float32)
        self.y_test = test.reshape(len(test), -1) @ wmat
        self.signal = float(np.sum((self.y_test.astype(np.float64) + b) ** 2))
        self.y_fit = fit.reshape(len(fit), -1) @ wmat
        self._gram: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        if whiten:
            self._add_whitened(mats, fit)
        self.z_test = {n: _depthwise_outputs(test, f) for n, (f, _) in self.bases.items()}
        self.z_fit = {n: _depthwise_outputs(fit, f) for n, (f, _) in self.bases.items()}

    def _add_whitened(self, mats: np.ndarray, fit: np.ndarray) -> None:
        k = mats.shape[2]
        cov = np.matmul(fit.transpose(1, 2, 0), fit.transpose(1, 0, 2)).astype(np.float64) / len(fit)
        # Dead channels (all-zero patches) have a singular covariance; the jitter keeps Cholesky defined.
        jitter = 1e-6 * np.trace(cov, axis1=1, axis2=2)[:, None, None] / k + 1e-12
        chol = np.linalg.cholesky(cov + jitter * np.eye(k))
        uw, sw, vtw = np.linalg.svd(mats @ chol, full_matrices=False)
        filters = np.linalg.solve(chol.transpose(0, 2, 1), vtw.transpose(0, 2, 1)).transpose(0, 2, 1)
        self.bases["whitened"] = (filters, (uw * sw[:, None, :]).transpose(1, 0, 2))

    def _sqnr_test(self, basis: str, pw: np.ndarray, r: int) -> float:
        z = self.z_test[basis][:, :, :r].reshape(len(self.y_test), -1)
        approx = z @ pw.reshape(self.cout, -1).T.astype(np.float32)
        noise = float(np.sum((approx.astype(np.float64) - self.y_test) ** 2))
        return math.inf if noise == 0 else 10 * math.log10(self.signal / noise)

    def _refit(self, basis: str, r: int) -> np.ndarray:
        """Pointwise weights [Cout, Cin, r] minimising ||z W^T - y||^2 on the fit patches."""
        if basis not in self._gram:
            # One Gram over all R components per basis; rank r is its (i, j < r) sub-block.
            z = self.z_fit[basis].reshape(len(self.y_fit), -1)
            self._gram[basis] = ((z.T @ z).astype(np.float64), (z.T @ self.y_fit).astype(np.float64))
        gram, rhs = self._gram[basis]
        idx = (np.arange(self.cin)[:, None] * self.full + np.arange(r)[None, :]).reshape(-1)
        g = gram[np.ix_(idx, idx)]
        # A small ridge keeps the normal equations solvable when channels are dead (all-zero inputs).
        g[np.diag_indices_from(g)] += 1e-5 * np.trace(g) / len(g) + 1e-12
        return np.linalg.solve(g, rhs[idx]).T.reshape(self.cout, self.cin, r)

    def at(self, r: int) -> tuple[float, float, tuple[np.ndarray, np.ndarray], str]:
        """(sqnr, sqnr of plain SVD, (depthwise [Cin*r,1,kh,kw], pointwise [Cout,Cin*r,1,1]), method)."""
        filters, pw = self.bases["svd"][0][:, :r], self.bases["svd"][1][:, :, :r]
        if r >= self.full:  # exact: nothing to refit
            return math.inf, math.inf, self._weights(filters, pw, r), "svd"
        if not self.data:
            discarded = float(self.s2[:, r:].sum())
            sqnr = math.inf if discarded == 0 else 10 * math.log10(float(self.s2.sum()) / discarded)
            return sqnr, sqnr, self._weights(filters, pw, r), "svd"
        sqnr_svd = self._sqnr_test("svd", pw, r)
        best = (sqnr_svd, "svd", filters, pw)
        for basis, (f, p) in self.bases.items():
            candidates = [("", p[:, :, :r])] if basis != "svd" else []
            if self.refit:
                candidates.append(("+refit", self._refit(basis, r)))
            for suffix, weights in candidates:
                sqnr = self._sqnr_test(basis, weights, r)
                if sqnr > best[0]:
                    best = (sqnr, basis + suffix, f[:, :r], weights)
        return best[0], sqnr_svd, self._weights(best[2], best[3], r), best[1]

    def _weights(self, filters: np.ndarray, pw: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray]:
        dtype = self.layer.weight.dtype
        kh, kw = self.layer.kernel
        dw = np.ascontiguousarray(filters).reshape(self.cin * r, 1, kh, kw).astype(dtype)
        return dw, np.ascontiguousarray(pw).reshape(self.cout, self.cin * r, 1, 1).astype(dtype)


def _depthwise_outputs(patches: np.ndarray, filters: np.ndarray) -> np.ndarray:
    """z[p, i, j] = filters[i, j] . patches[p, i]: [P, Cin, R] (a batched matmul; einsum is 4x slower)."""
    z = np.matmul(patches.transpose(1, 0, 2), filters.astype(np.float32).transpose(0, 2, 1))
    return np.ascontiguousarray(z.transpose(1, 0, 2))


# --------------------------------------------------------------------------------------------- rewriting
def _rewrite(graph: ir.Graph, layer: _Layer, weights: tuple[np.ndarray, np.ndarray]) -> None:
    """Insert the depthwise conv before the original node and turn the original into the pointwise one.

    Reusing the node keeps its name, output value (and graph-output name) and bias input in place.
    """
    conv = layer.node
    dw_w, pw_w = weights
    label = _label(conv)
    names = NameSource(graph)
    dw_value = add_initializer(graph, dw_w, f"{label}_dw_weight", names)
    geometry = {k: a.value for k, a in conv.attributes.items()
                if k in ("kernel_shape", "strides", "pads", "dilations", "auto_pad")}
    dw = ir.node("Conv", [conv.inputs[0], dw_value], attributes={**geometry, "group": layer.cin},
                 name=names(f"{label}_dw"))
    dw.outputs[0].name = names(f"{label}_dw_out")
    graph.insert_before(conv, dw)
    conv.replace_input_with(0, dw.outputs[0])
    set_input_const(conv, 1, pw_w, name=f"{label}_pw_weight")
    for key in ("strides", "pads", "dilations", "auto_pad"):
        conv.attributes.pop(key, None)
    conv.attributes["kernel_shape"] = ir.AttrInt64s("kernel_shape", [1, 1])
    conv.attributes.pop("group", None)
