"""The ``quantize`` pass: calibrate once, then insert QuantizeLinear/DequantizeLinear pairs.   lossy

The pass reads its fields (edgec.settings puts the user's --set keys and flags there), builds the target's QuantScheme and runs the room's pieces in order:
placement (placement.py: where Q/DQ go, for the target runtime; for ORT, HardSwish/HardSigmoid are first
rewritten into int8-runnable ops, decompose.py), calibration and activation ranges (ranges.py), the
search over calibration variants and fallbacks (search.py: ``method=auto``, ``fallback=auto``), Q/DQ
insertion with the weight and bias quantization (insert.py), then optionally ``--set adaround=true``,
which learns each weight's rounding layer by layer (adaround.py, Nagel et al. 2020).

Weights: int8, symmetric, per output channel; the weight width is the target's (scheme ``weight_bits``:
7 on the portable ORT x86 target, where MLAS without VNNI saturates int16 sums; 8 elsewhere), never the
compiling machine's: the same inputs give the same bytes.

Selective fallback (``fallback`` parameter / option): ``auto`` times variants in ONNX Runtime (nothing
float; depthwise convs float; SE-block convs float; both; HardSwish-bound ops float) against fp32 and
keeps the fastest, or fp32 itself when int8 is slower everywhere; the named modes force one variant;
``first``/``last`` keep the first/last weighted op float.
"""

from __future__ import annotations

from typing import Any

import onnx_ir as ir

from edgec import calib, model_io
from edgec.errors import EdgecError
from edgec.graph import infer_shapes
from edgec.pass_infra import Pass, PassContext, register
from edgec.passes.quantize.decompose import decompose_hard_activations
from edgec.passes.quantize.insert import insert_qdq
from edgec.passes.quantize.placement import place, with_activations
from edgec.passes.quantize.ranges import activation_params, calibrate, name_values
from edgec.passes.quantize.scheme import QuantScheme
from edgec.passes.quantize.search import choose_config, fallback_exclusions, measure_fallback


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
    live_range: bool = False  # cut activation ranges to their readers' live interval (live_range.py)
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
        wide = list(self.a16 or []) if scheme.rules.a16 else []
        bits = scheme.weight_bits
        infer_shapes(model)
        name_values(model.graph)
        inner = sum(1 for _ in model.graph.all_nodes()) - len(model.graph)
        if inner:  # placement and calibration see the main graph only
            ctx.details["float_in_subgraphs"] = inner
            ctx.warn(f"{inner} nodes inside If/Loop/Scan bodies stay float (quantize rewrites the main graph only)")
        # The float model as it would ship (HardSwish still one op): what int8 must beat in speed. The
        # decomposed form below is slower in float (PP-LCNet 8.7 vs 4.8 ms) and would flatter int8.
        shipped = model_io.to_bytes(model) if ctx.samples else None
        if shipped is not None:
            ctx.shipped_float = shipped
        decompose = scheme.rules.decompose_hard_activations and self.int8_hardswish and "HardSwish" not in exclude
        if fallback == ["auto"]:
            trial = model_io.from_bytes(shipped) if shipped is not None else model
            if decompose and shipped is not None:
                decompose_hard_activations(trial.graph, exclude)
            fallback = measure_fallback(trial, ctx, scheme, exclude, share, method, bits, shipped,
                                        self.percentile, self.batch, self.live_range,
                                        bias_correction=self.analytic_bias_correction)
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
            (method, bc), scores = choose_config(before, ctx, scheme, exclude, share, stats, bits, bc_opt,
                                                 wide, self.percentile, self.live_range)
            ctx.details["auto_scores"] = scores
        else:
            method = "percentile" if method == "auto" else method
            bc = bc_opt is not False
        params = activation_params(plan, stats, scheme, method, self.percentile, self.live_range)
        rows = insert_qdq(model, plan, params, scheme, bits, stats if bc else None)
        ctx.quantized_weight_bits = bits  # read by the adaround pass
        if self.adaround and before is not None:
            from edgec.passes.quantize.adaround import AdaRound, adaround, head, warn_if_few

            cfg = AdaRound()
            feeds = head(ctx.calibration_feeds(), cfg.samples)
            warn_if_few(ctx, len(feeds))
            ctx.details["adaround"] = adaround(model, model_io.from_bytes(before),
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
