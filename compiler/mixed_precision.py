"""Budgeted mixed precision: keep the layers that hurt most float until a user's budget is met.

Start all-int8 and keep the most sensitive layers (``sensitivity.analyze``'s ranking) float one at a
time, measuring every step on held-aside data: metric, SQNR, latency (ONNX Runtime, 2 threads, median)
and size. Stop when the budget (``max_drop`` metric points below fp32 and/or ``min_sqnr`` dB) is met.
The result ALWAYS carries the best model found and the Pareto table (metric vs latency vs size), with
``met`` and a message saying why not when the budget could not be reached.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import onnx_ir as ir

from edgec import metrics, model_io, runtime, targets
from edgec.errors import EdgecError
from edgec.pass_infra import Feed
from edgec.sensitivity import (
    Evaluator,
    MetricFn,
    Quantizer,
    Score,
    SensitivityResult,
    _finite,
    analyze,
    candidates,
    exclusion_unit,
    prepare_float,
    split_feeds,
)


# ---------------------------------------------------------------------------------- mixed precision
@dataclasses.dataclass
class Step:
    """One measured configuration of the greedy search."""

    float_layers: list[str]  # the weighted layers kept float, in the order they were added
    metric: float
    drop: float
    sqnr_db: float
    top1: float | None
    latency_ms: float
    size_bytes: int
    meets: bool
    pareto: bool = False
    exclude: list[str] = dataclasses.field(default_factory=list)  # node names given to quantize (+ activations)

    def to_dict(self) -> dict[str, Any]:
        return {k: _finite(v) for k, v in dataclasses.asdict(self).items()}


@dataclasses.dataclass
class SearchResult:
    best_model: ir.Model
    table: list[Step]
    met: bool
    message: str
    exclude: list[str]  # node names kept float in best_model: pass as options["exclude"] to edgec.compile
    metric: str = "sqnr"
    fallback_precision: str = "fp32"  # what the backend runs the kept-float layers in
    quantizer: str = "quantize pass"
    sensitivity: SensitivityResult | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"met": self.met, "message": self.message, "exclude": self.exclude, "metric": self.metric,
                "fallback_precision": self.fallback_precision, "quantizer": self.quantizer,
                "table": [s.to_dict() for s in self.table],
                "sensitivity": self.sensitivity.to_dict() if self.sensitivity else None}

    def pareto_table(self) -> str:
        lines = [(f"{'float layers':>12} {self.metric:>10} {'drop':>8} {'SQNR dB':>8} {'latency ms':>10} "
                  f"{'size KB':>9}  budget  pareto  last layer added")]
        for s in self.table:
            last = s.float_layers[-1] if s.float_layers else "-"
            drop = f"{s.drop:>8.3f}" if math.isfinite(s.drop) else f"{'-':>8}"
            lines.append(f"{len(s.float_layers):>12} {s.metric:>10.3f} {drop} {s.sqnr_db:>8.2f} "
                         f"{s.latency_ms:>10.3f} {s.size_bytes / 1024:>9.1f}  {'met' if s.meets else '-':<6}  "
                         f"{'*' if s.pareto else ' ':<6}  {last}")
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


def search(model: str | Path | ir.Model, target: str | targets.Target, calib_feeds: Sequence[Feed],
           eval_feeds: Sequence[Feed], *, max_drop: float | None = None, min_sqnr: float | None = None,
           metric: str | MetricFn | None = None, max_steps: int | None = None, equalize: bool = False,
           bias_correct: bool = False, options: Mapping[str, Any] | None = None,
           out_dir: str | Path | None = None, sensitivity: SensitivityResult | None = None,
           quantizer: Quantizer | None = None, latency_runs: int = 20,
           progress: Callable[[str], Any] | None = None) -> SearchResult:
    """Greedy budgeted mixed precision; see the module docstring. Never returns without a model.

    ``model``: the input model (path or IR); the target's float pipeline (everything before ``quantize``)
    runs first. ``max_drop``: metric points below fp32 allowed (metric defaults to top1 agreement when the
    outputs are logits, else sqnr); ``min_sqnr``: output SQNR floor in dB. ``equalize`` runs
    ``equalize:clip=split`` before quantizing; ``bias_correct`` corrects biases after. With ``out_dir`` the
    best model so far and the table are rewritten after every step, so even an interrupted run leaves them.
    ``quantizer`` (from an earlier ``analyze``/``search`` on the same float model and scheme) reuses its
    calibration and quantized configurations; ``model`` is then ignored in favour of its float model.
    """
    if max_drop is None and min_sqnr is None:
        raise EdgecError("mixed precision needs a budget", hint="--max-drop POINTS or --min-sqnr DB")
    tgt = target if isinstance(target, targets.Target) else targets.get(target)
    if tgt.precision != "int8":
        raise EdgecError(f"target '{tgt.name}' is not an int8 target: nothing to keep in float",
                         hint="use cpu-int8, jetson-int8 or tflite-int8")
    if quantizer is not None:
        if quantizer.scheme != dict(tgt.scheme):
            raise EdgecError(f"the quantizer given was built for another scheme than target '{tgt.name}'")
        float_model = quantizer.float_model()
    else:
        float_model = prepare_float(model, tgt, list(calib_feeds)[:4], equalize=equalize)
    if metric is None:
        metric = "sqnr"
        if max_drop is not None:
            ref = runtime.run(runtime.session(float_model, optimization="basic"), list(eval_feeds)[:1])
            metric = "top1" if metrics.drift(ref, ref).top1 is not None else "sqnr"
    if max_drop is not None and metric == "sqnr":
        raise EdgecError("--max-drop with the sqnr metric has no fp32 reference value to drop from",
                         hint="use --min-sqnr DB, or --metric top1 / module:function")
    if bias_correct:
        # The quantize pass has its own (analytic, per-channel-mean) bias correction: one correction, not two.
        options = {**dict(options or {}), "bias_correction": False}
    q = quantizer or Quantizer(float_model, tgt.scheme, calib_feeds, options)
    ev = Evaluator(float_model, eval_feeds, metric)
    fallback = "fp16" if tgt.backend in ("tensorrt", "tflite") else "fp32"

    def meets(s: Score) -> bool:
        return (max_drop is None or s.drop <= max_drop + 1e-9) and (min_sqnr is None or s.sqnr_db >= min_sqnr)

    check_feeds = list(calib_feeds)[:8]
    check = (check_feeds, runtime.run(runtime.session(float_model, optimization="basic"), check_feeds))

    def build(exclude: list[str]) -> ir.Model:
        m, _ = q(exclude)
        if bias_correct:
            from edgec.passes.bias_correct import correct_biases

            # Guarded on calibration samples (never the evaluation data the budget is judged on).
            correct_biases(m, float_model, list(calib_feeds)[:64], int32_bias=tgt.scheme.get("bias", "int32") == "int32",
                           check=check)
        return m

    steps: list[Step] = []
    best: tuple[ir.Model, Step] | None = None

    def measure(layers: list[str], exclude: list[str]) -> Step:
        nonlocal best
        m = build(exclude)
        s = ev.score(m)
        sess = runtime.session(m, threads=2)
        lat = runtime.time_session(sess, ev.feeds[0], runs=latency_runs, warmup=3)["median_ms"]
        step = Step(list(layers), s.metric, s.drop, s.sqnr_db, s.top1, lat, metrics.summarize(m).bytes, meets(s),
                    exclude=list(exclude))
        steps.append(step)
        # Best: the first configuration meeting the budget (fewest float layers); until one does, the
        # best metric seen.
        if best is None or (step.meets and not best[1].meets) or (not best[1].meets and step.metric > best[1].metric):
            best = (m, step)
        if out_dir is not None:
            _result(best, steps, False, "search in progress", ev, fallback, q, sensitivity).save(out_dir)
        if progress:
            progress(f"{len(layers)} float layers: {ev.metric_name} {s.metric:.3f}, SQNR {s.sqnr_db:.2f} dB")
        return step

    step = measure([], [])
    if not step.meets:
        sens = sensitivity or analyze(float_model, tgt.scheme, calib_feeds, eval_feeds, metric=metric,
                                      quantizer=q, evaluator=ev)
        sensitivity = sens
        order = sens.ranking[: max_steps] if max_steps else sens.ranking
        layers: list[str] = []
        exclude: list[str] = []
        for name in order:
            # Cumulative, even when a step loses: excluding a layer moves Q/DQ onto its neighbours' tensors,
            # so a pair (an outlier's producer and consumer) can help only together. The best step wins.
            layers = [*layers, name]
            exclude = [*exclude, *(x for x in exclusion_unit(float_model, name) if x not in exclude)]
            if measure(layers, exclude).meets:
                break
    assert best is not None
    met = best[1].meets
    b = best[1]
    if met:
        msg = (f"budget met with {len(b.float_layers)} layer(s) kept {fallback}: {ev.metric_name} {b.metric:.3f} "
               f"(drop {b.drop:.3f}), SQNR {b.sqnr_db:.2f} dB")
    else:
        n_all = len(candidates(float_model))
        tried = len(steps) - 1
        why = (f"even with all {n_all} candidate layers kept float, the tensors still quantized (the target's "
               f"placement quantizes pass-through and activation ops too) keep it out of reach" if tried >= n_all
               else f"the search stopped after trying {tried} of {n_all} candidate layers (max_steps)")
        msg = (f"budget NOT met ({_budget(max_drop, min_sqnr)}): {why}. Best found, written anyway: "
               f"{len(b.float_layers)} layer(s) kept {fallback}, {ev.metric_name} {b.metric:.3f} "
               f"(drop {b.drop:.3f}), SQNR {b.sqnr_db:.2f} dB; see the Pareto table")
    result = _result(best, steps, met, msg, ev, fallback, q, sensitivity)
    if out_dir is not None:
        result.save(out_dir)
    return result


def _result(best: tuple[ir.Model, Step], steps: list[Step], met: bool, msg: str, ev: Evaluator, fallback: str,
            q: Quantizer, sens: SensitivityResult | None) -> SearchResult:
    _mark_pareto(steps)
    return SearchResult(best[0], list(steps), met, msg, list(best[1].exclude), ev.metric_name, fallback,
                        q.kind, sens)


def _mark_pareto(steps: list[Step]) -> None:
    """A step is Pareto-optimal when no other is at least as good in metric, latency and size and better in one."""
    for s in steps:
        s.pareto = not any(
            o is not s and o.metric >= s.metric and o.latency_ms <= s.latency_ms and o.size_bytes <= s.size_bytes
            and (o.metric > s.metric or o.latency_ms < s.latency_ms or o.size_bytes < s.size_bytes) for o in steps)


def _budget(max_drop: float | None, min_sqnr: float | None) -> str:
    parts = ([f"max drop {max_drop:g}"] if max_drop is not None else []) + (
        [f"min SQNR {min_sqnr:g} dB"] if min_sqnr is not None else [])
    return ", ".join(parts)


def run_search(model: str | Path, target: str = "cpu-int8", calib: str | Path = "random", *,
               max_drop: float | None = None, min_sqnr: float | None = None, metric: str | None = None,
               eval_spec: str | Path | None = None, out_dir: str | Path | None = None, equalize: bool = False,
               bias_correct: bool = False, limit: int | None = None, preprocess: Any = None,
               target_file: str | Path | None = None, progress: Callable[[str], Any] | None = None) -> SearchResult:
    """``edgec compile MODEL --target T --calib C --max-drop P | --min-sqnr DB [-o DIR]``: the search, then
    the best model + pareto.json/pareto.txt in ``out_dir`` (written even when the budget is not met).

    The caller then compiles for the target's backend with ``options={"exclude": result.exclude}`` (the
    quantize pass keeps those nodes float), so TensorRT/TFLite artifacts match the searched model."""
    tgt = targets.get(target, target_file)
    loaded = model_io.load(model)
    cal, ev, _ = split_feeds(loaded, calib, eval_spec, limit=limit, preprocess=preprocess)
    return search(loaded, tgt, cal, ev, max_drop=max_drop, min_sqnr=min_sqnr, metric=metric, out_dir=out_dir,
                  equalize=equalize, bias_correct=bias_correct, progress=progress)
