"""Budgeted mixed precision: widen, then keep float, the tensors and layers that hurt most, until a budget is met.

Start all-int8. Two escalation steps, each cumulative over a ranking and measured at growing sizes
(1, 2, 3, 4, 6, 9, ... entries, so a 40-layer model needs ~10 configurations per step, not 40):

1. A16W8 (ONNX Runtime targets): 16-bit activations for the quantized tensors with the lowest expected
   quantization SQNR (from the calibration histograms), weights still int8.
2. Keep float, end to end (no Q/DQ on the layer's inputs and outputs, its fused activation float too),
   the layers ranked by the noise they add locally in the all-int8 model (relative noise power against
   fp32 at the output minus at the input, one run with intermediate outputs on calibration samples).

A configuration is accepted only if its output SQNR on the CALIBRATION samples does not fall below the
last accepted one (removing a Q/DQ can lose a clamp that was hiding upstream noise); rejected ones are
listed apart. The budget (``max_drop`` metric points and/or ``min_sqnr`` dB, on the figure ``budget_on``
= mean | p10 | min of the per-sample SQNR) is judged on HELD-ASIDE samples the calibration never saw.
Shared between configurations: one calibration pass over the union of tensors, one range rule and
bias-correction choice (sensitivity.Quantizer); latency is timed only when asked (``time_latency``).
The result ALWAYS carries the best model found and the table, with ``met`` and a message naming the gap.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import onnx_ir as ir

from edgec import calib, metrics, model_io, runtime, targets
from edgec.candidates import Outcome, Pool
from edgec.errors import EdgecError
from edgec.graph import const_array
from edgec.pass_infra import Feed
from edgec.passes.quantize.rules import RULES
from edgec.sensitivity import (
    Evaluator,
    MetricFn,
    Quantizer,
    Score,
    SensitivityResult,
    _finite,
    candidates,
    exclusion_unit,
    prepare_float,
    split_feeds,
    split_pipeline,
)


# ---------------------------------------------------------------------------------- mixed precision
@dataclasses.dataclass
class Step:
    """One measured configuration of the search."""

    float_layers: list[str]  # the layers kept float, in the order they were added
    metric: float
    drop: float
    sqnr_db: float  # aggregate output SQNR on the held-aside samples
    top1: float | None
    latency_ms: float  # nan unless timed
    size_bytes: int
    meets: bool
    pareto: bool = False
    exclude: list[str] = dataclasses.field(default_factory=list)  # node names given to quantize (+ activations)
    a16: list[str] = dataclasses.field(default_factory=list)  # tensors on 16-bit activations
    action: str = "int8"  # int8 | a16 | float: the escalation step this configuration belongs to
    calib_sqnr_db: float = math.nan  # output SQNR on the calibration samples (acceptance is judged on it)
    sqnr_p10: float = math.nan
    sqnr_min: float = math.nan

    def to_dict(self) -> dict[str, Any]:
        return {k: _finite(v) for k, v in dataclasses.asdict(self).items()}


@dataclasses.dataclass
class SearchResult:
    best_model: ir.Model
    table: list[Step]  # accepted configurations: calib_sqnr_db non-decreasing down the table
    met: bool
    message: str
    exclude: list[str]  # node names kept float in best_model: pass as options["exclude"] to edgec.compile
    metric: str = "sqnr"
    fallback_precision: str = "fp32"  # what the backend runs the kept-float layers in
    quantizer: str = "quantize pass"
    sensitivity: SensitivityResult | None = None
    a16: list[str] = dataclasses.field(default_factory=list)  # options["a16"] for edgec.compile
    fixed: dict[str, Any] = dataclasses.field(default_factory=dict)  # calib_method / bias_correction used
    rejected: list[Step] = dataclasses.field(default_factory=list)  # measured, lowered the calibration SQNR
    budget_on: str = "mean"
    gap: float = 0.0  # how far the best model is from the budget (dB or metric points); 0 when met

    def to_dict(self) -> dict[str, Any]:
        return {"met": self.met, "message": self.message, "exclude": self.exclude, "a16": self.a16,
                "metric": self.metric, "budget_on": self.budget_on, "gap": _finite(self.gap),
                "fallback_precision": self.fallback_precision, "quantizer": self.quantizer, "fixed": self.fixed,
                "table": [s.to_dict() for s in self.table], "rejected": [s.to_dict() for s in self.rejected],
                "sensitivity": self.sensitivity.to_dict() if self.sensitivity else None}

    def pareto_table(self) -> str:
        lines = [(f"{'step':<6} {'float':>5} {'a16':>4} {'calib dB':>8} {self.metric:>9} {'drop':>7} {'SQNR dB':>8} "
                  f"{'p10 dB':>7} {'latency':>8} {'size KB':>8}  budget pareto last layer added")]
        for s in self.table:
            last = s.float_layers[-1] if s.float_layers and s.action == "float" else "-"
            drop = f"{s.drop:>7.3f}" if math.isfinite(s.drop) else f"{'-':>7}"
            lat = f"{s.latency_ms:>8.3f}" if math.isfinite(s.latency_ms) else f"{'-':>8}"
            lines.append(f"{s.action:<6} {len(s.float_layers):>5} {len(s.a16):>4} {s.calib_sqnr_db:>8.2f} "
                         f"{s.metric:>9.3f} {drop} {s.sqnr_db:>8.2f} {s.sqnr_p10:>7.2f} {lat} "
                         f"{s.size_bytes / 1024:>8.1f}  {'met' if s.meets else '-':<6} {'*' if s.pareto else ' ':<6} {last}")
        return "\n".join(lines)

    def save(self, out_dir: str | Path) -> dict[str, Path]:
        """Write the best model (QDQ ONNX), pareto.json and pareto.txt; returns the paths."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"model": model_io.save(self.best_model, out / "mixed_precision.onnx")}
        with model_io.atomic_path(out / "pareto.json") as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=2))
        paths["json"] = out / "pareto.json"
        with model_io.atomic_path(out / "pareto.txt") as tmp:
            tmp.write_text(f"{self.message}\n\n{self.pareto_table()}\n")
        paths["text"] = out / "pareto.txt"
        return paths


