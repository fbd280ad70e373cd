"""Why int8 hurts, layer by layer, and how much float it takes to fix it within a budget.

Sensitivity analysis (``analyze``): every quantizable layer (Conv, Gemm, MatMul with a constant weight)
is measured twice on held-aside data against the fp32 model: quantized ALONE (everything else float:
the noise this layer injects) and left float while ALL OTHERS are quantized (what keeping it float
buys back). Layers are ranked by the first (lowest output SQNR / metric first); both columns are
reported. A layer whose weights or input hold an outlier channel stands out in both.

Budgeted mixed precision (``search``): start all-int8 and keep the most sensitive layers float one at a
time (greedy, in the ranking's order), measuring every step on the evaluation data - metric, SQNR,
latency (ONNX Runtime, 2 threads, median) and size. Stop when the budget (``max_drop`` metric points
below fp32, and/or ``min_sqnr`` dB) is met. The result ALWAYS carries the best model found and the
Pareto table (metric vs latency vs size), with ``met`` and a message saying why not when the budget
could not be reached.

Quantization uses the registered ``quantize`` pass (with ``options["exclude"]``) when there is one, so
the numbers are those of what ships. Without it, a simulated quantizer stands in (weights int8
symmetric per the target's scheme, each layer's input fake-quantized with min/max ranges from the
calibration data, biases float) and every result says ``quantizer="simulated"``.
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
import onnx
import onnx_ir as ir

from edgec import calib, metrics, model_io, runtime, targets
from edgec.errors import EdgecError
from edgec.graph import NameSource, add_initializer, attr, const_array, nodes_of
from edgec.pass_infra import Feed, PassContext, parse_pipeline, parse_spec, registry

LAYER_OPS = ("Conv", "Gemm", "MatMul")
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
    weightless int8 ops (TENSOR_OPS) whose inputs are all computed (not constants)."""
    out = quantizable_layers(model)
    for node in nodes_of(model.graph, *TENSOR_OPS):
        if node.name and all(v is not None and const_array(v) is None for v in node.inputs):
            out.append(node.name)
    return out


# Elementwise activations next to a layer: excluded together with it, because full-integer placement
# (TFLite) quantizes them on their own and would re-quantize the very tensor the float layer should read.
_ACTIVATIONS = ("Relu", "Clip", "LeakyRelu", "PRelu", "HardSwish", "HardSigmoid", "Sigmoid", "Tanh", "Elu",
                "Selu", "Softplus", "Gelu", "Identity")


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


def has_quantize_pass() -> bool:
    return "quantize" in registry()


