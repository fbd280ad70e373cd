"""The ``quantize`` pass: calibrate once, then insert QuantizeLinear/DequantizeLinear pairs.   lossy

Weights: int8, symmetric, per output channel (axis: Conv 0, ConvTranspose 1, Gemm 0 if transB else 1,
MatMul 1), stored as int8 initializers read through a DequantizeLinear, so the file shrinks ~4x. The
weight width is the target's (scheme ``weight_bits``: 7 on the portable ORT x86 target, where MLAS without
VNNI saturates int16 sums; 8 elsewhere), never the compiling machine's: the same inputs give the same bytes.
Bias (scheme bias=int32): int32 with scale = s_in * s_w per channel, zero point 0, which is exactly what
ONNX Runtime's QLinearConv/QGemm fusions expect; optionally bias-corrected for the expected shift the
weight rounding causes (Nagel et al. 2019), from per-channel input means collected in the same pass.
Activations: per tensor, uint8 asymmetric or int8 (a)symmetric, range from the streaming calibration
statistics (edgec.calib). ``method=auto`` (default) builds the model with percentile / minmax ranges,
with and without bias correction, from the same statistics and keeps the best output SQNR on the sample
inputs (``mean_minmax``, NNCF's default range, is a method of its own: see _choose_config for why auto
leaves it out). ``--set adaround=true`` then learns each
weight's rounding layer by layer (adaround.py, Nagel et al. 2020). Placement
(edgec.passes.quantize.placement) follows the target runtime's fusion rules; for ORT, HardSwish/HardSigmoid
are first rewritten into int8-runnable ops (decompose.py).

Selective fallback (``fallback`` parameter / option): ``auto`` times variants in ONNX Runtime (nothing
float; depthwise convs float; SE-block convs float; both; HardSwish-bound ops float) against fp32 and
keeps the fastest, or fp32 itself when int8 is slower everywhere; the named modes force one variant;
``first``/``last`` keep the first/last weighted op float.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from edgec import calib, model_io, runtime
from edgec.context import CalibStats
from edgec.errors import EdgecError
from edgec.graph import NameSource, add_initializer, const_array, infer_shapes, nodes_of
from edgec.pass_infra import Pass, PassContext, register
from edgec.passes.quantize.decompose import decompose_hard_activations
from edgec.passes.quantize.placement import WEIGHTED, Placement, place, with_activations
from edgec.passes.quantize.scheme import QuantScheme

INT32_MAX = 2**31 - 1
MS_DOMAIN = "com.microsoft"
_WIDE_NP: dict[type[np.integer], type[np.integer]] = {np.uint8: np.uint16, np.int8: np.int16}
_IR_TYPE = {np.uint8: ir.DataType.UINT8, np.int8: ir.DataType.INT8, np.uint16: ir.DataType.UINT16,
            np.int16: ir.DataType.INT16}


def wide_levels(scheme: QuantScheme) -> calib.Levels:
    """The 16-bit grid of an A16W8 tensor, of the scheme's signedness and symmetry."""
    if scheme.act_dtype == "uint8":
        return calib.Levels(0, 65534 if scheme.act_symmetric else 65535, scheme.act_symmetric)
    return calib.Levels(-32767 if scheme.act_symmetric else -32768, 32767, scheme.act_symmetric)


