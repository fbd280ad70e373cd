"""Replace standard KxK convolutions by depthwise-separable pairs within a per-layer error budget.   lossy

A Conv with weight W[o, i, kh, kw] (group 1) computes y[o] = sum_i M_i x_i, where M_i = W[:, i] reshaped
to (Cout, K) with K = kh*kw and x_i is input channel i's K-patch. The rank-r truncated SVD
M_i ~= U_i[:, :r] S_i[:r] V_i[:r] turns the conv into
    depthwise Conv(group=Cin, Cin*r outputs, filters V_i[j], same kernel/stride/pad/dilation)
    -> pointwise 1x1 Conv (Cout outputs, weights U_i S_i, the original bias),
the decomposition of Jaderberg et al. 2014 / Zhang et al. 2015 applied per input channel. Full rank,
r = min(Cout, K), reproduces the conv exactly: any rank >= K (9 for 3x3; 49 also covers 7x7) means full rank.

With calibration data, better fits are tried and kept only when they lower the error on feeds they were
not fit on (``depthwise_fit.py``): a least-squares refit of the pointwise weights, a whitened SVD, and
alternating least squares on the layer's real input covariance with a bias correction ("als").

MACs per output position: Cin*Cout*K before, Cin*r*K + Cin*r*Cout after, so a replacement pays only when
r < Cout*K / (K + Cout) (the break-even rank: 7.9 for a 3x3 conv with 64 outputs, 6.5 with 24). In
automatic mode (rank 0 / unset) each layer gets the smallest r below break-even whose output SQNR meets
``max_error``, or is kept. A fixed ``rank`` is applied to every selected layer whatever its MACs and error
(both reported; a warning when below the floor). The error is the SQNR of the layer's own output (bias
included) against the original conv, on input patches gathered with ONNX Runtime from real calibration
feeds (fit on the even feeds, measured on the odd ones); without data it is measured on the weights.
With ``latency`` each replacement is also timed against the conv in the target's runtime (LiteRT/XNNPACK
for tflite targets, ONNX Runtime otherwise) at the layer's real shape (``depthwise_latency.py``) and kept
only when the pair is faster. The model's end-to-end output drift on held-out calibration feeds is then
measured and recorded; with ``min_sqnr`` (dB) the pairs are accepted greedily by gain while the outputs stay
above it (``depthwise_budget.py``). When no layer pays, the model is left unchanged and the record says so.
Grouped convs (group > 1, depthwise included) are refused with the reason; 1x1 convs are skipped.
"""

from __future__ import annotations

from typing import Any

import onnx_ir as ir

from edgec import metrics
from edgec.errors import EdgecError
from edgec.graph import infer_shapes, nodes_of
from edgec.pass_infra import Pass, PassContext, register

from .depthwise_budget import EndToEnd, drift_record, whole_model_ratio, within_budget
from .depthwise_fit import Fit, Fitter
from .depthwise_latency import time_pair
from .depthwise_layers import Layer, gather_patches, label, match, pick_feeds, rewrite, selected

# dB per layer. 30 dB (99.9 % of the layer's output energy) is not reachable below break-even for most
# trained 3x3 convs (issue 23, measured); 25 dB is, and the end-to-end budget (min_sqnr) bounds the sum.
DEFAULT_MAX_ERROR = 25.0