class Quantizer:
    """Quantize one float model many times with different exclude lists, calibrating once.

    ``scheme`` is the target's numeric scheme (targets.toml). The real ``quantize`` pass is used when it
    is registered (its calibration statistics are shared through one ``cache``), else the simulation.
    """

    def __init__(self, model: ir.Model, scheme: Mapping[str, Any], calib_feeds: Sequence[Feed],
                 options: Mapping[str, Any] | None = None, force_simulated: bool = False) -> None:
        self.float_bytes = model_io.to_bytes(model)
        self.scheme = dict(scheme)
        self.feeds = list(calib_feeds)
        # Per-layer SQNR rows of the quantize pass cost one ORT run per layer and are not used here.
        self.options = {"layer_sqnr": False, **dict(options or {})}
        self.kind = "quantize pass" if has_quantize_pass() and not force_simulated else "simulated"
        self.cache: dict[str, Any] = {}
        self._stats: dict[str, calib.TensorStats] | None = None
        # Searches revisit configurations (the analysis's all-but-one runs are the search's first steps).
        self._memo: dict[tuple[str, ...], tuple[bytes, dict[str, Any]]] = {}

    def float_model(self) -> ir.Model:
        return model_io.from_proto(onnx.ModelProto.FromString(self.float_bytes))

    def __call__(self, exclude: Sequence[str] = ()) -> tuple[ir.Model, dict[str, Any]]:
        key = tuple(sorted(set(exclude)))
        if key not in self._memo:
            model, details = self._quantize(list(key))
            self._memo[key] = (model_io.to_bytes(model), details)
            return model, details
        data, details = self._memo[key]
        return model_io.from_proto(onnx.ModelProto.FromString(data)), dict(details)

    def _quantize(self, exclude: list[str]) -> tuple[ir.Model, dict[str, Any]]:
        model = self.float_model()
        if self.kind == "quantize pass":
            ctx = PassContext(samples=self.feeds[:4], calib=self.feeds, scheme=self.scheme,
                              options={**self.options, "exclude": list(exclude)}, cache=self.cache)
            ctx.cache["float_model"] = self.float_bytes  # what bias-correct reads
            parse_spec("quantize").apply(model, ctx)
            return model, dict(ctx.details)
        return self._simulate(model, set(exclude))

    # -- simulation (until/unless the quantize pass exists) ------------------------------------------
    def _simulate(self, model: ir.Model, exclude: set[str]) -> tuple[ir.Model, dict[str, Any]]:
        layers = [n for n in nodes_of(model.graph, *LAYER_OPS)
                  if n.name in set(quantizable_layers(model)) and n.name not in exclude and n.op_type not in exclude]
        if self._stats is None:
            names = sorted({n.inputs[0].name for n in nodes_of(model.graph, *LAYER_OPS) if n.inputs[0] is not None})
            self._stats = calib.collect(model, names, self.feeds)
        lv = calib.levels(str(self.scheme.get("act_dtype", "uint8")), bool(self.scheme.get("act_symmetric", False)))
        act_type = np.uint8 if lv.qmin == 0 else np.int8
        method = str(self.options.get("calib_method", "minmax"))
        per_channel = bool(self.scheme.get("per_channel", True))
        names = NameSource(model.graph)
        rows = []
        for node in layers:
            x = node.inputs[0]
            st = self._stats.get(x.name) if x is not None else None
            if st is None or st.count == 0:
                continue
            (lo, hi), _ = calib.choose_range(st, method, lv)
            scale, zp = calib.scale_zero_point(lo, hi, lv)
            w = const_array(node.inputs[1])
            assert w is not None
            axis = _weight_axis(node, w)
            qw, sw = _quantize_weight(w, axis if per_channel else None)
            wq = add_initializer(model.graph, qw, f"{node.name}_w_q", names)
            ws = add_initializer(model.graph, sw.astype(np.float32), f"{node.name}_w_scale", names)
            dq_w = ir.node("DequantizeLinear", [wq, ws], attributes={"axis": axis} if sw.size > 1 else {},
                           name=names(f"{node.name}_w_dq"))
            s_v = add_initializer(model.graph, np.array(scale, np.float32), f"{node.name}_x_scale", names)
            z_v = add_initializer(model.graph, np.array(zp, act_type), f"{node.name}_x_zp", names)
            q_x = ir.node("QuantizeLinear", [x, s_v, z_v], name=names(f"{node.name}_x_q"))
            dq_x = ir.node("DequantizeLinear", [q_x.outputs[0], s_v, z_v], name=names(f"{node.name}_x_dq"))
            for n in (dq_w, q_x, dq_x):
                n.outputs[0].name = names(n.name)
            dq_w.outputs[0].type = dq_x.outputs[0].type = ir.TensorType(ir.DataType.FLOAT)
            model.graph.insert_before(node, [dq_w, q_x, dq_x])
            old_w = node.inputs[1]
            node.replace_input_with(1, dq_w.outputs[0])
            node.replace_input_with(0, dq_x.outputs[0])
            if old_w is not None and not old_w.uses() and old_w.name in model.graph.initializers:
                model.graph.initializers.pop(old_w.name)
            rows.append({"node": node.name, "x_range": [lo, hi]})
        return model, {"quantizer": "simulated", "layers": rows}


def _weight_axis(node: ir.Node, w: np.ndarray) -> int:
    """The output-channel axis of the weight: 0 for Conv and Gemm(transB), else the last."""
    if node.op_type == "Conv" or (node.op_type == "Gemm" and attr(node, "transB", 0)):
        return 0
    return w.ndim - 1