@register("quantize", exact=False)
class Quantize(Pass):
    """Post-training int8 quantization: streaming calibration and Q/DQ placement for the target runtime."""

    min_opset = 13  # per-channel DequantizeLinear (axis) needs opset 13
    method: str = ""  # minmax | percentile | entropy | mse | auto ('' = option calib_method, else auto)
    percentile: float = 99.99
    exclude: list[str] | None = None
    fallback: str = ""  # '' | auto | depthwise | se | hardswish | first | last, '+'-joined
    batch: int = 8
    weight_bits: int = 0  # 8 or 7; 0 = the target scheme's (or --set weight_bits=N)
    #: the pass's own analytic bias correction (Nagel et al. 2019); None: auto, tried both ways on the
    #: samples. Not the bias-correct pass (``--bias-correct``), which measures the shift after quantize.
    analytic_bias_correction: bool | None = None
    share_concat: bool = True  # Concat inputs share the output's range (ORT/TensorRT requantize-free)
    a16: list[str] | None = None  # node names whose tensors take 16-bit activations (A16W8, ORT only)
    int8_hardswish: bool = True  # ORT: decompose HardSwish/HardSigmoid so they run in int8
    adaround: bool = False  # learn each weight's rounding after quantizing (adaround.py)
    layer_sqnr: bool = True  # measure each layer's SQNR for the record (one ORT run per layer)

    def apply(self, model: ir.Model, ctx: PassContext) -> bool:
        overrides: dict[str, Any] = {}
        if ctx.overrides.per_channel is not None:
            overrides["per_channel"] = ctx.overrides.per_channel
        bits_from = "the target's scheme"
        if self.weight_bits:
            overrides["weight_bits"], bits_from = self.weight_bits, "the pass parameter quantize:weight_bits"
        elif ctx.overrides.weight_bits is not None:
            overrides["weight_bits"], bits_from = ctx.overrides.weight_bits, "--set weight_bits"
        scheme = QuantScheme.from_mapping({**(ctx.scheme or {"precision": "int8"}), **overrides})
        method = self.method or "auto"
        if method not in calib.METHODS:
            raise EdgecError(f"unknown calibration method '{method}'", hint=" | ".join(calib.METHODS))
        exclude = list(self.exclude or [])
        exclude = with_activations(model.graph, exclude)
        fallback = _as_list(self.fallback)
        share = self.share_concat
        # A16W8 (mixed precision): these nodes' quantized tensors take 16-bit activations; ORT runs them
        # with com.microsoft Q/DQ (uint16/int16), the other runtimes' converters would not read them.
        wide = list(self.a16 or []) if scheme.placement == "ort" else []
        bits = scheme.weight_bits
        infer_shapes(model)
        _name_values(model.graph)
        inner = sum(1 for _ in model.graph.all_nodes()) - len(model.graph)
        if inner:  # placement and calibration see the main graph only
            ctx.details["float_in_subgraphs"] = inner
            ctx.warn(f"{inner} nodes inside If/Loop/Scan bodies stay float (quantize rewrites the main graph only)")
        # The float model as it would ship (HardSwish still one op): what int8 must beat in speed. The
        # decomposed form below is slower in float (PP-LCNet 8.7 vs 4.8 ms) and would flatter int8.
        shipped = model_io.to_bytes(model) if ctx.samples else None
        if shipped is not None:
            ctx.shipped_float = shipped
        decompose = scheme.placement == "ort" and self.int8_hardswish and "HardSwish" not in exclude
        if fallback == ["auto"]:
            trial = model_io.from_proto(onnx.ModelProto.FromString(shipped)) if shipped is not None else model
            if decompose and shipped is not None:
                decompose_hard_activations(trial.graph, exclude)
            fallback = self._measure_fallback(trial, ctx, scheme, exclude, share, method, bits, shipped)
            if fallback == ["fp32"]:
                return False  # the model is untouched: the decomposition has not been applied to it
        decomposed = decompose_hard_activations(model.graph, exclude) if decompose else 0
        if decomposed:
            ctx.details["hard_activations_decomposed"] = decomposed
        exclude += fallback_exclusions(model.graph, fallback)
        plan = place(model.graph, scheme, exclude, share_concat=share, wide=wide)
        if not plan.nodes and not plan.tensors:
            ctx.details["skipped"] = plan.skipped
            return False
        # ``minmax`` needs no histograms: min/max only, as ONNX Runtime's MinMax calibrator keeps.
        stats = calibrate(model, [t.name or "" for t in plan.tensors], ctx, self.batch,
                          histogram=method not in ("minmax", "mean_minmax"))
        # The float model the int8 one is measured against: the shipped bytes unless HardSwish was decomposed.
        before = (model_io.to_bytes(model) if decomposed else shipped) if ctx.samples else None
        # None: auto. (With --bias-correct the driver sets it False: that pass measures the shift itself,
        # correcting here too would subtract it twice.)
        bc_opt = self.analytic_bias_correction
        if before is not None:
            ctx.float_reference = before  # read by bias-correct (passes/bias_correct.py) and adaround
        if method == "auto" and before is not None:
            (method, bc), scores = self._choose_config(before, ctx, scheme, exclude, share, stats, bits, bc_opt,
                                                       wide)
            ctx.details["auto_scores"] = scores
        else:
            method = "percentile" if method == "auto" else method
            bc = bc_opt is not False
        params = activation_params(plan, stats, scheme, method, self.percentile)
        rows = insert_qdq(model, plan, params, scheme, bits, stats if bc else None)
        ctx.quantized_weight_bits = bits  # read by the adaround pass
        if self.adaround and before is not None:
            from edgec.passes.quantize.adaround import AdaRound, adaround, head, warn_if_few

            cfg = AdaRound()
            feeds = head(ctx.calibration_feeds(), cfg.samples)
            warn_if_few(ctx, len(feeds))
            ctx.details["adaround"] = adaround(model, model_io.from_proto(onnx.ModelProto.FromString(before)),
                                               feeds, bits, cfg)
        ctx.details["bias_correction"] = bc
        ctx.details["weight_bits"] = bits
        ctx.details["weight_bits_why"] = f"{bits}-bit weights from {bits_from}: " + (
            "portable for ONNX Runtime on any x86 (MLAS without VNNI sums u8*s8 pairs in a saturating int16); "
            "use --target cpu-int8-vnni or --set weight_bits=8 where the deployment CPU has VNNI/AMX or ARM dot products"
            if bits == 7 else "the full int8 range (the runtime accumulates in int32)")
        if before is not None and self.layer_sqnr:
            rows = _with_measured_sqnr(rows, before, model, ctx)
        ctx.details["method"] = method
        ctx.details["placement"] = scheme.placement
        ctx.details["layers"] = rows
        ctx.details["skipped"] = plan.skipped
        ctx.details["calibration"] = ctx.calibration.info if ctx.calibration is not None else {}
        return True

    def _choose_config(self, before: bytes, ctx: PassContext, scheme: QuantScheme, exclude: list[str], share: bool,
                       stats: dict[str, calib.TensorStats], bits: int, bc_opt: Any, wide: Sequence[str] = ()
                       ) -> tuple[tuple[str, bool], dict[str, float]]:
        """--calib-method auto: build the model with each range rule (and with/without bias correction)
        from the SAME statistics and keep the one whose outputs have the best SQNR on the sample inputs.

        Per-tensor rules alone mislead: the MSE-optimal clip of each tensor (best SQNR of that tensor)
        cost PP-LCNet 20 dB at the output against percentile ranges; bias correction gains 6 dB on
        MobileNetV2 and digits and loses 7 dB on PP-LCNet.
        """
        from edgec import metrics, runtime

        # Per-tensor MSE ("auto" in edgec.calib) scored best on PP-LCNet's calibration samples and worst on
        # held-out images (tight clips overfit): only the generalising rules compete here.
        # mean_minmax (NNCF's default) is NOT a candidate: judged on these calibration samples it won on
        # PP-LCNet text (59.5 dB vs percentile's 55.2) and then lost 6.8 dB on held-aside images (35.8 vs
        # 42.6); on held-aside PP-LCNet photos it gives 10.8 dB against percentile's 14.7. It stays a
        # --calib-method of its own.
        configs = [("percentile", True), ("percentile", False), ("minmax", True)]
        if bc_opt is not None:
            configs = list(dict.fromkeys((m, bool(bc_opt)) for m, _ in configs))
        feeds = ctx.samples[:4]
        known = ctx.entering_outputs  # the manager ran the float model on these already
        ref = known[:len(feeds)] if known is not None and len(known) >= len(feeds) else \
            runtime.run(runtime.session(before, optimization="basic"), feeds)
        scores: dict[str, float] = {}
        for m, bc in configs:
            cand = model_io.from_proto(onnx.ModelProto.FromString(before))
            plan = place(cand.graph, scheme, exclude, share_concat=share, wide=wide)
            insert_qdq(cand, plan, activation_params(plan, stats, scheme, m, self.percentile), scheme, bits,
                       stats if bc else None)
            out = runtime.run(runtime.session(model_io.to_bytes(cand), optimization="basic"), feeds)
            scores[f"{m}{'+bias_correction' if bc else ''}"] = round(metrics.drift(ref, out).sqnr_db, 2)
        best = max(configs, key=lambda c: scores[f"{c[0]}{'+bias_correction' if c[1] else ''}"])
        return best, scores

    def _measure_fallback(self, model: ir.Model, ctx: PassContext, scheme: QuantScheme, exclude: list[str],
                          share: bool, method: str, bits: int, fp32: bytes | None = None) -> list[str]:
        """--fallback auto: build each candidate, time it in ONNX Runtime against fp32, keep the fastest.

        Candidates leave float: nothing; depthwise convs; SE-block convs; both; HardSwish-bound ops.
        "fp32" (no quantization at all) wins only if every int8 variant is slower than the float model.
        """
        from edgec.quant_report import fastest

        if not ctx.samples:
            ctx.warn("quantize --fallback auto needs sample inputs to time variants; using no fallback")
            return []
        base = model_io.to_bytes(model)
        candidates = {"none": [], "depthwise": ["depthwise"], "se": ["se"], "depthwise+se": ["depthwise", "se"],
                      "hardswish": ["hardswish"]}
        variants: dict[str, bytes] = {"fp32": fp32 or base}
        seen: dict[tuple[str, ...], str] = {}
        plans = {}
        for key, modes in candidates.items():
            m = model_io.from_proto(onnx.ModelProto.FromString(base))
            skip = tuple(sorted(exclude + fallback_exclusions(m.graph, modes)))
            if skip in seen:
                continue  # the same float set as an earlier candidate (e.g. no SE blocks in this model)
            seen[skip] = key
            plan = place(m.graph, scheme, list(skip), share_concat=share)
            if plan.tensors:
                plans[key] = (m, plan)
        names = sorted({t.name or "" for _m, p in plans.values() for t in p.tensors})
        stats = calibrate(model_io.from_proto(onnx.ModelProto.FromString(base)), names, ctx, self.batch,
                          histogram=method not in ("minmax", "mean_minmax"))
        for key, (m, plan) in plans.items():
            rule = "percentile" if method == "auto" else method
            insert_qdq(m, plan, activation_params(plan, stats, scheme, rule, self.percentile), scheme, bits,
                       stats if self.analytic_bias_correction is not False else None)
            variants[key] = model_io.to_bytes(m)
        best, times = fastest(variants, ctx.samples[0])
        int8_best = min((k for k in times if k != "fp32"), key=times.__getitem__, default="fp32")
        ctx.details["fallback"] = {"latency_ms": times, "chosen": best, "fastest_int8": int8_best}
        if best == "fp32":
            ctx.warn(f"quantize: every int8 variant is slower than fp32 here ({times}); --fallback auto kept fp32")
            return ["fp32"]
        return candidates[best]