def sizes(n: int) -> list[int]:
    """1, 2, 3, 4, 6, 9, 13, ... up to n (always ending at n): the prefix lengths the search measures."""
    out: list[int] = []
    k = 1
    while k < n:
        out.append(k)
        k = max(k + 1, int(k * 1.5))
    return [*out, n] if n else out


def search(model: str | Path | ir.Model, target: str | targets.Target, calib_feeds: Sequence[Feed],
           eval_feeds: Sequence[Feed], *, max_drop: float | None = None, min_sqnr: float | None = None,
           metric: str | MetricFn | None = None, max_steps: int | None = None, equalize: bool = False,
           bias_correct: bool = False, options: Mapping[str, Any] | None = None,
           out_dir: str | Path | None = None, sensitivity: SensitivityResult | None = None,
           quantizer: Quantizer | None = None, budget_on: str = "mean", a16: bool = True,
           a16_max: float = 0.25, time_latency: bool = False, latency_runs: int = 20, calib_check: int = 8,
           progress: Callable[[str], Any] | None = None, jobs: int = 1, use_ray: bool = False,
           ray_address: str | None = None) -> SearchResult:
    """Budgeted mixed precision; see the module docstring. Never returns without a model.

    ``model``: the input model (path or IR); the target's float pipeline (everything before ``quantize``)
    runs first. ``max_drop``: metric points below fp32 allowed (metric defaults to top1 agreement when the
    outputs are logits, else sqnr); ``min_sqnr``: output SQNR floor in dB on the ``budget_on`` figure.
    ``eval_feeds`` must be held aside from ``calib_feeds``. ``sensitivity`` (from ``analyze``) replaces the
    local-loss ranking of the float step; ``max_steps`` caps how many ranked layers may be kept float.
    ``a16=False`` skips the 16-bit step; ``a16_max`` caps it (fraction of the quantized tensors). ``equalize`` runs ``equalize:clip=split`` before quantizing;
    ``bias_correct`` corrects biases after. With ``out_dir`` the best model so far and the table are
    rewritten after every step, so even an interrupted run leaves them. ``quantizer`` (from an earlier
    ``analyze``/``search`` on the same float model and scheme) reuses its calibration. ``jobs`` /
    ``use_ray`` / ``ray_address``: where the candidate evaluations run (candidates.Pool); the table and
    the chosen configuration do not depend on it.
    """
    if max_drop is None and min_sqnr is None:
        raise EdgecError("mixed precision needs a budget", hint="--max-drop POINTS or --min-sqnr DB")
    tgt = target if isinstance(target, targets.Target) else targets.get(target)
    if tgt.precision != "int8":
        raise EdgecError(f"target '{tgt.name}' is not an int8 target: nothing to keep in float",
                         hint="use cpu-int8, jetson-int8 or tflite-int8")
    calib_feeds = list(calib_feeds)
    if quantizer is not None:
        if quantizer.scheme != dict(tgt.scheme):
            raise EdgecError(f"the quantizer given was built for another scheme than target '{tgt.name}'")
        float_model = quantizer.float_model()
    else:
        float_model = prepare_float(model, tgt, calib_feeds[:16], equalize=equalize)
    if metric is None:
        metric = "sqnr"
        if max_drop is not None:
            ref = runtime.run(runtime.session(float_model, optimization="basic"), list(eval_feeds)[:1])
            metric = "top1" if metrics.drift(ref, ref).top1 is not None else "sqnr"
    if max_drop is not None and metric == "sqnr":
        raise EdgecError("--max-drop with the sqnr metric has no fp32 reference value to drop from",
                         hint="use --min-sqnr DB, or --metric top1 / module:function")
    int8_part = split_pipeline(tgt)[1]
    if bias_correct:
        # The quantize pass has its own (analytic, per-channel-mean) bias correction: one correction, not two.
        options = {**dict(options or {}), "analytic_bias_correction": False}
        int8_part = [*int8_part, "bias-correct"]  # run by the Manager after quantize, per configuration
    if quantizer is not None and bias_correct != ("bias-correct" in quantizer.passes):
        raise EdgecError("bias_correct must match the quantizer given (its passes: "
                         f"{', '.join(quantizer.passes)})")
    q = quantizer or Quantizer(float_model, tgt.scheme, calib_feeds, options, passes=int8_part)
    ev = Evaluator(float_model, eval_feeds, metric, budget_on)
    cev = Evaluator(float_model, calib_feeds[:calib_check], "sqnr")  # acceptance: calibration samples only
    fallback = "fp16" if tgt.backend in ("tensorrt", "tflite") else "fp32"

    def meets(s: Score) -> bool:
        sq = s.metric if ev.metric_name == "sqnr" else s.sqnr_db
        return (max_drop is None or s.drop <= max_drop + 1e-9) and (min_sqnr is None or sq >= min_sqnr)

    steps: list[Step] = []
    rejected: list[Step] = []
    best: tuple[ir.Model, Step] | None = None

    def record(action: str, layers: list[str], exclude: list[str], wide: list[str], out: Outcome) -> Step:
        """Judge one evaluated configuration, in the search's order (whatever order the executor ran them)."""
        nonlocal best
        assert out.model is not None and out.check_sqnr_db is not None
        s, c = out.score, out.check_sqnr_db
        lat = math.nan
        if time_latency:  # timed here, one at a time: parallel workers would disturb each other's timing
            lat = runtime.time_session(runtime.session(out.model, threads=2), ev.feeds[0], runs=latency_runs,
                                       warmup=3)["median_ms"]
        step = Step(list(layers), s.metric, s.drop, s.sqnr_db, s.top1, lat, out.size_bytes, meets(s),
                    exclude=list(exclude), a16=list(wide), action=action, calib_sqnr_db=c, sqnr_p10=s.sqnr_p10,
                    sqnr_min=s.sqnr_min)
        # Accepted only if the calibration SQNR does not fall (the table is monotone by construction).
        if steps and c < steps[-1].calib_sqnr_db:
            rejected.append(step)
        else:
            steps.append(step)
            # Best: the first configuration meeting the budget (fewest changes); until one does, the best
            # budget figure seen.
            if best is None or (step.meets and not best[1].meets) or (not best[1].meets and step.metric > best[1].metric):
                best = (model_io.from_bytes(out.model), step)
        if out_dir is not None and best is not None:
            _result(best, steps, rejected, False, "search in progress", ev, fallback, q, sensitivity, 0.0).save(out_dir)
        if progress:
            progress(f"{action}: {len(layers)} float, {len(wide)} a16: {ev.metric_name} {s.metric:.3f}, "
                     f"SQNR {s.sqnr_db:.2f} dB held-aside, {c:.2f} dB calibration"
                     f"{'' if step in steps else ' (rejected: calibration SQNR fell)'}")
        return step

    def until_met(action: str, configs: list[tuple[list[str], list[str], list[str]]], pool: Pool) -> None:
        """Measure (layers, exclude, wide) configurations in order up to the first meeting the budget. The
        executor evaluates ``pool.width`` of them at once; results are judged in order and those after the
        first meeting one are dropped, so the table is the serial search's, on any executor."""
        for at in range(0, len(configs), pool.width):
            window = configs[at:at + pool.width]
            outs = pool.map([(ex, wide) for _, ex, wide in window], want_model=True)
            for (layers, ex, wide), out in zip(window, outs):
                if record(action, layers, ex, wide, out).meets:
                    return

    _, details = q((), ())  # in-process first: it fixes the range rule every candidate then shares
    with Pool(q, ev, cev, jobs=jobs, use_ray=use_ray, address=ray_address) as pool:
        until_met("int8", [([], [], [])], pool)
        base = steps[0]
        wide: list[str] = []
        if not base.meets and a16 and RULES[tgt.scheme.get("placement", "ort")].a16:  # runs 16-bit Q/DQ
            acts = sorted((r for r in details.get("layers", []) if r.get("kind") == "activation"),
                          key=lambda r: r.get("expected_sqnr_db") if r.get("expected_sqnr_db") is not None
                          else math.inf)
            # "The few tensors that need them": at most ``a16_max`` of the quantized tensors go 16-bit (ORT
            # runs a 16-bit tensor's readers unfused, in float), the noisiest first.
            order_t = [str(r["tensor"]) for r in acts][: max(1, round(len(acts) * a16_max))]
            until_met("a16", [([], [], order_t[:k]) for k in sizes(len(order_t))], pool)
        if best is not None and not best[1].meets:
            wide = list(steps[-1].a16)
            fm_graph = q.float_model()
            all_c = candidates(fm_graph)
            order = sensitivity.ranking if sensitivity is not None else _local_ranking(fm_graph, q, calib_feeds[:8],
                                                                                        all_c)
            order = order[: max_steps] if max_steps else order
            configs = []
            for k in sizes(len(order)):
                exclude: list[str] = []
                for name in order[:k]:
                    exclude += [x for x in exclusion_unit(fm_graph, name) if x not in exclude]
                configs.append((order[:k], exclude, wide))
            until_met("float", configs, pool)
    assert best is not None
    b = best[1]
    met = b.meets
    figure = b.metric if ev.metric_name == "sqnr" else b.sqnr_db
    gaps = ([max(0.0, b.drop - max_drop)] if max_drop is not None else []) + (
        [max(0.0, min_sqnr - figure)] if min_sqnr is not None else [])
    gap = max(gaps) if gaps else 0.0
    what = f"{len(b.float_layers)} layer(s) kept {fallback}, {len(b.a16)} tensor(s) on 16 bits"
    head = f"{ev.metric_name} {b.metric:.3f} (drop {b.drop:.3f}), " if ev.metric_name != "sqnr" else ""
    figs = (f"{head}SQNR {b.sqnr_db:.2f} dB "
            f"(p10 {b.sqnr_p10:.2f}, min {b.sqnr_min:.2f}) on {len(ev.feeds)} held-aside samples")
    if met:
        msg = f"budget met with {what}: {figs}"
    else:
        n_all = len(candidates(float_model))
        limit = f" (max_steps: at most {max_steps} of {n_all} candidate layers kept float)" \
            if max_steps and max_steps < n_all else ""
        msg = (f"budget NOT met ({_budget(max_drop, min_sqnr, budget_on)}){limit}: short by {gap:.2f} "
               f"{'dB' if min_sqnr is not None and gap == gaps[-1] else 'points'}; best found, written anyway: "
               f"{what}, {figs}; see the Pareto table")
    result = _result(best, steps, rejected, met, msg, ev, fallback, q, sensitivity, gap)
    if out_dir is not None:
        result.save(out_dir)
    return result


