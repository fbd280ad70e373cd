"""The search over calibration variants and fallbacks: build the model several ways from ONE calibration,
measure each, keep the best.   (called by the quantize pass)

``choose_config`` (``method=auto``, the default): percentile / minmax ranges, with and without bias
correction, from the same statistics; the best output SQNR on the sample inputs wins (``mean_minmax``,
NNCF's default range, is a method of its own: see choose_config for why auto leaves it out).
``measure_fallback`` (``fallback=auto``): the selective-fallback variants timed in ONNX Runtime against
fp32; the fastest wins. ``fallback_exclusions`` names the nodes each fallback mode keeps float.

It sits beside compiler/mixed_precision.py, which is the same kind of search one level up (variants of
which layers stay float, judged against a budget), but here, in the quantization room: it is a decision
INSIDE the quantize pass (its scores land in that pass's record), built from the room's own pieces
(placement, ranges, insertion); in compiler/ it would import the passes package, which imports it back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import onnx_ir as ir

from edgec import calib, model_io
from edgec.graph import const_array, nodes_of
from edgec.pass_infra import PassContext
from edgec.passes.quantize.insert import insert_qdq
from edgec.passes.quantize.placement import WEIGHTED, place
from edgec.passes.quantize.ranges import activation_params, calibrate
from edgec.passes.quantize.scheme import QuantScheme


def choose_config(before: bytes, ctx: PassContext, scheme: QuantScheme, exclude: list[str], share: bool,
                  stats: dict[str, calib.TensorStats], bits: int, bc_opt: Any, wide: Sequence[str] = (),
                  percentile: float = 99.99, live: bool = False) -> tuple[tuple[str, bool], dict[str, float]]:
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
        cand = model_io.from_bytes(before)
        plan = place(cand.graph, scheme, exclude, share_concat=share, wide=wide)
        insert_qdq(cand, plan, activation_params(plan, stats, scheme, m, percentile, live), scheme, bits,
                   stats if bc else None)
        out = runtime.run(runtime.session(model_io.to_bytes(cand), optimization="basic"), feeds)
        scores[f"{m}{'+bias_correction' if bc else ''}"] = round(metrics.drift(ref, out).sqnr_db, 2)
    best = max(configs, key=lambda c: scores[f"{c[0]}{'+bias_correction' if c[1] else ''}"])
    return best, scores

def measure_fallback(model: ir.Model, ctx: PassContext, scheme: QuantScheme, exclude: list[str],
                     share: bool, method: str, bits: int, fp32: bytes | None = None,
                     percentile: float = 99.99, batch: int = 8, live: bool = False,
                     bias_correction: bool | None = None) -> list[str]:
    """--fallback auto: build each candidate, time it in ONNX Runtime against fp32, keep the fastest.

    Candidates leave float: nothing; depthwise convs; SE-block convs; both; HardSwish-bound ops.
    "fp32" (no quantization at all) wins only if every int8 variant is slower than the float model.
    ``bias_correction``: the pass's analytic_bias_correction (None: auto, which corrects here).
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
        m = model_io.from_bytes(base)
        skip = tuple(sorted(exclude + fallback_exclusions(m.graph, modes)))
        if skip in seen:
            continue  # the same float set as an earlier candidate (e.g. no SE blocks in this model)
        seen[skip] = key
        plan = place(m.graph, scheme, list(skip), share_concat=share)
        if plan.tensors:
            plans[key] = (m, plan)
    names = sorted({t.name or "" for _m, p in plans.values() for t in p.tensors})
    stats = calibrate(model_io.from_bytes(base), names, ctx, batch,
                      histogram=method not in ("minmax", "mean_minmax"))
    for key, (m, plan) in plans.items():
        rule = "percentile" if method == "auto" else method
        insert_qdq(m, plan, activation_params(plan, stats, scheme, rule, percentile, live), scheme, bits,
                   stats if bias_correction is not False else None)
        variants[key] = model_io.to_bytes(m)
    best, times = fastest(variants, ctx.samples[0])
    int8_best = min((k for k in times if k != "fp32"), key=times.__getitem__, default="fp32")
    ctx.details["fallback"] = {"latency_ms": times, "chosen": best, "fastest_int8": int8_best}
    if best == "fp32":
        ctx.warn(f"quantize: every int8 variant is slower than fp32 here ({times}); --fallback auto kept fp32")
        return ["fp32"]
    return candidates[best]


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
