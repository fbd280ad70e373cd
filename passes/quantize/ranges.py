"""Activation ranges: streaming calibration statistics, then one (lo, hi, scale, zero point) per quantized
tensor, shared across the placement's groups.

Activations: per tensor, uint8 asymmetric or int8 (a)symmetric, range from the streaming calibration
statistics (edgec.calib) by the chosen rule (percentile, minmax, entropy, mse, mean_minmax; search.py
picks among them for ``method=auto``). Tensors the runtime fixes (TFLite's Sigmoid/Softmax outputs) take
the fixed range; A16W8 tensors take the whole 16-bit range.
"""

from __future__ import annotations

import math
from typing import Any

import onnx_ir as ir

from edgec import calib, runtime
from edgec.context import CalibStats
from edgec.graph import NameSource
from edgec.pass_infra import PassContext
from edgec.passes.quantize import live_range
from edgec.passes.quantize.placement import WEIGHTED, Placement
from edgec.passes.quantize.scheme import QuantScheme


def wide_levels(scheme: QuantScheme) -> calib.Levels:
    """The 16-bit grid of an A16W8 tensor, of the scheme's signedness and symmetry."""
    if scheme.act_dtype == "uint8":
        return calib.Levels(0, 65534 if scheme.act_symmetric else 65535, scheme.act_symmetric)
    return calib.Levels(-32767 if scheme.act_symmetric else -32768, 32767, scheme.act_symmetric)


def name_values(graph: ir.Graph) -> None:
    names = NameSource(graph)
    for node in graph:
        for i, out in enumerate(node.outputs):
            if not out.name:
                out.name = names(f"{node.name or node.op_type}_out{i}")


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
                      percentile: float, live: bool = False) -> dict[str, dict[str, Any]]:
    """Per tensor name: lo, hi, scale, zero point, method used and expected SQNR; groups share one range.
    ``live``: each range cut to its readers' live interval (live_range.py; exact, opt-in: see there)."""
    out: dict[str, dict[str, Any]] = {}
    grouped: dict[str, list[str]] = {}
    for g in plan.groups:
        names = [v.name or "" for v in g]
        for n in names:
            grouped[n] = names
    done: set[str] = set()
    values = {t.name or "": t for t in plan.tensors}
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
            if live:  # levels only where a reader's result still depends on the value (live_range.py)
                lo, hi = live_range.clamp(lo, hi, live_range.hull_of([values[m] for m in members if m in values]),
                                          lv.n)
            scale, zp = calib.scale_zero_point(lo, hi, lv)
        for m in members:
            own = stats[m]
            out[m] = {"lo": float(lo), "hi": float(hi), "scale": float(scale), "zero_point": int(zp),
                      "method": used, "shared_with": len(members) - 1,
                      "expected_sqnr_db": rounded(calib.expected_sqnr(own, lo, hi, lv)),
                      "min": rounded(own.min), "max": rounded(own.max)}
            done.add(m)
    return out


def rounded(x: float) -> float | None:
    return None if not math.isfinite(x) else round(float(x), 4)