@register("depthwise", exact=False)
class SeparateDepthwise(Pass):
    """Turn KxK convolutions into depthwise + pointwise pairs (per-channel SVD), within an SQNR floor."""

    add_after = "cleanup"  # where --add inserts it in a target's pipeline

    #: depthwise channel multiplier for every selected layer; None: --dw-rank, else chosen per layer
    rank: int | None = None
    #: per-layer output SQNR floor in dB; None: --dw-max-error, else 25
    max_error: float | None = None
    #: only layers with at least this fraction of the model's MACs; None: --dw-min-macs, else 0
    min_macs: float | None = None
    #: fnmatch patterns on node (or output) names; None: --dw-layers, else all convs
    layers: tuple[str, ...] | None = None
    #: least-squares refit of the pointwise weights on calibration data
    refit: bool = True
    #: also try depthwise filters from the input-covariance-weighted SVD (calibration data only)
    whiten: bool = True
    #: alternating least-squares rounds on the real input covariance (0: off; calibration data only)
    als_rounds: int = 2
    #: keep a replacement only if the target runtime runs the pair faster; None: --dw-latency, else off
    latency: bool | None = None
    #: end-to-end output SQNR budget in dB on held-out calibration feeds; None: --dw-min-sqnr, else no budget
    min_sqnr: float | None = None
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
        layers: list[Layer] = []
        position = {id(conv): i for i, conv in enumerate(nodes_of(model.graph, "Conv"))}
        for conv in nodes_of(model.graph, "Conv"):
            layer, reason = match(conv)
            if layer is None:
                decisions[position[id(conv)]] = {"node": label(conv), "reason": reason,
                                                 "decision": "refused" if "group" in reason else "skipped"}
            elif settings["layers"] and not selected(conv, settings["layers"]):
                decisions[position[id(conv)]] = {"node": label(conv), "decision": "skipped",
                                                 "reason": "not matched by the layer patterns"}
            else:
                layers.append(layer)
        full_rank = bool(settings["rank"]) and all(settings["rank"] >= la.full_rank for la in layers)
        # Full rank is exact: nothing to measure, unless latency needs the layers' real input shapes.
        feeds = [] if full_rank and not settings["latency"] else pick_feeds(ctx, self.max_feeds)
        error_on = "none: full rank is exact" if full_rank else "weights (no calibration data)"
        if feeds and layers:
            gather_patches(model, layers, feeds)
            if not full_rank:
                error_on = ("layer outputs on held-out calibration feeds" if len(feeds) > 1
                            else "layer outputs on held-out positions of the single calibration feed")
        ctx.details["error_on"] = error_on
        total = metrics.count_macs(ir.serde.serialize_model(model))
        candidates: list[tuple[Layer, dict[str, Any], Fit]] = []
        for layer in layers:
            d, fit = self._decide(layer, settings, total)
            if fit is not None and settings["latency"]:
                d, fit = _check_latency(layer, d, fit, ctx)
            decisions[position[id(layer.node)]] = d
            if fit is not None:
                if settings["rank"] and d["sqnr_db"] < settings["max_error"]:
                    ctx.warn(f"depthwise: '{d['node']}' at fixed rank {d['rank']} has {d['sqnr_db']:.1f} dB, "
                             f"below the {settings['max_error']:g} dB floor")
                candidates.append((layer, d, fit))
        replaced = self._end_to_end(model, candidates, feeds, settings, decisions, position, ctx)
        if settings["latency"] and replaced and feeds:
            replaced = _whole_model_check(model, replaced, feeds[0], decisions, position, ctx)
        for layer, _, fit in replaced:
            rewrite(model.graph, layer, fit.dw, fit.pw, fit.bias)
        self._exact = all(d["rank"] >= d["full_rank"] and d["method"] == "svd" for _, d, _ in replaced)
        before = sum(d["macs_before"] or 0 for _, d, _ in replaced)
        after = sum(d["macs_after"] or 0 for _, d, _ in replaced)
        ctx.details["layers"] = [decisions[i] for i in sorted(decisions)]
        ctx.details["replaced"] = len(replaced)
        ctx.details["macs_replaced_before"] = before
        ctx.details["macs_replaced_after"] = after
        ctx.details["macs_reduction"] = 1 - after / before if before else 0.0
        ctx.details["model_macs_before"] = total
        ctx.details["summary"] = _summary(replaced, layers, settings, ctx)
        if not replaced:
            ctx.warn(ctx.details["summary"])
        return bool(replaced)

    def _settings(self, ctx: PassContext) -> dict[str, Any]:
        """The fields (edgec.settings fills unset ones from the user's --dw-* flags), then the defaults."""

        def pick(value: Any, default: Any) -> Any:
            return value if value is not None else default

        rank = int(pick(self.rank, 0))
        max_error = float(pick(self.max_error, DEFAULT_MAX_ERROR))
        min_macs = float(pick(self.min_macs, 0.0))
        patterns = pick(self.layers, ())
        if isinstance(patterns, str):
            patterns = [p for p in patterns.replace("+", ",").split(",") if p]
        if rank < 0:
            raise EdgecError(f"depthwise: rank must be >= 1 (or 0 to choose per layer), got {rank}")
        if not 0.0 <= min_macs <= 1.0:
            raise EdgecError(f"depthwise: min_macs is a fraction of the model's MACs in [0, 1], got {min_macs:g}",
                             hint="e.g. --dw-min-macs 0.02 for layers with at least 2 % of the MACs")
        budget = pick(self.min_sqnr, None)
        return {"rank": rank, "max_error": max_error, "min_macs": min_macs, "layers": list(patterns),
                "latency": bool(pick(self.latency, False)),
                "min_sqnr": None if budget is None else float(budget)}

    def _end_to_end(self, model: ir.Model, candidates: list[tuple[Layer, dict[str, Any], Fit]],
                    feeds: list[Any], settings: dict[str, Any], decisions: dict[int, dict[str, Any]],
                    position: dict[int, int], ctx: PassContext) -> list[tuple[Layer, dict[str, Any], Fit]]:
        """The candidates the end-to-end budget keeps (all without one); records the model's output drift.

        The drift is measured on the feeds the fits were not made on (the odd ones; the only one if one)."""
        budget = settings["min_sqnr"]
        held = (feeds[1::2] if len(feeds) > 1 else feeds)[:8]
        if not candidates or not held:
            exact = all(d["rank"] >= d["full_rank"] for _, d, _ in candidates)
            if candidates and budget is not None and not exact:
                raise EdgecError("depthwise: min_sqnr needs calibration data to measure the model's outputs",
                                 hint="pass --calib DIR|FILE.npz, or drop --dw-min-sqnr")
            ctx.details["end_to_end"] = None
            return candidates
        e2e = EndToEnd(model, held)
        kept, rejected, drift = within_budget(e2e, candidates, budget)
        for (layer, d, _), sqnr in rejected:
            decisions[position[id(layer.node)]] = {
                **d, "decision": "kept", "macs_after": None, "budget_rejected": True,
                "reason": d["reason"] + f"; end-to-end budget: with it the outputs fall to {sqnr:.1f} dB < "
                                        f"min_sqnr {budget:g} dB"}
        record = drift_record(drift, len(held)) or {}
        ctx.details["end_to_end"] = {**record, "min_sqnr": budget, "evaluations": e2e.evaluations,
                                     "on": "model outputs on held-out calibration feeds vs the model before the pass"}
        return kept

    def _decide(self, layer: Layer, settings: dict[str, Any], total_macs: int) -> tuple[dict[str, Any], Fit | None]:
        """The layer's decision record, and the fit to apply (None: the conv stays)."""
        cout, cin = layer.cout, layer.cin
        k = layer.kernel[0] * layer.kernel[1]
        full = min(cout, k)
        break_even = cout * k / (k + cout)
        hw = layer.out_hw[0] * layer.out_hw[1] if layer.out_hw else None
        macs_old = cin * cout * k * hw if hw else None
        d: dict[str, Any] = {"node": label(layer.node), "kernel": list(layer.kernel), "cin": cin, "cout": cout,
                             "strides": list(layer.strides), "dilations": list(layer.dilations),
                             "full_rank": full, "break_even_rank": round(break_even, 2), "macs_before": macs_old,
                             "mac_share": macs_old / total_macs if macs_old and total_macs else None}
        if settings["min_macs"] > 0:
            if d["mac_share"] is None:
                return {**d, "decision": "kept",
                        "reason": "MAC share unknown (dynamic shape): pin shapes with --shape"}, None
            if d["mac_share"] < settings["min_macs"]:
                return {**d, "decision": "kept", "reason": (f"{100 * d['mac_share']:.2f} % of the MACs < "
                                                            f"min_macs {100 * settings['min_macs']:g} %")}, None
        fixed = settings["rank"]
        ranks = [min(fixed, full)] if fixed else [r for r in range(1, full + 1) if r < break_even]
        if not ranks:
            return {**d, "decision": "kept",
                    "reason": f"break-even rank {break_even:.2f} < 1: no depthwise pair has fewer MACs"}, None
        fitter = Fitter(layer, self.refit, self.whiten, self.als_rounds)
        floor = settings["max_error"]
        results: dict[int, Fit] = {}

        def meets(r: int) -> bool:
            results[r] = results.get(r) or fitter.at(r)
            return results[r].sqnr_db >= floor

        if fixed:
            chosen: int | None = ranks[0]
            meets(ranks[0])
        elif not meets(ranks[-1]):
            chosen = None
        else:
            # The error falls with r: bisect for the smallest rank meeting the floor (3 evaluations instead
            # of up to 8 for a 3x3 kernel; the largest rank was tried first so a layer that cannot meet the
            # floor costs one).
            lo, hi = 0, len(ranks) - 1
            while lo < hi:
                mid = (lo + hi) // 2
                lo, hi = (lo, mid) if meets(ranks[mid]) else (mid + 1, hi)
            chosen = ranks[lo]
        if chosen is None:
            best = results[ranks[-1]].sqnr_db
            return {**d, "decision": "kept", "best_sqnr_db": best, "error_on": fitter.error_on,
                    "reason": (f"no rank below break-even {break_even:.2f} meets {floor:g} dB "
                               f"(best {best:.1f} dB at r={ranks[-1]})")}, None
        r, fit = chosen, results[chosen]
        mac_note = f"MACs x{r * (k + cout) / (cout * k):.2f} (pays only when r < {break_even:.2f})"
        return {**d, "decision": "replaced", "rank": r, "method": fit.method, "sqnr_db": fit.sqnr_db,
                "sqnr_svd_db": fit.sqnr_svd_db, "macs_after": cin * r * (k + cout) * hw if hw else None,
                "error_on": fitter.error_on,
                "reason": (f"fixed rank {r}: " if fixed else f"smallest rank meeting {floor:g} dB: ") + mac_note}, fit


