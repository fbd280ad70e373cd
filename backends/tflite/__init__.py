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

from edgec.errors import EdgecError
from edgec.records import Artifacts, Drift

from . import layout
from .ops import Converter
from .writer import Builder, write_atomic

__all__ = ["emit", "convert", "LiteRTModel", "drift", "static_copy"]

THREADS = 2


def convert(model: ir.Model, precision: str = "fp32", io: str = "float", keep_nchw_io: bool = False,
            samples: list[dict[str, np.ndarray]] | None = None) -> tuple[bytes, Builder]:
    """The .tflite bytes for ``model`` (not modified) and the builder (tensors, op histogram)."""
    static = static_copy(model, samples)
    builder = Converter(static, precision, io, keep_nchw_io).convert()
    return builder.pack(), builder


def emit(model: ir.Model, target: Any, ctx: Any, out_dir: Path) -> Artifacts:
    """Write ``out_dir/model.tflite`` for ``target`` (tflite-fp32 | tflite-fp16 | tflite-int8) and measure it."""
    out_dir = Path(out_dir)
    scheme = dict(getattr(ctx, "scheme", None) or {})
    name = str(getattr(target, "name", target or ""))
    precision = scheme.get("precision") or next((p for p in ("int8", "fp16") if p in name), "fp32")
    opts = dict(getattr(ctx, "options", None) or {})
    io = str(opts.get("io") or "float")
    keep = bool(opts.get("keep_nchw_io", False))
    samples = list(getattr(ctx, "samples", None) or [])
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
    lite = LiteRTModel(data, model, keep_nchw_io=keep)
    if samples:
        ref = ort_outputs(model, samples)
        got = [lite.run(feed) for feed in samples]
        arts.figures["drift"] = drift(ref, got, list(ref[0])).to_dict()
        arts.figures["latency_ms"] = lite.latency_ms(samples[0])
        arts.figures["latency_runs"] = 30
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

    missing = [v for node in model.graph for v in node.outputs
               if v.name and static_shape_of(v) is None and (v.consumers() or v.is_graph_output())]
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
    import onnxruntime as ort

    so = ort.SessionOptions()
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

    def latency_ms(self, feed: dict[str, np.ndarray], runs: int = 30, warmup: int = 5) -> float:
        self.set_inputs(feed)
        for _ in range(warmup):
            self.interp.invoke()
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            self.interp.invoke()
            times.append(time.perf_counter() - t0)
        return float(np.median(times) * 1e3)


def drift(ref: list[dict[str, np.ndarray]], got: list[dict[str, np.ndarray]], names: list[str]) -> Drift:
    """Worst-output drift of ``got`` against ``ref`` over all samples (metrics as in edgec.records.Drift)."""
    per: dict[str, dict[str, float | None]] = {}
    for n in names:
        a = np.concatenate([r[n].astype(np.float64).reshape(-1) for r in ref])
        b = np.concatenate([g[n].astype(np.float64).reshape(-1) for g in got])
        err = a - b
        max_abs = float(np.max(np.abs(err))) if err.size else 0.0
        peak = float(np.max(np.abs(a))) if a.size else 0.0
        noise = float(np.sum(err**2))
        sqnr = float("inf") if noise == 0 else float(10 * np.log10(float(np.sum(a**2)) / noise))
        denom = float(np.linalg.norm(a) * np.linalg.norm(b))
        top1 = None
        ra, gb = ref[0][n], got[0][n]
        if ra.ndim == 2 and ra.shape[1] > 1:
            top1 = float(np.mean([np.argmax(r[n], 1) == np.argmax(g[n], 1) for r, g in zip(ref, got)]))
        per[n] = {"max_abs": max_abs, "max_rel": max_abs / peak if peak else max_abs, "sqnr_db": sqnr,
                  "cosine": float(a @ b / denom) if denom else 1.0, "top1": top1}
        del gb
    worst = min(names, key=lambda k: per[k]["sqnr_db"])  # type: ignore[arg-type,return-value]
    w = per[worst]
    return Drift(max_abs=max(p["max_abs"] for p in per.values()), max_rel=max(p["max_rel"] for p in per.values()),
                 sqnr_db=float(w["sqnr_db"]), cosine=float(w["cosine"]), top1=w["top1"], worst_output=worst,
                 per_output=per)
