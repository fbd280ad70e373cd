"""Issue 23's depthwise acceptance: `--target tflite-fp32` with and without `--add depthwise` (--dw-latency), in LiteRT.

    python tools/depthwise_edge.py                                  # PP-OCRv4 det and YOLOv8n, floor 25 dB
    python tools/depthwise_edge.py --models yolov8n --floors 30 25 --min-sqnr 20 --json /tmp/dw.json

For every model and per-layer floor: both builds from the same calibration images (tools/accuracy.py's
in-distribution calibration split), each pair timed in the target's runtime (LiteRT, XNNPACK, 2 threads) by the
pass itself; then the two .tflite files are timed against each other in one process, interleaved run by run
(``edgec.runtime.interleaved_medians``, the order flipping every run), ``--repeats`` times, and their first
output compared with fp32 ONNX Runtime on held-aside images of two distributions (calibration never saw them):
cosine and SQNR pooled over the images. Also printed: what the pass decided (layers replaced, their MACs,
the end-to-end drift it recorded on calibration feeds) and whether the acceptance holds (faster, cosine >= 0.98).
Latency on a loaded machine is noise: the ratio is only meaningful when the machine is otherwise idle.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import accuracy  # the data builders (one place, shared with tools/bench.py)
import zoo
from bench_measure import LiteRTRunner, OrtRunner

MODELS = ["ppocr-det", "yolov8n"]
# Two held-aside distributions per model at the calibration input size (a .tflite has static shapes, so
# ppocr-det's 320 shift of tools/accuracy.py does not fit the 640 build; plain photos at 640 are its shift).
EVAL_DISTS: dict[str, list[accuracy.Dist]] = {
    "ppocr-det": [accuracy.DISTS["ppocr-det"][0],
                  accuracy.Dist("photos@640", "shifted", accuracy._images("photos", (640, 640)),
                                accuracy._det(640))],
    "yolov8n": accuracy.DISTS["yolov8n"],
}
COSINE_MIN = 0.98


def agreement(ref: list[np.ndarray], got: list[np.ndarray]) -> dict[str, float]:
    """Cosine and SQNR (dB) of ``got`` against ``ref``, pooled over all images."""
    a = np.concatenate([r.ravel() for r in ref]).astype(np.float64)
    b = np.concatenate([g.ravel() for g in got]).astype(np.float64)
    err = float(np.sum((a - b) ** 2))
    return {"cosine": float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))),
            "sqnr_db": float("inf") if err == 0 else float(10 * np.log10(np.sum(a**2) / err))}


def compile_pair(name: str, src: Path, calib: list, floor: float, min_sqnr: float | None, tmp: Path,
                 base: Path | None) -> tuple[Path, Path, dict[str, Any]]:
    """(tflite without depthwise, with it, what the pass recorded)."""
    import edgec

    opts: dict[str, Any] = {"bench_runs": 0}
    if base is None:
        res = edgec.compile(str(src), target="tflite-fp32", calib=calib, out_dir=tmp / "base", options=opts)
        base = Path(res.artifacts.files["model"])  # type: ignore[union-attr]
    dw_opts = {**opts, "dw_latency": True, "dw_max_error": floor,
               **({"dw_min_sqnr": min_sqnr} if min_sqnr is not None else {})}
    t0 = time.perf_counter()
    res = edgec.compile(str(src), target="tflite-fp32", calib=calib, out_dir=tmp / f"dw{floor:g}",
                        options=dw_opts, add=["depthwise"])
    seconds = time.perf_counter() - t0
    rec = next(r for r in res.records if r.name == "depthwise")
    d = rec.details
    layers = d.get("layers", [])
    kept_slower = [x for x in layers if x.get("decision") == "kept" and x.get("latency")]
    info = {"build_s": seconds, "changed": rec.changed, "summary": d.get("summary"),
            "replaced": d.get("replaced", 0), "eligible": sum(x["decision"] in ("replaced", "kept") for x in layers),
            "kept_slower_in_runtime": len(kept_slower), "macs_replaced_before": d.get("macs_replaced_before"),
            "macs_replaced_after": d.get("macs_replaced_after"), "model_macs": d.get("model_macs_before"),
            "end_to_end_calib": d.get("end_to_end"),
            "replaced_layers": [{k: x.get(k) for k in ("node", "rank", "sqnr_db", "latency")}
                                for x in layers if x.get("decision") == "replaced"]}
    mb, ma = info["macs_replaced_before"] or 0, info["macs_replaced_after"] or 0
    info["model_macs_ratio"] = (info["model_macs"] - mb + ma) / info["model_macs"] if info["model_macs"] else None
    return base, Path(res.artifacts.files["model"]), info  # type: ignore[union-attr]


def run_model(name: str, args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    dists = EVAL_DISTS[name]
    calib, _ = accuracy.feeds(name, dists[0], args.calib, "calib")
    src, _ = accuracy.pin_inputs(zoo.path(name), calib[0], tmp / "fp32.onnx")
    evals = {d.name: accuracy.feeds(name, d, args.eval, "eval")[0] for d in dists}
    refs = {}
    for dname, feeds in evals.items():
        ort = OrtRunner(src, feeds[0])
        refs[dname] = [ort.first_output(f) for f in feeds]
    rows, base = [], None
    for floor in args.floors:
        base, with_dw, info = compile_pair(name, src, calib, floor, args.min_sqnr, tmp, base)
        feed = evals[dists[0].name][0]
        runners = [LiteRTRunner(p, feed, list(feed)) for p in (base, with_dw)]
        from edgec import runtime

        timings = [runtime.interleaved_medians([r.call for r in runners], runs=args.runs)
                   for _ in range(args.repeats)]
        ratios = [t[1] / t[0] for t in timings]
        row: dict[str, Any] = {"model": name, "floor_db": floor, "min_sqnr": args.min_sqnr, **info,
                               "base_ms": statistics.median(t[0] for t in timings),
                               "dw_ms": statistics.median(t[1] for t in timings),
                               "ratio": statistics.median(ratios), "ratios": ratios, "held_aside": {}}
        for dname, feeds in evals.items():
            row["held_aside"][dname] = {
                "without": agreement(refs[dname], [runners[0].first_output(f) for f in feeds]),
                "with": agreement(refs[dname], [runners[1].first_output(f) for f in feeds])}
        worst = min(v["with"]["cosine"] for v in row["held_aside"].values())
        row["accept"] = {"faster": row["ratio"] < 1.0, "cosine_ok": worst >= COSINE_MIN,
                         "unchanged_and_said": (not info["changed"]) and bool(info["summary"])}
        rows.append(row)
        print_row(row)
    return rows


def print_row(r: dict[str, Any]) -> None:
    e2e = r["end_to_end_calib"] or {}
    budget = "" if r["min_sqnr"] is None else f", min_sqnr {r['min_sqnr']:g} dB"
    print(f"{r['model']} @ {r['floor_db']:g} dB floor{budget}: "
          f"replaced {r['replaced']}/{r['eligible']} eligible convs ({r['kept_slower_in_runtime']} met the floor "
          f"but LiteRT ran the pair slower); model MACs x{r['model_macs_ratio'] or 1:.3f}; build {r['build_s']:.0f} s")
    print(f"  pass: {r['summary']}" + (f" [calib e2e SQNR {e2e.get('sqnr_db')} dB]" if e2e else ""))
    print(f"  LiteRT (XNNPACK, 2 threads) latency: {r['base_ms']:.2f} -> {r['dw_ms']:.2f} ms, ratio x{r['ratio']:.3f} "
          f"(repeats: {', '.join(f'x{x:.3f}' for x in r['ratios'])})")
    for dname, v in r["held_aside"].items():
        print(f"  held-aside {dname}: cosine vs fp32 ORT {v['with']['cosine']:.5f} (without depthwise "
              f"{v['without']['cosine']:.5f}), SQNR {v['with']['sqnr_db']:.1f} dB ({v['without']['sqnr_db']:.1f})")
    a = r["accept"]
    verdict = ("unchanged, and the pass says so" if a["unchanged_and_said"] else
               f"faster: {'yes' if a['faster'] else 'NO'}, cosine >= {COSINE_MIN}: {'yes' if a['cosine_ok'] else 'NO'}")
    print(f"  acceptance: {verdict}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=MODELS, choices=MODELS)
    ap.add_argument("--floors", nargs="*", type=float, default=[25.0], help="per-layer SQNR floors (dB)")
    ap.add_argument("--min-sqnr", type=float, help="end-to-end budget (dB) passed as --dw-min-sqnr")
    ap.add_argument("--calib", type=int, default=16)
    ap.add_argument("--eval", type=int, default=8, help="held-aside images per distribution")
    ap.add_argument("--runs", type=int, default=100, help="interleaved LiteRT runs per repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", help="write every row here")
    args = ap.parse_args(argv)
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for name in args.models:
        with tempfile.TemporaryDirectory(prefix=f"dw-edge-{name}-") as tmp:
            rows += run_model(name, args, Path(tmp))
    print(f"total {time.perf_counter() - t0:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
