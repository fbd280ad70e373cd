"""tools/bench.py, measuring: run every variant (ONNX Runtime or LiteRT) on the same held-out feeds, time them
interleaved run by run, and compare their outputs with fp32 ONNX Runtime.

A variant's ``runtime`` says how it is run:
  ort        ONNX Runtime, all graph optimizations (what a user deploying the file gets)
  ort-basic  ONNX Runtime with "basic" optimizations only, numerics only, never timed: the explicit-quantization
             ONNX for TensorRT, whose int8 arithmetic ORT then evaluates Q/DQ op by op (ORT's fused x86
             s8*s8 kernels saturate sums TensorRT does not); its latency would say nothing about a Jetson
  litert     ai_edge_litert Interpreter (XNNPACK, 2 threads) on the .tflite, fed NHWC as the backend writes it
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

Feed = dict[str, np.ndarray]
NHWC = (0, 2, 3, 1)
NCHW_FROM_NHWC = (0, 3, 1, 2)
THREADS = 2


@dataclass
class Variant:
    name: str
    path: Path | None
    build_s: float | None = None
    peak_rss_mb: float | None = None
    note: str = ""
    runtime: str = "ort"  # ort | ort-basic | litert
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def timed(self) -> bool:
        return self.runtime != "ort-basic"


def node_count(path: Path) -> int:
    """ONNX: nodes of the main graph; TFLite: operators of the subgraph (what LiteRT reports, the XNNPACK
    delegate's own pseudo-operator excluded)."""
    if path.suffix == ".tflite":
        from ai_edge_litert.interpreter import Interpreter

        interp = Interpreter(model_path=str(path), num_threads=1)
        return sum(op["op_name"] != "DELEGATE" for op in interp._get_ops_details())
    import onnx

    return len(onnx.load(str(path), load_external_data=False).graph.node)


# ------------------------------------------------------------------------------------------- runners
class Runner:
    """One variant ready to run: ``call()`` runs the timed feed; ``first_output(feed)`` returns output 0 in
    ONNX layout (NCHW for rank 4) as float32."""

    call: Callable[[], Any]

    def first_output(self, feed: Feed) -> np.ndarray:
        raise NotImplementedError


class OrtRunner(Runner):
    def __init__(self, path: Path, feed: Feed, optimization: str = "all") -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = THREADS
        so.inter_op_num_threads = 1
        so.log_severity_level = 3  # ORT's "removing unused initializer" warnings are not results
        # Spinning threads would steal the cores from the variant measured next in the interleaved loop.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if optimization == "basic":
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        self.sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.call = lambda: self.sess.run(None, feed)

    def first_output(self, feed: Feed) -> np.ndarray:
        return np.asarray(self.sess.run(None, feed)[0], dtype=np.float32)


class LiteRTRunner(Runner):
    """The .tflite as edgec writes it: rank-4 inputs/outputs NHWC, so feeds are transposed once outside the
    timed call (a deployment feeds NHWC images directly), and outputs transposed back to compare."""

    def __init__(self, path: Path, feed: Feed, input_names: list[str]) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.interp = Interpreter(model_path=str(path), num_threads=THREADS)
        self.interp.allocate_tensors()
        self.ins = self.interp.get_input_details()
        self.out = self.interp.get_output_details()[0]
        self.names = input_names
        if len(self.ins) != len(input_names):
            raise ValueError(f"{len(self.ins)} TFLite inputs for {len(input_names)} ONNX inputs")
        prepared = self._prepare(feed)

        def call() -> np.ndarray:
            for det, x in zip(self.ins, prepared):
                self.interp.set_tensor(det["index"], x)
            self.interp.invoke()
            return self.interp.get_tensor(self.out["index"])

        self.call = call

    def _prepare(self, feed: Feed) -> list[np.ndarray]:
        arrays = []
        for name, det in zip(self.names, self.ins):
            x = np.asarray(feed[name], dtype=np.float32)
            if x.ndim == 4:
                x = np.transpose(x, NHWC)
            if det["dtype"] == np.int8:
                s, z = det["quantization"]
                x = np.clip(np.round(x / s) + z, -128, 127)
            arrays.append(np.ascontiguousarray(x.astype(det["dtype"])))
        return arrays

    def first_output(self, feed: Feed) -> np.ndarray:
        for det, x in zip(self.ins, self._prepare(feed)):
            self.interp.set_tensor(det["index"], x)
        self.interp.invoke()
        y = self.interp.get_tensor(self.out["index"]).astype(np.float32)
        if self.out["dtype"] == np.int8:
            s, z = self.out["quantization"]
            y = (y - z) * s
        return np.transpose(y, NCHW_FROM_NHWC) if y.ndim == 4 else y


def _runner(v: Variant, feed: Feed) -> Runner:
    if v.runtime == "litert":
        return LiteRTRunner(v.path, feed, list(feed))  # type: ignore[arg-type]
    return OrtRunner(v.path, feed, "basic" if v.runtime == "ort-basic" else "all")  # type: ignore[arg-type]


def _add_note(v: Variant, note: str) -> None:
    v.note = f"{v.note}; {note}".lstrip("; ")


# ------------------------------------------------------------------------------------------- measure
def measure(variants: list[Variant], eval_feeds: list[Feed], labels: np.ndarray | None, runs: int) -> None:
    """Fill each variant's figures: size, node count, latency (interleaved), SQNR/top-1/accuracy vs variants[0]."""
    feed = eval_feeds[0]
    runners: dict[str, Runner] = {}
    for v in variants:
        if v.path is None:
            continue
        v.figures["size_kb"] = v.path.stat().st_size / 1024
        try:
            v.figures["nodes"] = node_count(v.path)
            runners[v.name] = _runner(v, feed)
        except Exception as exc:  # noqa: BLE001  a tool that writes an unloadable model is a result too
            where = "LiteRT" if v.runtime == "litert" else "ORT"
            _add_note(v, f"output does not load in {where}: {str(exc).splitlines()[0][:160]}")
            v.path = None
    outputs: dict[str, list[np.ndarray]] = {}
    for v in variants:
        if v.name not in runners:
            continue
        try:
            outputs[v.name] = [runners[v.name].first_output(f) for f in eval_feeds]
        except Exception as exc:  # noqa: BLE001
            _add_note(v, f"run failed: {str(exc).splitlines()[0][:160]}")
            del runners[v.name]
    timed = {v.name: runners[v.name] for v in variants if v.name in runners and v.timed}
    for r in timed.values():
        for _ in range(5):
            r.call()
    times: dict[str, list[float]] = {name: [] for name in timed}
    for _ in range(runs):
        for name, r in timed.items():
            t0 = time.perf_counter()
            r.call()
            times[name].append((time.perf_counter() - t0) * 1e3)
    ref = outputs.get(variants[0].name)
    for v in variants:
        if v.name in times:
            t = sorted(times[v.name])
            v.figures["latency_ms"] = statistics.median(t)
            v.figures["min_ms"] = t[0]  # the least disturbed run: the better figure on a busy machine
        if ref is None or v.name not in outputs:
            continue
        got = outputs[v.name]
        if got[0].shape != ref[0].shape:
            _add_note(v, f"output 0 shape {list(got[0].shape)} != fp32 {list(ref[0].shape)}: no SQNR")
            continue
        r = np.concatenate([o.ravel() for o in ref]).astype(np.float64)
        g = np.concatenate([o.ravel() for o in got]).astype(np.float64)
        err = float(np.sum((r - g) ** 2))
        v.figures["sqnr_db"] = float("inf") if err == 0 else 10 * np.log10(float(np.sum(r**2)) / err)
        # The aggregate is set by the worst few images (one ambiguous image can move it by 10 dB between two
        # equally good quantizations); the per-sample median says what a typical input sees.
        from edgec.metrics import per_sample_sqnr

        v.figures["sample_sqnr_median"] = float(np.median(per_sample_sqnr([{"y": o} for o in ref],
                                                                          [{"y": o} for o in got])))
        if ref[0].ndim == 2:  # classifier logits [1, C]: top-1 agreement and task accuracy
            top_r = np.array([o.argmax() for o in ref])
            top_g = np.array([o.argmax() for o in got])
            # If fp32 picks one class for every image, agreement says nothing; leave the cell empty.
            if len(set(top_r.tolist())) > 1:
                v.figures["top1_agree"] = float((top_r == top_g).mean())
            if labels is not None:
                v.figures["accuracy"] = float((top_g == labels).mean())