def _local_ranking(float_model: ir.Model, q: Quantizer, feeds: Sequence[Feed], cands: list[str]) -> list[str]:
    """Candidates by the noise they add locally in the all-int8 model: relative noise power (against fp32)
    at the layer's unit output minus at its noisiest input, measured in one run with intermediate outputs."""
    qm, _ = q((), ())
    nodes = {n.name: n for n in float_model.graph}
    ends: dict[str, tuple[list[str], str]] = {}
    for name in cands:
        node = nodes[name]
        unit = exclusion_unit(float_model, name)
        last = next((nodes[u] for u in unit[1:] if nodes[u].inputs and nodes[u].inputs[0] is node.outputs[0]), node)
        ins = [v.name for v in node.inputs if v is not None and v.name and const_array(v) is None
               and v.dtype == ir.DataType.FLOAT]
        ends[name] = ([i for i in ins if i], last.outputs[0].name or "")
    qnames = {o.name for n in qm.graph for o in n.outputs} | {v.name for v in qm.graph.inputs}
    floats = {o.name for n in float_model.graph for o in n.outputs if o.dtype == ir.DataType.FLOAT}
    floats |= {v.name for v in float_model.graph.inputs}
    wanted = sorted({t for i, o in ends.values() for t in (*i, o) if t in qnames and t in floats})
    ref = runtime.run(runtime.session(calib.with_outputs(float_model, wanted), optimization="basic"), feeds)
    out = runtime.run(runtime.session(calib.with_outputs(qm, wanted), optimization="basic"), feeds)

    def noise(t: str) -> float:
        """Relative noise power (10^(-SQNR/10)): what a layer adds is a difference of powers, not of dB
        (a first conv taking its input from 120 to 40 dB adds nothing that matters)."""
        if t not in wanted:
            return 0.0
        v = metrics.sqnr_db(_cat(ref, t), _cat(out, t))
        return 10 ** (-v / 10) if math.isfinite(v) else (0.0 if v > 0 else 1.0)

    loss = {n: noise(o) - max((noise(i) for i in ins), default=0.0) for n, (ins, o) in ends.items()}
    return sorted(cands, key=lambda n: -loss[n])