def _quantize_weight(w: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 (-127..127, zero point 0), per channel along ``axis`` or per tensor."""
    w64 = w.astype(np.float64)
    if axis is None:
        amax = np.array(np.abs(w64).max())
        s = np.maximum(amax / 127.0, 1e-12)
        return np.clip(np.round(w64 / s), -127, 127).astype(np.int8), s.reshape(())
    red = tuple(i for i in range(w.ndim) if i != axis)
    amax = np.abs(w64).max(axis=red)
    s = np.maximum(amax / 127.0, 1e-12)
    shape = [1] * w.ndim
    shape[axis] = -1
    return np.clip(np.round(w64 / s.reshape(shape)), -127, 127).astype(np.int8), s


# ------------------------------------------------------------------------------------------- metrics
@dataclasses.dataclass
class Score:
    """One model measured on the evaluation feeds against fp32."""

    sqnr_db: float
    top1: float | None  # agreement with fp32 argmax, in percent
    metric: float  # the search metric, higher is better
    drop: float  # fp32 metric - metric, in the metric's points


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

    def __init__(self, float_model: ir.Model, eval_feeds: Sequence[Feed], metric: str | MetricFn = "sqnr") -> None:
        if not eval_feeds:
            raise EdgecError("sensitivity/mixed precision needs evaluation data", hint="pass --calib (held-aside part)")
        self.feeds = list(eval_feeds)
        self.reference = runtime.run(runtime.session(float_model, optimization="basic"), self.feeds)
        self.metric_name, self.fn = resolve_metric(metric)
        if self.metric_name == "top1" and metrics.drift(self.reference, self.reference).top1 is None:
            raise EdgecError("metric top1: the model's outputs do not look like logits [N, classes]",
                             hint="use --metric sqnr or a module:function metric")
        self.fp32_metric = self._metric(self.reference)

    def _metric(self, outputs: Sequence[Feed]) -> float:
        if self.fn is not None:
            return float(self.fn(outputs, self.reference))
        d = metrics.drift(self.reference, outputs)
        if self.metric_name == "top1":
            return 100.0 * (d.top1 if d.top1 is not None else 0.0)
        return float(d.sqnr_db)

    def outputs(self, model: ir.Model | bytes) -> list[Feed]:
        return runtime.run(runtime.session(model, optimization="basic"), self.feeds)

    def score(self, model: ir.Model | bytes) -> Score:
        outs = self.outputs(model)
        d = metrics.drift(self.reference, outs)
        m = self._metric(outs)
        drop = 0.0 if math.isinf(self.fp32_metric) and math.isinf(m) else self.fp32_metric - m
        return Score(float(d.sqnr_db), None if d.top1 is None else 100.0 * d.top1, m, drop)


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
            evaluator: Evaluator | None = None,
            progress: Callable[[int, int], Any] | None = None) -> SensitivityResult:
    """Quantize one layer at a time and all-but-one at a time; rank layers, most sensitive first.

    ``model`` is the float model as it enters quantization (after fuse-bn etc.).
    """
    q = quantizer or Quantizer(model, scheme, calib_feeds, options)
    ev = evaluator or Evaluator(model, eval_feeds, metric)
    all_layers = candidates(model)
    todo = list(layers) if layers is not None else all_layers
    unknown = [name for name in todo if name not in all_layers]
    if unknown:
        raise EdgecError(f"not quantizable layers: {', '.join(unknown[:5])}",
                         hint="Conv/Gemm/MatMul or Add/Concat/pooling node names")
    ops = {n.name: n for n in model.graph.all_nodes()}
    full, _ = q(())
    base = ev.score(full)
    rows = []
    units = {n: exclusion_unit(model, n) for n in all_layers}
    for i, name in enumerate(todo):
        only, _ = q([x for n in all_layers if n != name for x in units[n] if x not in units[name]])
        but, _ = q(units[name])
        s_only, s_but = ev.score(only), ev.score(but)
        w = const_array(ops[name].inputs[1]) if len(ops[name].inputs) > 1 else None
        rows.append(LayerSensitivity(name, ops[name].op_type, int(w.size) if w is not None else 0,
                                     s_only.sqnr_db, s_only.metric, s_but.sqnr_db, s_but.metric,
                                     s_but.metric - base.metric))
        if progress:
            progress(i + 1, len(todo))
    # Most sensitive first: the lowest metric when quantized alone, ties broken by the larger gain.
    rows.sort(key=lambda r: (r.only_metric, -r.gain))
    return SensitivityResult(rows, ev.metric_name, ev.fp32_metric, base.metric, base.sqnr_db, q.kind)


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
    quantizer: str = "simulated"
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


def prepare_float(model: str | Path | ir.Model, tgt: targets.Target, samples: Sequence[Feed],
                  equalize: bool = False) -> ir.Model:
    """The target's pipeline up to (not including) quantize, plus equalization when asked."""
    from edgec.manager import Manager

    loaded = model if isinstance(model, ir.Model) else model_io.load(model)
    loaded = model_io.clone(loaded)
    specs = [p for p in tgt.passes if p.split(":")[0] not in ("quantize", "bias-correct")]
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
                    progress: Callable[[int, int], Any] | None = None) -> SensitivityResult:
    """``edgec sensitivity MODEL --target T --calib C [--eval E] [--metric sqnr|top1|mod:fn] [-o DIR]``.

    With ``out_dir``: sensitivity.json, sensitivity.txt (table) and sensitivity.svg (bar plot)."""
    tgt = targets.get(target, target_file)
    if tgt.precision != "int8":
        raise EdgecError(f"target '{tgt.name}' is not an int8 target", hint="cpu-int8, jetson-int8 or tflite-int8")
    loaded = model_io.load(model)
    cal, ev, warns = split_feeds(loaded, calib, eval_spec, limit=limit, preprocess=preprocess)
    fm = prepare_float(loaded, tgt, cal[:4])
    res = analyze(fm, tgt.scheme, cal, ev, metric=metric, progress=progress)
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
