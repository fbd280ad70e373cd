"""Why int8 hurts, layer by layer, and how much float it takes to fix it within a budget.

Sensitivity analysis (``analyze``): every quantizable layer (Conv, Gemm, MatMul with a constant weight)
is measured twice on held-aside data against the fp32 model: quantized ALONE (everything else float:
the noise this layer injects) and left float while ALL OTHERS are quantized (what keeping it float
buys back). Layers are ranked by the first (lowest output SQNR / metric first); both columns are
reported. A layer whose weights or input hold an outlier channel stands out in both.

The budgeted search that keeps the worst layers float lives in ``edgec.mixed_precision``.

Quantization runs the registered ``quantize`` pass (with ``options["exclude"]``), so the numbers are
those of what ships.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from edgec import metrics, model_io, runtime, settings, targets
from edgec.context import CalibStats
from edgec.errors import EdgecError
from edgec.graph import const_array, nodes_of
from edgec.pass_infra import Feed, PassContext, parse_pipeline
from edgec.passes.quantize.placement import ACTIVATIONS

LAYER_OPS = ("Conv", "Gemm", "MatMul")
QUANTIZE = "quantize"  # the registered pass that inserts Q/DQ; the stage holding it starts the int8 part
#: a user metric: (candidate outputs, fp32 outputs) per eval feed -> a score, higher is better
MetricFn = Callable[[Sequence[Feed], Sequence[Feed]], float]


# ------------------------------------------------------------------------------------------ quantizing
def quantizable_layers(model: ir.Model) -> list[str]:
    """Names of the layers int8 applies to: Conv / Gemm / MatMul whose weight (input 1) is a float constant."""
    out = []
    for node in nodes_of(model.graph, *LAYER_OPS):
        w = const_array(node.inputs[1]) if len(node.inputs) > 1 else None
        if w is not None and w.dtype.kind == "f" and node.name:
            out.append(node.name)
    return out


# Weightless ops the int8 runtimes run in int8 with their own output scale (a residual Add, a Concat, a
# pooling): their quantized tensors cost accuracy too, so they are candidates for staying float as well.
TENSOR_OPS = ("Add", "Mul", "Concat", "AveragePool", "GlobalAveragePool", "Sigmoid", "LeakyRelu", "Softmax")


def candidates(model: ir.Model) -> list[str]:
    """What sensitivity ranks and the search may keep float: the weighted layers, then the named
    weightless int8 ops (TENSOR_OPS) reading a computed tensor. A Mul/Add by a constant counts too:
    left out, PP-LCNet's dropout scale (x * c before the classifier) stayed int8 with every candidate
    float (84 dB instead of fp32 on text crops)."""
    out = quantizable_layers(model)
    for node in nodes_of(model.graph, *TENSOR_OPS):
        if node.name and any(v is not None and const_array(v) is None for v in node.inputs):
            out.append(node.name)
    return out


# Elementwise activations next to a layer: excluded together with it, so the float layer reads a float
# input (not its neighbour's re-quantized activation) and writes a float output.
_ACTIVATIONS = ACTIVATIONS


def exclusion_unit(model: ir.Model, layer: str) -> list[str]:
    """``layer`` plus the activation nodes directly before and after it: what keeping it float means."""
    node = next((n for n in model.graph if n.name == layer), None)
    if node is None:
        return [layer]
    unit = [layer]
    x = node.inputs[0]
    prod = x.producer() if x is not None else None
    if prod is not None and prod.op_type in _ACTIVATIONS and prod.name:
        unit.append(prod.name)
    users = list(node.outputs[0].consumers())
    if len(users) == 1 and users[0].op_type in _ACTIVATIONS and users[0].name:
        unit.append(users[0].name)
    return unit


class Quantizer:
    """Quantize one float model many times with different exclude / 16-bit lists, calibrating once.

    ``scheme`` is the target's numeric scheme (targets.toml). The ``quantize`` pass does the work, run by
    the Manager (validity check and record; no drift run: callers score the result themselves). Shared
    between configurations: the statistics of every tensor any of them may quantize (one calibration
    pass over the union, ``calib_union``), and ONE range rule and bias-correction choice, the one
    ``auto`` picks for the all-int8 model. Choosing per configuration made keeping layers float look
    harmful: on PP-LCNet it flipped from minmax (all int8) to percentile (one layer float) and the output
    SQNR fell 4 dB for a change that only removed noise.
    """

    def __init__(self, model: ir.Model, scheme: Mapping[str, Any], calib_feeds: Sequence[Feed],
                 options: Mapping[str, Any] | None = None, passes: Sequence[str] = (QUANTIZE,)) -> None:
        self.float_bytes = model_io.to_bytes(model)
        self.scheme = dict(scheme)
        self.feeds = list(calib_feeds)
        # Per-layer SQNR rows of the quantize pass cost one ORT run per layer and are not used here.
        self.options = {"layer_sqnr": False, **dict(options or {})}
        #: the int8 part of the target's pipeline (split_pipeline), run by the Manager per configuration
        self.passes = tuple(passes)
        self.kind = "quantize pass"
        self.union: dict[str, Any] | None = None  # statistics of every float tensor (calibrated once)
        self.calibration: CalibStats | None = None  # the last quantize run's, reused by the next
        self.fixed: dict[str, Any] = {}  # calib_method / bias_correction chosen on the all-int8 model
        # Searches revisit configurations (the analysis's all-but-one runs are the search's first steps).
        self._memo: dict[tuple[tuple[str, ...], tuple[str, ...]], tuple[bytes, dict[str, Any]]] = {}
        self.remember = True  # a worker's copy (from_state) sees each configuration once: no memo

    def state(self) -> dict[str, Any]:
        """What a worker needs to quantize exactly as this object does, as plain data (no models, no paths):
        the float bytes, the feeds, the options and choices fixed so far and the shared statistics."""
        self._union()
        return {"float_bytes": self.float_bytes, "scheme": self.scheme, "feeds": self.feeds, "options": self.options,
                "passes": self.passes, "fixed": dict(self.fixed), "union": self.union,
                "calibration": self.calibration}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Quantizer:
        q = cls.__new__(cls)
        q.float_bytes, q.scheme, q.feeds = state["float_bytes"], dict(state["scheme"]), list(state["feeds"])
        q.options, q.passes, q.kind = dict(state["options"]), tuple(state["passes"]), "quantize pass"
        q.union, q.calibration = state["union"], state["calibration"]
        q.fixed, q._memo, q.remember = dict(state["fixed"]), {}, False
        return q

    def float_model(self) -> ir.Model:
        return model_io.from_bytes(self.float_bytes)

    def __call__(self, exclude: Sequence[str] = (), wide: Sequence[str] = ()) -> tuple[ir.Model, dict[str, Any]]:
        """The model with ``exclude`` (node names) float and ``wide`` (node names) on 16-bit activations."""
        ex = tuple(sorted(set(exclude)))
        key = (ex, tuple(sorted(set(wide) - set(ex))))
        if key not in self._memo:
            model, details = self._quantize(list(key[0]), list(key[1]))
            if self.remember:
                self._memo[key] = (model_io.to_bytes(model), details)
            return model, details
        data, details = self._memo[key]
        return model_io.from_bytes(data), dict(details)

    def _union(self) -> None:
        """Statistics of every float tensor of the decomposed float model, in one calibration pass."""
        if self.union is not None:
            return
        from edgec import calib
        from edgec.graph import infer_shapes
        from edgec.passes.quantize.decompose import decompose_hard_activations
        from edgec.passes.quantize.placement import WEIGHTED
        from edgec.passes.quantize.ranges import name_values

        m = self.float_model()
        infer_shapes(m)
        name_values(m.graph)  # the names the quantize pass gives unnamed values (same order, same names)
        decompose_hard_activations(m.graph)  # a kept HardSwish's input/output names are the pieces' ends
        names = [v.name for v in m.graph.inputs if v.name and v.dtype == ir.DataType.FLOAT]
        names += [o.name for n in m.graph for o in n.outputs if o.name and o.dtype == ir.DataType.FLOAT
                  and n.op_type not in ("Constant", "Shape")]
        chan = {n.inputs[0].name for n in m.graph if n.op_type in WEIGHTED and n.inputs and n.inputs[0] is not None}
        self.union = calib.collect(m, names, self.feeds, channels={c for c in chan if c})

    def _quantize(self, exclude: list[str], wide: list[str]) -> tuple[ir.Model, dict[str, Any]]:
        from edgec.manager import Manager

        self._union()
        model = self.float_model()
        user = settings.resolve({**self.options, **self.fixed, "exclude": list(exclude), "a16": list(wide)})
        ctx = user.context(samples=self.feeds[:4], calib=self.feeds, scheme=self.scheme, calib_union=self.union,
                           float_reference=self.float_bytes, calibration=self.calibration)
        mgr = Manager(ctx, check_drift=False)
        model = mgr.run(model, user.configure(parse_pipeline(list(self.passes))))
        self.calibration = ctx.calibration
        details = dict(mgr.records[1].details)  # the first pass of the int8 part: quantize (records[0]: input)
        if not self.fixed and "calib_method" not in self.options and "method" in details:
            self.fixed = {"calib_method": details["method"], "bias_correction": bool(details.get("bias_correction"))}
        return model, details


# ------------------------------------------------------------------------------------------- metrics
@dataclasses.dataclass
class Score:
    """One model measured on the evaluation feeds against fp32."""

    sqnr_db: float
    top1: float | None  # agreement with fp32 argmax, in percent
    metric: float  # the search metric, higher is better (sqnr: the ``budget_on`` figure)
    drop: float  # fp32 metric - metric, in the metric's points
    sqnr_p10: float = math.nan  # 10th percentile of the per-sample SQNR
    sqnr_min: float = math.nan  # the worst sample's SQNR


BUDGET_ON = ("mean", "p10", "min")


def resolve_metric(metric: str | MetricFn) -> tuple[str, MetricFn | None]:
    """'sqnr' | 'top1' | 'module:function' | a callable -> (name, user function or None)."""
    if callable(metric):
        return getattr(metric, "__name__", "user"), metric
    if metric in ("sqnr", "top1"):
        return metric, None
    if ":" in metric:
        mod, _, fn = metric.partition(":")
        try:
            return metric, getattr(importlib.import_module(mod), fn)
        except (ImportError, AttributeError) as exc:
            raise EdgecError(f"metric '{metric}': {exc}", hint="give module:function taking (outputs, fp32_outputs)")
    raise EdgecError(f"unknown metric '{metric}'", hint="sqnr, top1 or module:function")


class Evaluator:
    """Runs candidates on the evaluation feeds and scores them against the fp32 outputs."""

    def __init__(self, float_model: ir.Model, eval_feeds: Sequence[Feed], metric: str | MetricFn = "sqnr",
                 budget_on: str = "mean") -> None:
        """``budget_on`` (metric sqnr): 'mean' the aggregate SQNR over all samples, 'p10' the 10th percentile
        of the per-sample SQNR (metrics.per_sample_sqnr), 'min' the worst sample."""
        if budget_on not in BUDGET_ON:
            raise EdgecError(f"unknown budget figure '{budget_on}'", hint=" | ".join(BUDGET_ON))
        self.budget_on = budget_on
        if not eval_feeds:
            raise EdgecError("sensitivity/mixed precision needs evaluation data", hint="pass --calib (held-aside part)")
        self.feeds = list(eval_feeds)
        self.reference = runtime.run(runtime.session(float_model, optimization="basic"), self.feeds)
        self.metric_name, self.fn = resolve_metric(metric)
        if self.metric_name == "top1" and metrics.drift(self.reference, self.reference).top1 is None:
            raise EdgecError("metric top1: the model's outputs do not look like logits [N, classes]",
                             hint="use --metric sqnr or a module:function metric")
        self.fp32_metric = self._metric(self.reference)

    @classmethod
    def from_reference(cls, feeds: Sequence[Feed], reference: Sequence[Feed], metric: str | MetricFn,
                       budget_on: str = "mean") -> Evaluator:
        """An evaluator whose fp32 outputs were computed elsewhere (a worker gets them, not the float model)."""
        ev = cls.__new__(cls)
        ev.budget_on, ev.feeds, ev.reference = budget_on, list(feeds), list(reference)
        ev.metric_name, ev.fn = resolve_metric(metric)
        ev.fp32_metric = ev._metric(ev.reference)
        return ev

    def _metric(self, outputs: Sequence[Feed]) -> float:
        if self.fn is not None:
            return float(self.fn(outputs, self.reference))
        d = metrics.drift(self.reference, outputs)
        if self.metric_name == "top1":
            return 100.0 * (d.top1 if d.top1 is not None else 0.0)
        if self.budget_on != "mean":
            per = metrics.per_sample_sqnr(self.reference, outputs)
            return float(np.percentile(per, 10, method="lower") if self.budget_on == "p10" else per.min())
        return float(d.sqnr_db)

    def outputs(self, model: ir.Model | bytes, session: Any = None) -> list[Feed]:
        return runtime.run(session or runtime.session(model, optimization="basic"), self.feeds)

    def score(self, model: ir.Model | bytes, session: Any = None) -> Score:
        """``session``: an ONNX Runtime session of ``model`` already built (one per configuration, shared)."""
        outs = self.outputs(model, session)
        d = metrics.drift(self.reference, outs)
        m = self._metric(outs)
        drop = 0.0 if math.isinf(self.fp32_metric) and math.isinf(m) else self.fp32_metric - m
        per = metrics.per_sample_sqnr(self.reference, outs)
        return Score(float(d.sqnr_db), None if d.top1 is None else 100.0 * d.top1, m, drop,
                     float(np.percentile(per, 10, method="lower")), float(per.min()))


# --------------------------------------------------------------------------------------- sensitivity
@dataclasses.dataclass
class LayerSensitivity:
    layer: str
    op: str
    params: int
    only_sqnr_db: float  # only this layer int8
    only_metric: float
    all_but_sqnr_db: float  # every other layer int8, this one float
    all_but_metric: float
    gain: float  # all_but_metric - all-int8 metric: what keeping it float buys

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class SensitivityResult:
    rows: list[LayerSensitivity]  # most sensitive first
    metric: str
    fp32_metric: float
    int8_metric: float
    int8_sqnr_db: float
    quantizer: str

    @property
    def ranking(self) -> list[str]:
        return [r.layer for r in self.rows]

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "fp32_metric": _finite(self.fp32_metric), "int8_metric": _finite(self.int8_metric),
                "int8_sqnr_db": _finite(self.int8_sqnr_db), "quantizer": self.quantizer,
                "layers": [{k: _finite(v) for k, v in r.to_dict().items()} for r in self.rows]}

    def table(self, top: int | None = None) -> str:
        """A plain-text table plus a bar per layer (the output SQNR when only it is int8)."""
        rows = self.rows[:top] if top else self.rows
        worst = max((r.only_sqnr_db for r in rows if math.isfinite(r.only_sqnr_db)), default=60.0)
        lines = [(f"{'rank':>4}  {'layer':<44} {'op':<7} {'only int8 dB':>12} {'all-but dB':>10} "
                  f"{'gain':>8}  bar (lower SQNR = longer)")]
        for i, r in enumerate(rows, 1):
            bar = "#" * max(1, round(40 * (1 - min(r.only_sqnr_db, worst) / max(worst, 1e-9)))) \
                if math.isfinite(r.only_sqnr_db) else ""
            lines.append(f"{i:>4}  {r.layer[-44:]:<44} {r.op:<7} {r.only_sqnr_db:>12.2f} {r.all_but_sqnr_db:>10.2f} "
                         f"{r.gain:>8.2f}  {bar}")
        return "\n".join(lines)

    def bar_plot(self, path: str | Path, top: int = 20) -> Path:
        """Write ``svg(top)`` to ``path``."""
        p = Path(path)
        p.write_text(self.svg(top))
        return p

    def svg(self, top: int = 20) -> str:
        """An SVG bar chart (no plotting dependency; inline it in HTML): output SQNR with only that layer int8."""
        rows = self.rows[:top]
        finite = [r.only_sqnr_db for r in rows if math.isfinite(r.only_sqnr_db)] or [1.0]
        hi = max(finite)
        h = 22 * len(rows) + 40
        parts = [(f'<svg xmlns="http://www.w3.org/2000/svg" width="760" height="{h}" font-family="monospace" '
                  f'font-size="11"><text x="4" y="14">output SQNR (dB) with only this layer int8 - lower is more '
                  f'sensitive</text>')]
        for i, r in enumerate(rows):
            y = 24 + 22 * i
            v = r.only_sqnr_db if math.isfinite(r.only_sqnr_db) else hi
            w = 380 * max(v, 0.0) / max(hi, 1e-9)
            parts.append(f'<text x="4" y="{y + 13}">{_xml(r.layer[-40:])}</text>'
                         f'<rect x="300" y="{y}" width="{w:.1f}" height="16" fill="#c0504d"/>'
                         f'<text x="{304 + w:.1f}" y="{y + 13}">{v:.1f}</text>')
        parts.append("</svg>")
        return "".join(parts)


def analyze(model: ir.Model, scheme: Mapping[str, Any], calib_feeds: Sequence[Feed], eval_feeds: Sequence[Feed],
            *, metric: str | MetricFn = "sqnr", layers: Sequence[str] | None = None,
            options: Mapping[str, Any] | None = None, quantizer: Quantizer | None = None,
            evaluator: Evaluator | None = None, progress: Callable[[int, int], Any] | None = None,
            jobs: int = 1, use_ray: bool = False, ray_address: str | None = None) -> SensitivityResult:
    """Quantize one layer at a time and all-but-one at a time; rank layers, most sensitive first.

    ``model`` is the float model as it enters quantization (after fuse-bn etc.). The 2 x layers candidate
    evaluations run through ``build.Executor`` (``jobs`` local processes, or Ray tasks with ``use_ray``);
    the result is the same whatever runs them.
    """
    from edgec.candidates import Pool

    q = quantizer or Quantizer(model, scheme, calib_feeds, options)
    ev = evaluator or Evaluator(model, eval_feeds, metric)
    all_layers = candidates(model)
    todo = list(layers) if layers is not None else all_layers
    unknown = [name for name in todo if name not in all_layers]
    if unknown:
        raise EdgecError(f"not quantizable layers: {', '.join(unknown[:5])}",
                         hint="Conv/Gemm/MatMul or Add/Concat/pooling node names")
    ops = {n.name: n for n in model.graph.all_nodes()}
    full, _ = q(())  # first, in-process: it fixes the range rule every candidate then shares
    base = ev.score(full)
    rows = []
    units = {n: exclusion_unit(model, n) for n in all_layers}
    configs: list[tuple[list[str], list[str]]] = []
    for name in todo:
        configs.append(([x for n in all_layers if n != name for x in units[n] if x not in units[name]], []))
        configs.append((units[name], []))
    with Pool(q, ev, jobs=jobs, use_ray=use_ray, address=ray_address) as pool:
        pending = pool.submit(configs)  # all at once: the executor keeps its workers busy
        outcomes = []
        for i in range(len(todo)):
            outcomes += [pending[2 * i](), pending[2 * i + 1]()]
            if progress:
                progress(i + 1, len(todo))
    for i, name in enumerate(todo):
        s_only, s_but = outcomes[2 * i].score, outcomes[2 * i + 1].score
        w = const_array(ops[name].inputs[1]) if len(ops[name].inputs) > 1 else None
        rows.append(LayerSensitivity(name, ops[name].op_type, int(w.size) if w is not None else 0,
                                     s_only.sqnr_db, s_only.metric, s_but.sqnr_db, s_but.metric,
                                     s_but.metric - base.metric))
    # Most sensitive first: the lowest metric when quantized alone, ties broken by the larger gain.
    rows.sort(key=lambda r: (r.only_metric, -r.gain))
    return SensitivityResult(rows, ev.metric_name, ev.fp32_metric, base.metric, base.sqnr_db, q.kind)


def split_pipeline(tgt: targets.Target) -> tuple[list[str], list[str]]:
    """(float part, int8 part) of an int8 target, from its stages: the float part is every stage before
    the one holding the ``quantize`` pass plus the exact passes that stage runs before it (equalize-act
    rescales the float model: calibration must see its result), the int8 part the rest of that stage.
    Later stages (legalize-*) belong to the artifact's compile, not to the float model."""
    stages = [list(ps) for _, ps in tgt.stages] or [list(tgt.passes)]
    for i, passes in enumerate(stages):
        parsed = parse_pipeline(passes)
        at = next((j for j, p in enumerate(parsed) if p.name == QUANTIZE), None)
        if at is not None:
            head = next(j for j, p in enumerate(parsed) if j == at or not p.is_exact())
            return [p for st in stages[:i] for p in st] + passes[:head], passes[head:]
    raise EdgecError(f"target '{tgt.name}' has no stage with the {QUANTIZE} pass",
                     hint=f"its stages: {tgt.outline()}")