def _cat(outs: Sequence[Feed], name: str) -> Any:
    import numpy as np

    return np.concatenate([np.asarray(o[name]).ravel() for o in outs])


def _result(best: tuple[ir.Model, Step], steps: list[Step], rejected: list[Step], met: bool, msg: str,
            ev: Evaluator, fallback: str, q: Quantizer, sens: SensitivityResult | None, gap: float) -> SearchResult:
    _mark_pareto(steps)
    return SearchResult(best[0], list(steps), met, msg, list(best[1].exclude), ev.metric_name, fallback,
                        q.kind, sens, list(best[1].a16), dict(q.fixed), list(rejected), ev.budget_on, gap)


def _mark_pareto(steps: list[Step]) -> None:
    """Pareto-optimal: no other step at least as good in metric, size (and latency, when timed) and better in one."""
    def lat(s: Step) -> float:
        return s.latency_ms if math.isfinite(s.latency_ms) else 0.0

    for s in steps:
        s.pareto = not any(
            o is not s and o.metric >= s.metric and lat(o) <= lat(s) and o.size_bytes <= s.size_bytes
            and (o.metric > s.metric or lat(o) < lat(s) or o.size_bytes < s.size_bytes) for o in steps)


def _budget(max_drop: float | None, min_sqnr: float | None, budget_on: str = "mean") -> str:
    parts = ([f"max drop {max_drop:g}"] if max_drop is not None else []) + (
        [f"min SQNR {min_sqnr:g} dB ({budget_on})"] if min_sqnr is not None else [])
    return ", ".join(parts)


