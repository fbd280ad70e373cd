"""End-to-end drift of the depthwise pass: the model's outputs with a set of replacements, and the greedy
acceptance under an output SQNR budget (``min_sqnr``).

Helpers of ``passes/depthwise.py`` (no pass is registered here). A per-layer floor bounds each layer's own
error, but errors compound through the network: five layers at 25 dB each do not give 25 dB at the output.
So the candidates (pairs meeting the floor, and faster in the target runtime in latency mode) are tried in
order of their gain (time saved where timed, else MACs saved) and a pair is kept only while the model's
outputs on held-out calibration feeds stay above the budget, a greedy knapsack without the weights known in
advance (the same acceptance rule as the greedy layer-wise search of Zhang et al. 2015, "Accelerating Very
Deep Convolutional Networks for Classification and Detection", there on an accumulated-energy objective).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from edgec import metrics, model_io, runtime
from edgec.graph import nodes_of
from edgec.pass_infra import Feed

from .depthwise_fit import Fit
from .depthwise_layers import Layer, label, rewrite

Candidate = tuple[Layer, dict[str, Any], Fit]


def gain(decision: dict[str, Any]) -> tuple[float, float]:
    """Sort key, larger first: ms saved in the target runtime (0 when not timed), then MACs saved."""
    timing = decision.get("latency") or {}
    saved_ms = (timing.get("conv_ms", 0.0) - timing.get("pair_ms", 0.0)) if timing else 0.0
    return saved_ms, float((decision.get("macs_before") or 0) - (decision.get("macs_after") or 0))


class EndToEnd:
    """The original model's outputs on held-out feeds, and the drift of the model with some replacements."""

    def __init__(self, model: ir.Model, feeds: Sequence[Feed]) -> None:
        self.base = ir.serde.serialize_model(model).SerializeToString()
        self.feeds = list(feeds)
        self.reference = self._run(self.base)
        self.evaluations = 0

    def _run(self, data: bytes) -> list[Feed]:
        sess = runtime.session(data, optimization="basic", lean=True)
        names = [o.name for o in sess.get_outputs()]
        return [dict(zip(names, sess.run(names, runtime.input_feed(sess, f)))) for f in self.feeds]

    def drift(self, chosen: Sequence[Candidate]) -> metrics.Drift:
        """Output drift of the original model with ``chosen`` applied (on a copy; the model is untouched)."""
        self.evaluations += 1
        return metrics.drift(self.reference, self._run(with_pairs(self.base, chosen)))


def with_pairs(base: bytes, chosen: Sequence[Candidate]) -> bytes:
    """The serialized model ``base`` with the ``chosen`` replacements applied (to a copy)."""
    copy = model_io.from_bytes(base)
    convs = {label(n): n for n in nodes_of(copy.graph, "Conv")}
    for layer, _, fit in chosen:
        rewrite(copy.graph, dataclasses.replace(layer, node=convs[label(layer.node)]), fit.dw, fit.pw, fit.bias)
    return ir.serde.serialize_model(copy).SerializeToString()


def whole_model_ratio(model: ir.Model, chosen: Sequence[Candidate], feed: Feed, timer: Any,
                      runs: int = 40) -> list[float]:
    """Latency of the whole model with ``chosen`` over without, in the target runtime's ``timer`` (ONNX Runtime
    when None), measured twice: pairs that win alone can lose in the graph (measured on YOLOv8n in LiteRT: 14
    pairs each faster alone, the model x1.013 slower with them), so latency mode checks the sum too."""
    base = ir.serde.serialize_model(model).SerializeToString()
    models = [base, with_pairs(base, chosen)]
    if timer is None:
        from .depthwise_latency import interleaved_ms

        sessions = [runtime.session(m, optimization="all") for m in models]

        def timer(_: Sequence[bytes], f: Feed) -> list[float]:
            return interleaved_ms(sessions, f, runs=runs)
    out = []
    for _ in range(2):
        before, after = timer(models, feed)
        out.append(after / before)
    return out


def within_budget(e2e: EndToEnd, candidates: list[Candidate], budget: float | None) -> tuple[
        list[Candidate], list[tuple[Candidate, float]], metrics.Drift | None]:
    """(kept, [(rejected, the SQNR with it)], drift of the kept set). No budget: all kept, drift measured.

    All candidates are tried together first (one evaluation when the budget holds for the whole set);
    otherwise one by one, largest gain first, each kept when the outputs stay at or above the budget."""
    if not candidates:
        return [], [], None
    whole = e2e.drift(candidates)
    if budget is None or whole.sqnr_db >= budget:
        return list(candidates), [], whole
    kept: list[Candidate] = []
    rejected: list[tuple[Candidate, float]] = []
    best: metrics.Drift | None = None
    for cand in sorted(candidates, key=lambda c: gain(c[1]), reverse=True):
        d = e2e.drift([*kept, cand])
        if d.sqnr_db >= budget:
            kept.append(cand)
            best = d
        else:
            rejected.append((cand, d.sqnr_db))
    return kept, rejected, best


def drift_record(d: metrics.Drift | None, n_feeds: int) -> dict[str, Any] | None:
    if d is None:
        return None
    # inf (bit-exact outputs, e.g. full rank) is written as None: JSON has no infinity.
    return {"sqnr_db": round(float(d.sqnr_db), 2) if np.isfinite(d.sqnr_db) else None,
            "exact": not np.isfinite(d.sqnr_db), "cosine": round(float(d.cosine), 6), "max_rel": float(d.max_rel), "feeds": n_feeds}
