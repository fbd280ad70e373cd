"""The channel-pruning pipeline: analyse groups, select channels, (collect refit statistics), shrink, refit.

Reconstruction statistics are collected from the UNPRUNED model before anything is rewritten, so the
pass holds one serialized copy of the model at most. Drift with and without reconstruction is measured
here (on the sample feeds, against the model before this pass) because the manager only sees the
final result.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_ir as ir

from edgec import metrics, runtime
from edgec.graph import infer_shapes
from edgec.pass_infra import PassContext
from edgec.passes.prune.channels import (
    analyze,
    apply_selection,
    choose_ratio,
    estimate_macs,
    node_macs_after,
    node_params_after,
    skipped_groups,
)


def prune_channels(model: ir.Model, ctx: PassContext, *, ratio: float, criterion: str = "l2", align: int = 8,
                   macs_target: float = 0.0, skip: list[str] | tuple[str, ...] = (),
                   refit: dict[str, Any] | None = None) -> bool:
    """``refit``: the Prune pass's reconstruction fields (Prune.refit_settings): enabled, samples, inputs,
    positions, ridge, waves."""
    from edgec.passes.prune import reconstruct as rec

    infer_shapes(model)
    analysis = analyze(model)
    graph = model.graph
    used_ratio, sel = choose_ratio(analysis, graph, ratio, macs_target, criterion=criterion, align=align, skip=skip)
    est_after = estimate_macs(analysis, graph, sel)
    skipped = skipped_groups(analysis, skip)
    ctx.details.update({
        "mode": "channels", "ratio": used_ratio, "criterion": criterion, "align": align,
        "macs_before": analysis.total_macs, "macs_after_estimate": est_after,
        "groups": _group_rows(analysis, sel, skipped),
    })
    if used_ratio != ratio:
        ctx.details["ratio_raised"] = f"ratio {ratio} -> {used_ratio:.3f} to remove >= {macs_target:.0%} of MACs"
    if not sel.keep:
        return False
    opts = refit or {}
    reconstruct = bool(opts.get("enabled", True))
    fits: list = []
    reference = None
    if reconstruct or ctx.samples:
        proto_bytes = ir.serde.serialize_model(model).SerializeToString()
        if ctx.samples:
            reference = runtime.run(runtime.session(proto_bytes, optimization="basic"), ctx.samples)
        if reconstruct:
            feeds = ctx.calibration_feeds()
            limit = int(opts.get("samples", 64))
            fits = rec.plan_fits(graph, sel, analysis)
    apply_selection(model, analysis, sel)
    infer_shapes(model)
    if reference is not None:
        plain = runtime.run(runtime.session(model, optimization="basic"), ctx.samples)
        ctx.details["drift_without_reconstruct"] = _drift_row(metrics.drift(reference, plain))
    if fits:
        source = str(opts.get("inputs", "unpruned"))
        positions = int(opts.get("positions", rec.POSITIONS_PER_FEED))
        ridge = float(opts.get("ridge", rec.RIDGE))
        ctx.details["reconstruct_inputs"] = source
        if source == "sequential":
            # He et al.'s order: refit layer by layer (in waves, to bound the ORT runs), each wave's
            # inputs taken from the model with the earlier waves already refitted.
            waves = int(opts.get("waves", 0)) or len(fits)  # 0: one layer per wave
            chunks = np.array_split(np.arange(len(fits)), min(waves, len(fits)))
            rows = []
            for chunk in chunks:
                wave = [fits[i] for i in chunk]
                current = ir.serde.serialize_model(model).SerializeToString()
                rec.collect(proto_bytes, wave, feeds, limit, pruned=current, positions=positions)
                rows += rec.refit(wave, ridge=ridge)
            ctx.details["reconstruct"] = rows
        else:
            pruned_bytes = ir.serde.serialize_model(model).SerializeToString() if source == "pruned" else None
            rec.collect(proto_bytes, fits, feeds, limit, pruned=pruned_bytes, positions=positions)
            ctx.details["reconstruct"] = rec.refit(fits, ridge=ridge)
        infer_shapes(model)
        if reference is not None:
            refit = runtime.run(runtime.session(model, optimization="basic"), ctx.samples)
            ctx.details["drift_with_reconstruct"] = _drift_row(metrics.drift(reference, refit))
    elif not reconstruct:
        ctx.details["reconstruct"] = "off"
    return True


def _drift_row(d) -> dict:
    return {"sqnr_db": d.sqnr_db, "max_rel": d.max_rel, "cosine": d.cosine, "top1": d.top1}


def _group_rows(analysis, sel, skipped: set[int]) -> list[dict]:
    """Per group: channels, MACs and weight parameters of the ops it touches, before and after."""
    rows = []
    for g in analysis.groups:
        if not g.producers:
            continue
        nodes = g.nodes()
        first = g.producers[0].outputs[0].name
        row: dict = {"group": g.id, "producers": [n.name for n in g.producers][:4], "channels": g.channels[first]}
        if not g.prunable or g.id in skipped:
            row["skipped"] = g.reason or "--prune-skip"
        else:
            row["channels_after"] = len(sel.keep[first]) if first in sel.keep else g.channels[first]
            row["units_removed"] = sel.removed_units.get(g.id, 0)
        params = [node_params_after(analysis, sel, n) for n in nodes]
        row.update({"macs_before": int(sum(analysis.macs.get(id(n), 0) for n in nodes)),
                    "macs_after": int(sum(node_macs_after(analysis, sel, n) for n in nodes)),
                    "params_before": int(sum(p[0] for p in params)), "params_after": int(sum(p[1] for p in params))})
        rows.append(row)
    return rows