def run_search(model: str | Path, target: str = "cpu-int8", calib: str | Path = "random", *,
               max_drop: float | None = None, min_sqnr: float | None = None, metric: str | None = None,
               eval_spec: str | Path | None = None, out_dir: str | Path | None = None, equalize: bool = False,
               bias_correct: bool = False, limit: int | None = None, preprocess: Any = None,
               target_file: str | Path | None = None, budget_on: str = "mean", max_steps: int | None = None,
               progress: Callable[[str], Any] | None = None, jobs: int = 1, use_ray: bool = False,
               ray_address: str | None = None) -> SearchResult:
    """``edgec compile MODEL --target T --calib C --max-drop P | --min-sqnr DB [-o DIR]``: the search, then
    the best model + pareto.json/pareto.txt in ``out_dir`` (written even when the budget is not met).

    The caller then compiles for the target's backend with ``options={"exclude": result.exclude}`` (the
    quantize pass keeps those nodes float), so TensorRT/TFLite artifacts match the searched model."""
    tgt = targets.get(target, target_file)
    loaded = model_io.load(model)
    cal, ev, _ = split_feeds(loaded, calib, eval_spec, limit=limit, preprocess=preprocess)
    return search(loaded, tgt, cal, ev, max_drop=max_drop, min_sqnr=min_sqnr, metric=metric, out_dir=out_dir,
                  equalize=equalize, bias_correct=bias_correct, budget_on=budget_on, max_steps=max_steps,
                  progress=progress, jobs=jobs, use_ray=use_ray, ray_address=ray_address)