def prepare_float(model: str | Path | ir.Model, tgt: targets.Target, samples: Sequence[Feed],
                  equalize: bool = False) -> ir.Model:
    """The float part of the target's pipeline (``split_pipeline``), plus equalization when asked."""
    from edgec.manager import Manager

    loaded = model if isinstance(model, ir.Model) else model_io.load(model)
    loaded = model_io.clone(loaded)
    specs = split_pipeline(tgt)[0]
    if equalize and not any(p.startswith("equalize") for p in specs):
        specs.append("equalize:clip=split")
    ctx = PassContext(samples=list(samples), scheme=tgt.scheme, target=tgt)
    return Manager(ctx).run(loaded, parse_pipeline(specs))


def _finite(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def _xml(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# ------------------------------------------------------------------------------------------ CLI entry
def split_feeds(model: ir.Model, calib: str | Path, eval_spec: str | Path | None = None, *,
                limit: int | None = None, preprocess: Any = None,
                eval_fraction: float = 0.25) -> tuple[list[Feed], list[Feed], list[str]]:
    """Calibration and held-aside evaluation feeds: ``eval_spec`` when given, else the last
    ``eval_fraction`` of ``calib`` (never used for calibration). Returns (calib, eval, warnings)."""
    from edgec import data

    warnings = []
    src = data.load_feeds(calib, model, limit=limit, preprocess=preprocess)
    assert src is not None
    if src.synthetic:
        warnings.append(data.RANDOM_WARNING)
    feeds = list(src)
    if eval_spec is not None:
        ev_src = data.load_feeds(eval_spec, model, limit=limit, preprocess=preprocess)
        assert ev_src is not None
        return feeds, list(ev_src), warnings
    if len(feeds) < 4:
        raise EdgecError(f"--calib gives {len(feeds)} samples: too few to hold some aside for evaluation",
                         hint="give more samples or a separate --eval set")
    n_eval = max(1, round(len(feeds) * eval_fraction))
    return feeds[:-n_eval], feeds[-n_eval:], warnings


def run_sensitivity(model: str | Path, target: str = "cpu-int8", calib: str | Path = "random", *,
                    eval_spec: str | Path | None = None, metric: str = "sqnr", out_dir: str | Path | None = None,
                    limit: int | None = None, preprocess: Any = None, target_file: str | Path | None = None,
                    progress: Callable[[int, int], Any] | None = None, jobs: int = 1, use_ray: bool = False,
                    ray_address: str | None = None) -> SensitivityResult:
    """``edgec sensitivity MODEL --target T --calib C [--eval E] [--metric sqnr|top1|mod:fn] [-o DIR]``.

    With ``out_dir``: sensitivity.json, sensitivity.txt (table) and sensitivity.svg (bar plot). ``jobs`` /
    ``use_ray`` / ``ray_address``: where the candidate evaluations run (``-j N``, ``--ray [ADDRESS]``)."""
    tgt = targets.get(target, target_file)
    if tgt.precision != "int8":
        raise EdgecError(f"target '{tgt.name}' is not an int8 target", hint="cpu-int8, jetson-int8 or tflite-int8")
    loaded = model_io.load(model)
    cal, ev, warns = split_feeds(loaded, calib, eval_spec, limit=limit, preprocess=preprocess)
    fm = prepare_float(loaded, tgt, cal[:4])
    q = Quantizer(fm, tgt.scheme, cal, passes=split_pipeline(tgt)[1])
    res = analyze(fm, tgt.scheme, cal, ev, metric=metric, progress=progress, quantizer=q, jobs=jobs,
                  use_ray=use_ray, ray_address=ray_address)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        body = {**res.to_dict(), "target": tgt.name, "eval_samples": len(ev), "calib_samples": len(cal),
                "warnings": warns}
        with model_io.atomic_path(out / "sensitivity.json") as tmp:
            tmp.write_text(json.dumps(body, indent=2))
        with model_io.atomic_path(out / "sensitivity.txt") as tmp:
            tmp.write_text(res.table() + "\n")
        res.bar_plot(out / "sensitivity.svg")
    return res
