"""TFLite backend: edgec's own flatbuffer emitter (no TensorFlow), checked by running LiteRT.

``emit`` converts the optimized ONNX graph to NHWC TFLite (fp32, fp16 weights, or full-integer int8
from a QDQ graph), writes ``out_dir/model.tflite`` atomically, runs it in
``ai_edge_litert.interpreter.Interpreter`` (XNNPACK, 2 threads) on the sample inputs and reports size,
TFLite op histogram, latency and drift against ONNX Runtime running the same input model.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from edgec import metrics
from edgec.errors import EdgecError
from edgec.pass_infra import PassContext
from edgec.records import Artifacts, Drift

# The op handlers register themselves in registry.HANDLERS on import (one module per op family).
from . import layout, ops_elementwise, ops_linear, ops_pool, ops_shape, ops_transformer  # noqa: F401
from .converter import Converter
from .timing import RUNTIME as LAYER_RUNTIME  # noqa: F401 - the tflite targets' layer timer (api)
from .timing import layer_timer  # noqa: F401
from .writer import Builder, write_atomic

__all__ = ["LiteRTModel", "convert", "drift", "emit", "static_copy"]

THREADS = 2
#: The writer maps HardSwish/Gelu only in their one-op forms: a --passes list that leaves out the target's
#: legalize stage gets it appended by edgec.compile (as checked passes; this backend rewrites nothing).
LEGALIZE_REQUIRED = True


def convert(model: ir.Model, precision: str = "fp32", io: str = "float", keep_nchw_io: bool = False,
            samples: list[dict[str, np.ndarray]] | None = None) -> tuple[bytes, Builder]:
    """The .tflite bytes for ``model`` (not modified) and the builder (tensors, op histogram).

    The writer maps what it gets and rewrites nothing: the one-op forms it needs (HardSwish, Gelu) come
    from the tflite-* targets' legalize stage, which ``edgec.compile`` runs as checked passes (and
    appends to a ``--passes`` list that left it out). A spelled-out erf GELU handed here directly is a
    one-line error (Erf has no TFLite mapping)."""
    builder = Converter(static_copy(model, samples), precision, io, keep_nchw_io).convert()
    return builder.pack(), builder


def emit(model: ir.Model, target: Any, ctx: PassContext, out_dir: Path) -> Artifacts:
    """Write ``out_dir/model.tflite`` for ``target`` (tflite-fp32 | tflite-fp16 | tflite-int8) and measure it."""
    out_dir = Path(out_dir)
    scheme = dict(getattr(ctx, "scheme", None) or {})
    name = str(getattr(target, "name", target or ""))
    precision = scheme.get("precision") or next((p for p in ("int8", "fp16") if p in name), "fp32")
    opts = ctx.backend
    io = opts.io or "float"
    keep = opts.keep_nchw_io
    samples = list(getattr(ctx, "samples", None) or [])
    if precision == "int8" and not any(n.op_type == "QuantizeLinear" for n in model.graph):
        raise EdgecError("tflite-int8 needs a QDQ graph (QuantizeLinear/DequantizeLinear) and this one has none",
                         hint="keep the 'quantize' pass in the pipeline, or use --target tflite-fp32")
    data, builder = convert(model, precision, io, keep, samples)
    path = out_dir / "model.tflite"
    write_atomic(data, path)
    arts = Artifacts(backend="tflite", files={"model": path})
    arts.figures["bytes"] = len(data)
    arts.figures["ops"] = builder.histogram()
    arts.figures["precision"] = precision
    arts.figures["io"] = io if precision == "int8" else "float"
    arts.notes.append(f"{sum(arts.figures['ops'].values())} TFLite ops, inputs/outputs "
                      f"{'NCHW (ONNX layout)' if keep else 'NHWC for rank-4 tensors'}")
    if precision == "int8":
        float_ops = [o for o in builder.operators
                     if builder.info[o.outputs[0]].dtype == np.float32 and o.outputs[0] not in builder.outputs]
        if float_ops:
            arts.notes.append(f"int8: {len(float_ops)} ops compute in float (no int8 TFLite kernel, or the QDQ "
                              "graph left them unquantized)")
    lite = LiteRTModel(data, model, keep_nchw_io=keep)
    parts, outside = lite.xnnpack_partitions()
    arts.figures["xnnpack_partitions"] = parts
    if parts != 1:
        arts.notes.append(f"XNNPACK runs the model in {parts} partitions; ops at the boundaries run on TFLite's "
                          f"own kernels: {outside}")
    if samples:
        got = [lite.run(feed) for feed in samples]
        # Exactness of the conversion: the ONNX graph handed to the backend, evaluated op by op.
        arts.figures["drift_vs_input"] = drift(ort_outputs(model, samples), got).to_dict()
        # What the report compares across targets: the user's original model (before any pass).
        source = ctx.reference_outputs
        aside = ctx.held_aside
        held, reference = (aside.feeds, aside.reference) if aside is not None else (None, None)
        if held and reference is not None and set(reference[0]) <= set(got[0]):
            # Scored on the held-aside set the manager ran the input model on (calibration never saw it).
            scored = [lite.run(f) for f in held]
            arts.figures["drift"] = metrics.drift(reference, [{n: g[n] for n in reference[0]} for g in scored],
                                                  aside.indices if aside is not None else None).to_dict()
        elif source is not None and set(source[0]) <= set(got[0]):
            arts.figures["drift"] = drift(source, got).to_dict()
        else:
            arts.figures["drift"] = arts.figures["drift_vs_input"]
        runs = opts.bench_runs
        if runs > 0:
            arts.figures["latency"] = lite.latency(samples[0], runs=max(runs, 20))
    else:
        arts.notes.append("no sample inputs: LiteRT loaded the model but drift and latency were not measured")
    return arts


# ------------------------------------------------------------------------------------------------
def static_copy(model: ir.Model, samples: list[dict[str, np.ndarray]] | None = None) -> ir.Model:
    """A private copy with every input dim fixed (from the samples, a dynamic batch as 1) and shapes
    inferred; TFLite tensors have static shapes and the converter reads them from the ONNX values."""
    proto = ir.serde.serialize_model(model)
    feed = samples[0] if samples else {}
    inits = {t.name for t in proto.graph.initializer}
    for inp in proto.graph.input:
        if inp.name in inits:
            continue
        dims = inp.type.tensor_type.shape.dim
        given = feed.get(inp.name)
        for i, d in enumerate(dims):
            if given is not None and i < given.ndim:
                d.ClearField("dim_param")
                d.dim_value = int(given.shape[i])
            elif not d.HasField("dim_value"):
                if i != 0:
                    raise EdgecError(f"input '{inp.name}' has a dynamic dim {i}",
                                     hint="give sample inputs (they fix the shape) or export with a static shape")
                d.ClearField("dim_param")
                d.dim_value = 1
    for vi in list(proto.graph.value_info):
        proto.graph.value_info.remove(vi)
    for out in proto.graph.output:
        out.type.tensor_type.ClearField("shape")
    proto = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    copy = ir.serde.deserialize_model(proto)
    _shapes_by_running(copy, proto, feed)
    return copy


def _shapes_by_running(model: ir.Model, proto: onnx.ModelProto, feed: dict[str, np.ndarray]) -> None:
    """Fill the shapes ONNX shape inference left open (e.g. a Pad whose pads are computed by shape
    arithmetic) by running the graph once in ONNX Runtime with those values as extra outputs."""
    import onnxruntime as ort

    # ONNX shape inference (onnx 1.23) keeps a ceil-mode pooling window that would start in the end
    # padding; ONNX Runtime and PyTorch drop it. Downstream shapes inherit the error, so with any
    # ceil-mode pool every shape is taken from the run.
    ceil = any(n.attributes.get("ceil_mode") is not None and n.attributes["ceil_mode"].value for n in model.graph)
    missing = [v for node in model.graph for v in node.outputs
               if v.name and (ceil or static_shape_of(v) is None) and (v.consumers() or v.is_graph_output())]
    if not missing:
        return
    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    known = {o.name for o in probe.graph.output}
    probe.graph.output.extend(onnx.ValueInfoProto(name=v.name) for v in missing if v.name not in known)
    inputs = {}
    for inp in probe.graph.input:
        if inp.name in {t.name for t in probe.graph.initializer}:
            continue
        dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type)
        inputs[inp.name] = np.asarray(feed[inp.name], dtype) if inp.name in feed else np.zeros(dims, dtype)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(probe.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [v.name for v in missing]
    for v, arr in zip(missing, sess.run(names, inputs)):
        v.shape = ir.Shape(np.asarray(arr).shape)


def static_shape_of(v: ir.Value) -> tuple[int, ...] | None:
    if v.shape is None or not all(isinstance(d, int) for d in v.shape):
        return None
    return tuple(v.shape)


def ort_outputs(model: ir.Model, samples: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """The reference: ONNX Runtime executing the ONNX graph op by op.

    Graph optimizations are off so a QDQ graph is evaluated as written (QuantizeLinear, then float
    arithmetic on dequantized values) rather than by ORT's fused int8 kernels, whose x86 s8*s8 path
    saturates intermediate sums and would make the reference itself the largest error.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = THREADS
    so.log_severity_level = 3
    sess = ort.InferenceSession(ir.serde.serialize_model(model).SerializeToString(), so,
                                providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return [dict(zip(names, sess.run(names, feed))) for feed in samples]


class LiteRTModel:
    """A .tflite in LiteRT, fed and read in ONNX terms (NCHW float arrays by ONNX name)."""

    def __init__(self, data: bytes, model: ir.Model, keep_nchw_io: bool = False, threads: int = THREADS) -> None:
        from ai_edge_litert.interpreter import Interpreter

        try:
            self.interp = Interpreter(model_content=data, num_threads=threads)
            self.interp.allocate_tensors()
        except (RuntimeError, ValueError) as exc:
            raise EdgecError(f"LiteRT rejected the generated model: {exc}",
                             hint="this is a bug in the edgec TFLite backend; please report it with the model") from exc
        self.inputs = self.interp.get_input_details()
        self.outputs = self.interp.get_output_details()
        self.in_names = [v.name for v in model.graph.inputs if not v.is_initializer()]
        self.out_names = [v.name for v in model.graph.outputs]
        self.keep = keep_nchw_io
        self.threads = threads

    def xnnpack_partitions(self) -> tuple[int, dict[str, int]]:
        """How many DELEGATE nodes LiteRT made (1: XNNPACK runs every op), and a histogram of the ops
        TFLite's own kernels run that feed a partition or write a model output (a tensor a delegate
        reads, or a model output, that no delegate produces comes from such an op)."""
        ops = self.interp._get_ops_details()
        delegates = [o for o in ops if o["op_name"] == "DELEGATE"]
        produced = {int(t) for d in delegates for t in d["outputs"]}
        wanted = {int(t) for d in delegates for t in d["inputs"]} | {int(d["index"]) for d in self.outputs}
        outside: dict[str, int] = {}
        for o in ops:
            outs = {int(t) for t in o["outputs"]}
            if o["op_name"] != "DELEGATE" and outs & wanted and not outs & produced:
                outside[o["op_name"]] = outside.get(o["op_name"], 0) + 1
        return len(delegates), outside

    def _perm(self, rank: int) -> tuple[int, ...]:
        return layout.identity(rank) if self.keep else layout.preferred(rank)

    def set_inputs(self, feed: dict[str, np.ndarray]) -> None:
        for name, det in zip(self.in_names, self.inputs):
            x = np.asarray(feed[name], dtype=np.float32)
            x = np.transpose(x, self._perm(x.ndim))
            if det["dtype"] == np.int8:
                s, z = det["quantization"]
                x = np.clip(np.round(x / s) + z, -128, 127)
            self.interp.set_tensor(det["index"], np.ascontiguousarray(x.astype(det["dtype"])))

    def get_outputs(self) -> dict[str, np.ndarray]:
        result = {}
        for name, det in zip(self.out_names, self.outputs):
            y = self.interp.get_tensor(det["index"])
            if det["dtype"] == np.int8:
                s, z = det["quantization"]
                y = (y.astype(np.float32) - z) * s
            result[name] = np.transpose(y, layout.inverse(self._perm(y.ndim)))
        return result

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.set_inputs(feed)
        self.interp.invoke()
        return self.get_outputs()

    def latency(self, feed: dict[str, np.ndarray], runs: int = 30, warmup: int = 5) -> dict[str, float]:
        """Median and spread of ``invoke`` wall time in ms (XNNPACK, ``threads`` threads), after warm-up."""
        self.set_inputs(feed)
        for _ in range(warmup):
            self.interp.invoke()
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            self.interp.invoke()
            times.append((time.perf_counter() - t0) * 1e3)
        times.sort()
        return {"median_ms": float(np.median(times)), "p10_ms": times[len(times) // 10],
                "p90_ms": times[min(len(times) - 1, (9 * len(times)) // 10)], "runs": runs,
                "threads": self.threads}


def drift(ref: list[dict[str, np.ndarray]], got: list[dict[str, np.ndarray]], names: list[str] | None = None) -> Drift:
    """Worst-output drift of ``got`` against ``ref`` (edgec.metrics.drift) over the outputs ``names``."""
    names = list(ref[0]) if names is None else names
    return metrics.drift([{n: r[n] for n in names} for r in ref], [{n: g[n] for n in names} for g in got])