def _with_measured_sqnr(rows: list[dict[str, Any]], before: bytes, model: ir.Model, ctx: PassContext
                        ) -> list[dict[str, Any]]:
    """Add each activation's SQNR against the float model on the sample inputs; worst first."""
    from edgec.quant_report import layer_sqnr

    try:
        measured = {r["tensor"]: r for r in layer_sqnr(before, model, ctx.samples, limit=4)}
    except Exception as exc:  # noqa: BLE001 - the figures are a report, never a reason to fail the pass
        ctx.warn(f"quantize: per-layer SQNR not measured ({type(exc).__name__}: {str(exc)[:120]})")
        return rows
    for r in rows:
        m = measured.get(r["tensor"])
        if r["kind"] == "activation" and m is not None:
            r["sqnr_db"], r["cosine"] = m["sqnr_db"], m["cosine"]
    ctx.details["outputs"] = [m for m in measured.values() if m.get("is_output")]
    return sorted(rows, key=lambda r: (r.get("sqnr_db") is None, r.get("sqnr_db") or 0.0))


def _as_list(value: Any) -> list[str]:
    if not value:
        return []
    if isinstance(value, str):
        return [p.strip() for p in value.replace("+", ",").split(",") if p.strip()]
    return [str(v) for v in value]


def _name_values(graph: ir.Graph) -> None:
    names = NameSource(graph)
    for node in graph:
        for i, out in enumerate(node.outputs):
            if not out.name:
                out.name = names(f"{node.name or node.op_type}_out{i}")