def _whole_model_check(model: ir.Model, replaced: list[Any], feed: Any, decisions: dict[int, dict[str, Any]],
                       position: dict[int, int], ctx: PassContext) -> list[Any]:
    """Latency mode, after the per-pair checks: keep the pairs only if the whole model runs faster with them in
    the target's runtime (both measurements agree), else none, each layer saying why."""
    rt = ctx.layer_runtime
    try:
        ratios = whole_model_ratio(model, replaced, feed, ctx.layer_timer)
    except Exception as exc:  # noqa: BLE001  e.g. a graph the runtime cannot load before legalization
        ctx.details["whole_model_latency"] = {"runtime": rt, "error": str(exc).splitlines()[0][:200]}
        ctx.warn(f"depthwise: whole-model timing in {rt} not possible ({type(exc).__name__}); kept the "
                 "per-pair decisions")
        return replaced
    ratio = max(ratios)
    ctx.details["whole_model_latency"] = {"runtime": rt, "ratio": ratio, "ratios": ratios}
    if ratio < 1.0:
        return replaced
    ctx.details["end_to_end"] = None  # nothing applied: no drift
    for layer, d, _ in replaced:
        decisions[position[id(layer.node)]] = {
            **d, "decision": "kept", "macs_after": None, "whole_model_rejected": True,
            "reason": d["reason"] + f"; but the whole model runs x{ratio:.3f} in {rt} with the "
                                    f"{len(replaced)} pairs (measured {', '.join(f'x{r:.3f}' for r in ratios)})"}
    return []