def fallback_exclusions(graph: ir.Graph, modes: Sequence[str]) -> list[str]:
    """Node names the selective fallback keeps float (see the module docstring)."""
    names: list[str] = []
    weighted = [n for n in graph if n.op_type in WEIGHTED]
    if "first" in modes and weighted:
        names.append(weighted[0].name or "")
    if "last" in modes and weighted:
        names.append(weighted[-1].name or "")
    if "depthwise" in modes:
        names += [n.name or "" for n in nodes_of(graph, "Conv") if _is_depthwise(n)]
    if "se" in modes:
        # Squeeze-and-excitation convs run on a 1x1 map: int8 saves nothing there, the Q/DQ around them costs.
        for n in nodes_of(graph, "Conv"):
            shape = n.inputs[0].shape if n.inputs[0] is not None else None
            if shape is not None and len(shape) == 4 and shape[2] == 1 and shape[3] == 1:
                names.append(n.name or "")
    if "hardswish" in modes:
        for node in nodes_of(graph, "HardSwish", "HardSigmoid"):
            src = node.inputs[0].producer() if node.inputs[0] is not None else None
            if src is not None and src.op_type in (*WEIGHTED, "Add", "Mul"):
                names.append(src.name or "")
            for user in node.outputs[0].consumers():
                if user.op_type in ("Mul", "Add", "GlobalAveragePool"):
                    names.append(user.name or "")
    return [n for n in names if n]


def _is_depthwise(node: ir.Node) -> bool:
    w = const_array(node.inputs[1]) if len(node.inputs) > 1 else None
    group = int(node.attributes["group"].value) if "group" in node.attributes else 1
    return w is not None and group > 1 and w.shape[1] == 1


def calibrate(model: ir.Model, names: list[str], ctx: PassContext, batch: int = 8,
              histogram: bool = True) -> dict[str, calib.TensorStats]:
    """Streaming statistics of ``names`` over the calibration feeds (cached in ctx for later passes)."""
    import time

    key = tuple(sorted(names))
    cached = ctx.calibration
    if cached is not None and cached.tensors == key and (cached.histogram or not histogram):
        return cached.stats
    # Statistics of a superset (the mixed-precision search calibrates the union of its candidates' tensors
    # once): the same numbers, since every tensor is measured on the float model.
    union = ctx.calib_union
    if union is not None and set(names) <= union.keys() and (cached is None or cached.histogram or not histogram):
        return {n: union[n] for n in names}
    feeds = ctx.calibration_feeds()
    if getattr(feeds, "synthetic", False):
        ctx.warn("quantization ranges were calibrated on RANDOM data (--calib random): expect poor accuracy")
    total = len(feeds)
    progress = None
    if ctx.progress is not None:
        def progress(done: int, _total: int) -> None:
            ctx.progress("calibrating", done)  # type: ignore[misc]
    t0 = time.perf_counter()
    wanted = set(names)
    channels = {n.inputs[0].name for n in model.graph if n.op_type in WEIGHTED and n.inputs and n.inputs[0] is not None
                and n.inputs[0].name in wanted}
    stats = calib.collect(model, names, feeds, batch=batch, progress=progress, total=total, channels=channels,
                          histogram=histogram)
    ctx.calibration = CalibStats(key, stats, histogram, {
        "samples": total, "tensors": len(names), "seconds": round(time.perf_counter() - t0, 3),
        "peak_rss_mb": round(runtime.peak_rss_mb(), 1)})
    return stats


def activation_params(plan: Placement, stats: dict[str, calib.TensorStats], scheme: QuantScheme, method: str,
                      percentile: float) -> dict[str, dict[str, Any]]:
    """Per tensor name: lo, hi, scale, zero point, method used and expected SQNR; groups share one range."""
    out: dict[str, dict[str, Any]] = {}
    grouped: dict[str, list[str]] = {}
    for g in plan.groups:
        names = [v.name or "" for v in g]
        for n in names:
            grouped[n] = names
    done: set[str] = set()
    for t in plan.tensors:
        name = t.name or ""
        if name in done:
            continue
        members = grouped.get(name, [name])
        st = stats[members[0]]
        for m in members[1:]:
            st = st.merged(stats[m])
        fixed = next((plan.fixed[m] for m in members if m in plan.fixed), None)
        lv = wide_levels(scheme) if name in plan.wide else scheme.act_levels
        if fixed is not None and name not in plan.wide:
            scale, zp = fixed
            lo, hi, used = (lv.qmin - zp) * scale, (lv.qmax - zp) * scale, "fixed"
        else:
            # 16 bits leave no resolution to buy with clipping: a wide tensor keeps its whole range.
            (lo, hi), used = calib.choose_range(st, "minmax" if name in plan.wide else method, lv, percentile)
            scale, zp = calib.scale_zero_point(lo, hi, lv)
        for m in members:
            own = stats[m]
            out[m] = {"lo": float(lo), "hi": float(hi), "scale": float(scale), "zero_point": int(zp),
                      "method": used, "shared_with": len(members) - 1,
                      "expected_sqnr_db": _round(calib.expected_sqnr(own, lo, hi, lv)),
                      "min": _round(own.min), "max": _round(own.max)}
            done.add(m)
    return out


def _round(x: float) -> float | None:
    return None if not math.isfinite(x) else round(float(x), 4)