def _summary(replaced: list[Any], layers: list[Layer], settings: dict[str, Any], ctx: PassContext) -> str:
    """One line for the record and, when nothing changed, the warnings: what was replaced, or why nothing."""
    e2e = ctx.details.get("end_to_end") or {}
    if replaced:
        out = (f"depthwise: {len(replaced)} of {len(layers)} eligible convs replaced "
               f"(MACs of those x{1 - ctx.details.get('macs_reduction', 0.0):.2f})")
        if e2e:
            sq = "bit-exact" if e2e.get("exact") else f"{e2e['sqnr_db']:.1f} dB SQNR"
            out += f"; end-to-end outputs {sq}, cosine {e2e['cosine']:.4f} on {e2e['feeds']} held-out feeds"
        return out
    if not layers:
        return "depthwise: no eligible conv (2-D, group 1, KxK, constant weights): model unchanged"
    rows = [d for d in ctx.details.get("layers", []) if d.get("decision") == "kept"]
    whole = sum(1 for d in rows if d.get("whole_model_rejected"))
    slower = sum(1 for d in rows if d.get("latency") and not d.get("budget_rejected")) - whole
    budget = sum(1 for d in rows if d.get("budget_rejected"))
    why = [f"{len(rows) - slower - budget - whole} miss the {settings['max_error']:g} dB floor below break-even"]
    if settings["latency"]:
        why.append(f"{slower} meet it but {ctx.layer_runtime} runs the pair slower")
    if whole:
        ratio = (ctx.details.get("whole_model_latency") or {}).get("ratio", 0.0)
        why.append(f"{whole} pairs faster alone, but the whole model runs x{ratio:.3f} with them")
    if settings["min_sqnr"] is not None:
        why.append(f"{budget} would take the outputs below min_sqnr {settings['min_sqnr']:g} dB")
    return f"depthwise: no layer pays (of {len(layers)} eligible convs: {'; '.join(why)}): model unchanged"


def _check_latency(layer: Layer, d: dict[str, Any], fit: Fit, ctx: PassContext) -> tuple[dict[str, Any], Fit | None]:
    """Latency mode: time the conv and the pair at the layer's real shape in the target's runtime (LiteRT for
    tflite targets, ONNX Runtime otherwise); keep the conv unless the pair wins."""
    if not layer.extra.get("input_shape"):
        return {**d, "latency": None, "reason": d["reason"] + "; latency not measured (no calibration data)"}, fit
    rt = ctx.layer_runtime
    timing = {**time_pair(layer, fit.dw, fit.pw, timer=ctx.layer_timer), "runtime": rt}
    d = {**d, "latency": timing}
    if timing["ratio"] < 1.0:
        return {**d, "reason": d["reason"] + f"; {rt}: pair x{timing['ratio']:.2f} of the conv's time"}, fit
    return {**d, "decision": "kept", "macs_after": None,
            "reason": (f"rank {d['rank']} meets the floor but {rt} runs the pair x{timing['ratio']:.2f} slower "
                       f"({timing['pair_ms']:.3f} vs {timing['conv_ms']:.3f} ms) at input "
                       f"{layer.extra['input_shape']}")}, None