# ------------------------------------------------------------------------------------------- insertion
def insert_qdq(model: ir.Model, plan: Placement, params: dict[str, dict[str, Any]], scheme: QuantScheme,
               weight_bits: int = 8, stats: dict[str, calib.TensorStats] | None = None) -> list[dict[str, Any]]:
    graph = model.graph
    names = NameSource(graph)
    act_np = scheme.act_np
    qmax = 2 ** (weight_bits - 1) - 1
    rows: list[dict[str, Any]] = []
    act_scale: dict[int, float] = {}
    # One initializer per distinct scalar scale / zero point: tensors sharing a range (Concat groups,
    # MaxPool, Relu-absorbed) and every zero point 0 read the same one (~600 fewer on PP-OCRv4 det).
    shared: dict[tuple[str, bytes], ir.Value] = {}
    for t in plan.tensors:
        p = params[t.name or ""]
        act_scale[id(t)] = p["scale"]
        producer = t.producer()
        rows.append({"tensor": t.name, "kind": "activation", "op": producer.op_type if producer else "input", **p})
        wide = (t.name or "") in plan.wide
        _insert_pair(graph, t, p["scale"], p["zero_point"], _WIDE_NP[act_np] if wide else act_np, names, shared)
        if wide:
            model.opset_imports.setdefault(MS_DOMAIN, 1)
    for node, i in plan.consts:
        _quantize_const_input(graph, node, i, scheme, names, shared)
    for node in plan.scaled:
        _fold_scalar_mul(graph, node, names, shared)
    weights_cache: dict[tuple[int, int], tuple[ir.Value, np.ndarray, np.ndarray]] = {}
    for node in plan.nodes:
        if node.op_type not in WEIGHTED:
            continue
        w_index = 1
        if const_array(node.inputs[w_index]) is None:
            continue  # MatMul of two activations: both are quantized as activations
        axis = _weight_axis(node)
        w = const_array(node.inputs[w_index])
        assert w is not None
        x = node.inputs[0]
        # The activation feeding this op is now a DQ output; its scale is the one we inserted.
        dq = x.producer() if x is not None else None
        s_in = None
        if dq is not None and dq.op_type == "DequantizeLinear":
            s_in = float(const_array(dq.inputs[1]))  # type: ignore[arg-type]
        key = (id(node.inputs[w_index]), axis)
        bias = const_array(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
        w_scale = _weight_scale(w, axis if scheme.per_channel else None, qmax)
        if bias is not None and s_in is not None and scheme.bias == "int32":
            # int32 bias scale s_in*s_w must hold the bias: grow s_w where it would overflow (rare).
            need = np.abs(bias.astype(np.float64).reshape(-1)) / (INT32_MAX * 0.5 * s_in)
            if w_scale.size == need.size or w_scale.size == 1:
                w_scale = np.maximum(w_scale, need.max() if w_scale.size == 1 else need).astype(np.float32)
        mean = _input_mean(x, stats)
        if mean is not None:
            # Bias correction (Nagel et al., "Data-Free Quantization", 2019): the rounding error of the
            # weights shifts each output by err . E[x]; subtract that expected shift from the bias.
            shift = _expected_shift(node, w, w_scale, axis, qmax, mean)
            if shift is not None:
                n_out = shift.size
                base_b = np.zeros(n_out, np.float32) if bias is None else bias.astype(np.float32).reshape(-1)
                if base_b.size == n_out:
                    bias = (base_b - shift).astype(np.float32)
                    if len(node.inputs) < 3 or node.inputs[2] is None:
                        node.resize_inputs(3)
                    # Our NameSource, not set_input_const's: that one rescans the whole graph per call.
                    old_b = node.inputs[2]
                    node.replace_input_with(2, add_initializer(graph, bias, f"{_short(node)}_bc", names))
                    _drop_orphan(graph, old_b)
        if key in weights_cache and bias is None:
            dq_w, w_scale, w_int = weights_cache[key]
        else:
            # ORT fuses a zero-point-less weight DQ into QLinearConv but not into QGemm/MatMulIntegerToFloat.
            explicit_zp = scheme.placement != "ort" or node.op_type in ("Gemm", "MatMul")
            w_int = _quantize_weight(w, w_scale, axis, qmax)
            dq_w = _dequantized_weight(graph, node, w_int, w_scale, axis, names, explicit_zp)
            weights_cache[key] = (dq_w, w_scale, w_int)
        old_w = node.inputs[w_index]
        node.replace_input_with(w_index, dq_w)
        _drop_orphan(graph, old_w)
        row: dict[str, Any] = {"tensor": old_w.name if old_w is not None else None, "kind": "weight", "op": node.op_type,
                               "node": node.name, "axis": axis if w_scale.size > 1 else None,
                               "channels": int(w_scale.size), "sqnr_db": _round(_weight_sqnr(w, w_int, w_scale, axis))}
        if bias is not None and s_in is not None and scheme.bias == "int32" and node.op_type == "Conv" \
                and scheme.placement == "ort":
            # ORT's BiasQuantization (qdq_transformer/bias_quantization.cc) turns the float bias of a QDQ
            # Conv into exactly this int32 (round(b / (s_in * s_w))) when it loads the model, and
            # QLinearConv still fuses: storing it float saves the per-channel int32 scale array and a node.
            # (QGemm does not fuse with a float bias: Gemm keeps the explicit int32 DQ.)
            row["bias"] = "int32 (float in the file, quantized by ORT at load)"
        elif bias is not None and s_in is not None and scheme.bias == "int32" and node.op_type != "MatMul":
            _quantize_bias(graph, node, bias, np.float32(s_in) * w_scale.astype(np.float32), names,
                           scheme.placement != "ort" or node.op_type == "Gemm")
            row["bias"] = "int32"
        rows.append(row)
    return rows


def _input_mean(x: ir.Value | None, stats: dict[str, calib.TensorStats] | None) -> np.ndarray | None:
    """Per-channel mean of the float tensor behind ``x`` (a DQ output after insertion)."""
    if stats is None or x is None:
        return None
    dq = x.producer()
    q = dq.inputs[0].producer() if dq is not None and dq.op_type == "DequantizeLinear" and dq.inputs[0] else None
    src = q.inputs[0] if q is not None and q.op_type == "QuantizeLinear" else x
    st = stats.get(src.name or "") if src is not None else None
    mean = st.channel_mean() if st is not None else None
    if mean is not None and q is not None and q.op_type == "QuantizeLinear":
        # A folded scalar Mul reads the same integers with a scaled DQ (HardSwish's 1/6): same factor.
        mean = mean * (float(const_array(dq.inputs[1])) / float(const_array(q.inputs[1])))  # type: ignore[union-attr,arg-type]
    return mean


def _expected_shift(node: ir.Node, w: np.ndarray, scale: np.ndarray, axis: int, qmax: int,
                    mean: np.ndarray) -> np.ndarray | None:
    """E[(W_q - W) x] per output channel, from the per-input-channel means of x."""
    s = _bshape(w, axis, scale).astype(np.float64)
    err = np.clip(np.round(w / s), -qmax, qmax) * s - w.astype(np.float64)
    op = node.op_type
    if op == "Conv":
        group = int(node.attributes["group"].value) if "group" in node.attributes else 1
        cin_g = w.shape[1]
        if mean.size != cin_g * group:
            return None
        m = mean.reshape(group, cin_g)  # input channels of each group
        e = err.reshape(group, w.shape[0] // group, cin_g, -1).sum(axis=3)  # [g, out/g, cin/g]
        return np.einsum("goc,gc->go", e, m).reshape(-1)
    if op == "Gemm" and w.ndim == 2:
        trans_b = int(node.attributes["transB"].value) if "transB" in node.attributes else 0
        if (w.shape[1] if trans_b else w.shape[0]) != mean.size:
            return None
        return err @ mean if trans_b else mean @ err
    return None


def _weight_axis(node: ir.Node) -> int:
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        return 0 if int(node.attributes["transB"].value if "transB" in node.attributes else 0) else 1
    if node.op_type == "MatMul":
        return 1
    return 0


def _weight_scale(w: np.ndarray, axis: int | None, qmax: int) -> np.ndarray:
    if axis is None:
        amax = np.array([np.abs(w).max()], dtype=np.float64)
    else:
        amax = np.abs(np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)).max(axis=1).astype(np.float64)
    # An all-zero channel still needs a positive scale; 1e-8 keeps s_in*s_w a normal float32.
    return np.maximum(amax / qmax, 1e-8).astype(np.float32)


def _bshape(w: np.ndarray, axis: int, scale: np.ndarray) -> np.ndarray:
    if scale.size == 1:
        return scale.reshape(())
    shape = [1] * w.ndim
    shape[axis] = -1
    return scale.reshape(shape)


def _quantize_weight(w: np.ndarray, scale: np.ndarray, axis: int, qmax: int) -> np.ndarray:
    return np.clip(np.round(w.astype(np.float64) / _bshape(w, axis, scale)), -qmax, qmax).astype(np.int8)


def _weight_sqnr(w: np.ndarray, q: np.ndarray, scale: np.ndarray, axis: int) -> float:
    # float32 is plenty for a reported figure, and 3x cheaper than float64 on ResNet-18's 11 M weights.
    err = w - q.astype(np.float32) * _bshape(w, axis, scale).astype(np.float32)
    e = float(np.dot(err.ravel(), err.ravel()))
    sig = float(np.dot(w.ravel(), w.ravel()))
    return 10 * math.log10(sig / e) if e > 0 else math.inf


def _dequantized_weight(graph: ir.Graph, node: ir.Node, q: np.ndarray, scale: np.ndarray, axis: int,
                        names: NameSource, explicit_zp: bool = False) -> ir.Value:
    base = node.inputs[1].name or f"{node.name}_W"
    qv = add_initializer(graph, q, f"{base}_q", names)
    sv = add_initializer(graph, scale if scale.size > 1 else scale.reshape(()), f"{base}_s", names)
    attrs = {"axis": axis} if scale.size > 1 else {}
    # No zero-point input: it defaults to 0 of the int8 input's type (symmetric), and per-channel zero
    # arrays would cost 5 bytes per output channel for nothing.
    ins = [qv, sv]
    if explicit_zp:  # TensorRT/TFLite converters read the zero point input; give it to them
        ins.append(add_initializer(graph, np.zeros(scale.shape if scale.size > 1 else (), np.int8), f"{base}_zp", names))
    dq = ir.node("DequantizeLinear", ins, attrs, name=names("dq"))
    dq.outputs[0].name = names(f"{base}_dq")
    dq.outputs[0].dtype = ir.DataType.FLOAT
    dq.outputs[0].shape = ir.Shape(q.shape)
    graph.insert_before(node, dq)
    return dq.outputs[0]


def _quantize_bias(graph: ir.Graph, node: ir.Node, bias: np.ndarray, scale: np.ndarray, names: NameSource,
                   explicit_zp: bool = False) -> None:
    b = bias.astype(np.float64).reshape(-1)
    s = np.broadcast_to(scale.astype(np.float64).reshape(-1), b.shape) if scale.size in (1, b.size) else None
    if s is None:
        return
    q = np.clip(np.round(b / s), -INT32_MAX, INT32_MAX).astype(np.int32)
    base = node.inputs[2].name or f"{node.name}_B"
    qv = add_initializer(graph, q, f"{base}_q", names)
    sv = add_initializer(graph, np.asarray(s, np.float32).copy(), f"{base}_s", names)
    ins = [qv, sv]
    if explicit_zp:
        ins.append(add_initializer(graph, np.zeros(b.shape, np.int32), f"{base}_zp", names))
    dq = ir.node("DequantizeLinear", ins, {"axis": 0}, name=names("dq"))
    dq.outputs[0].name = names(f"{base}_dq")
    dq.outputs[0].dtype = ir.DataType.FLOAT
    dq.outputs[0].shape = ir.Shape(b.shape)
    graph.insert_before(node, dq)
    old = node.inputs[2]
    node.replace_input_with(2, dq.outputs[0])
    _drop_orphan(graph, old)


def _quantize_const_input(graph: ir.Graph, node: ir.Node, index: int, scheme: QuantScheme,
                          names: NameSource, shared: dict[tuple[str, bytes], ir.Value]) -> None:
    """A constant operand of Add/Mul/Concat: stored in the activation dtype with its own min/max scale."""
    c = const_array(node.inputs[index])
    if c is None:
        return
    lv = scheme.act_levels
    scale, zp = calib.scale_zero_point(float(c.min()), float(c.max()), lv)
    q = np.clip(np.round(c.astype(np.float64) / scale) + zp, lv.qmin, lv.qmax).astype(scheme.act_np)
    base = node.inputs[index].name or f"{node.name}_in{index}"
    qv = add_initializer(graph, q, f"{base}_q", names)
    sv = _scalar(graph, np.asarray(scale, np.float32), f"{base}_s", names, shared)
    zv = _scalar(graph, np.asarray(zp, scheme.act_np), f"{base}_zp", names, shared)
    dq = ir.node("DequantizeLinear", [qv, sv, zv], name=names("dq"))
    dq.outputs[0].name = names(f"{base}_dq")
    dq.outputs[0].dtype, dq.outputs[0].shape = ir.DataType.FLOAT, ir.Shape(c.shape)
    graph.insert_before(node, dq)
    old = node.inputs[index]
    node.replace_input_with(index, dq.outputs[0])
    _drop_orphan(graph, old)


def _fold_scalar_mul(graph: ir.Graph, node: ir.Node, names: NameSource,
                     shared: dict[tuple[str, bytes], ir.Value]) -> None:
    """Mul(DQ(q, s, z), c) == DQ(q, s*c, z): read the same integers with a scaled DequantizeLinear."""
    from edgec.passes.quantize.placement import scalar_factor

    found = scalar_factor(node)
    if found is None:
        return
    k, c = found
    dq = node.inputs[1 - k].producer() if node.inputs[1 - k] is not None else None
    if dq is None or dq.op_type != "DequantizeLinear":
        return
    s = const_array(dq.inputs[1])
    base = node.outputs[0].name or node.name or "mul"
    sv = _scalar(graph, (np.asarray(s, np.float32) * np.float32(c)).astype(np.float32), f"{base}_s", names, shared)
    new = ir.node("DequantizeLinear", [dq.inputs[0], sv, dq.inputs[2]], name=names("dq"), domain=dq.domain)
    out = node.outputs[0]
    new.outputs[0].dtype, new.outputs[0].shape = ir.DataType.FLOAT, out.shape
    graph.insert_after(dq, new)
    ir.convenience.replace_all_uses_with(out, new.outputs[0], replace_graph_outputs=True)
    name = out.name
    out.name = None
    new.outputs[0].name = name
    const = node.inputs[k]
    graph.remove(node, safe=True)
    _drop_orphan(graph, const)
    if not dq.outputs[0].uses() and not dq.outputs[0].is_graph_output():
        graph.remove(dq, safe=True)  # ORT would still run a DequantizeLinear nobody reads


def _drop_orphan(graph: ir.Graph, v: ir.Value | None) -> None:
    if v is not None and v.is_initializer() and not v.uses() and not v.is_graph_output() and v.name in graph.initializers:
        graph.initializers.pop(v.name)


def _insert_pair(graph: ir.Graph, t: ir.Value, scale: float, zp: int, dtype: type[np.integer],
                 names: NameSource, shared: dict[tuple[str, bytes], ir.Value]) -> None:
    """t -> QuantizeLinear -> DequantizeLinear -> every former reader of t (graph outputs keep their name)."""
    base = t.name or "t"
    uses = [(n, i) for n, i in t.uses()]  # before the QuantizeLinear becomes a reader too
    sv = _scalar(graph, np.asarray(scale, np.float32), f"{base}_s", names, shared)
    zv = _scalar(graph, np.asarray(zp, dtype), f"{base}_zp", names, shared)
    # Short node names ("q_12": left unnamed, the serializer writes "node_QuantizeLinear_12") and short
    # suffixes: on a detector with ~500 quantized tensors the names were ~10 % of the int8 file. The
    # Q output only links the pair, so it takes a short name too; the DQ output keeps the tensor's.
    # 16-bit: ONNX Runtime's com.microsoft Q/DQ (opset-21 ONNX Q/DQ would force an opset upgrade).
    domain = MS_DOMAIN if dtype in (np.uint16, np.int16) else ""
    q = ir.node("QuantizeLinear", [t, sv, zv], name=names("q"), domain=domain)
    dq = ir.node("DequantizeLinear", [q.outputs[0], sv, zv], name=names("dq"), domain=domain)
    q.outputs[0].name = names("i")
    q.outputs[0].dtype = _IR_TYPE[dtype]
    q.outputs[0].shape = t.shape
    out = dq.outputs[0]
    out.name = names(f"{base}_dq")
    out.dtype, out.shape = ir.DataType.FLOAT, t.shape
    producer = t.producer()
    if producer is not None:
        graph.insert_after(producer, [q, dq])
    else:
        first = next(iter(graph), None)
        if first is None:
            graph.extend([q, dq])
        else:
            graph.insert_before(first, [q, dq])
    for n, i in uses:
        n.replace_input_with(i, out)
    if t.is_graph_output():
        # The interface keeps its name: the DQ output takes it, the float tensor is renamed.
        name = t.name
        idx = [k for k, o in enumerate(graph.outputs) if o is t]
        t.name = names(f"{name}_float")
        out.name = name
        for k in idx:
            graph.outputs[k] = out


def _short(node: ir.Node) -> str:
    return node.name or node.op_type


def _scalar(graph: ir.Graph, value: np.ndarray, name: str, names: NameSource,
            shared: dict[tuple[str, bytes], ir.Value]) -> ir.Value:
    """A scalar initializer, reused when the same dtype and value was already added by this pass."""
    key = (value.dtype.str, value.tobytes())
    found = shared.get(key)
    if found is None or found.graph is not graph or found.name not in graph.initializers:
        found = shared[key] = add_initializer(graph, value, name, names)
    return found
