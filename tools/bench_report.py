"""tools/bench.py, reporting: the header, one table per model, the summary table, the physical-limit line
(achieved fraction of the machine's measured GEMM peak) and the latency plot (PNG, drawn with Pillow so the
benchmark needs no matplotlib)."""

from __future__ import annotations

import math
import os
import platform
import time
from pathlib import Path
from typing import Any

import accuracy
import numpy as np
from bench_measure import Feed, Variant

# CPU features that decide which int8 kernels ONNX Runtime and XNNPACK can use (issue 24): AVX2 (u8*s8 via
# vpmaddubsw, whose 16-bit pair sums saturate: why cpu-int8 keeps weights to 7 bits), AVX-512 VNNI and AVX-VNNI
# (vpdpbusd, 32-bit sums, no saturation), AMX (int8 tile multiply).
INT8_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_tile")

COLUMNS = ["variant", "size KB", "nodes", "latency ms median (min)", "x fp32", "SQNR dB", "top-1 agree", "acc",
           "build s", "peak RSS MB", "note"]


def header() -> str:
    import onnx
    import onnxruntime as ort

    try:
        import edgec

        ev = edgec.__version__
    except Exception as exc:  # noqa: BLE001  the header must print whatever state edgec is in
        ev = f"not importable ({type(exc).__name__})"
    try:
        from importlib.metadata import version

        litert = version("ai-edge-litert")
    except Exception:  # noqa: BLE001
        litert = "not installed"
    cpu, flags = cpu_info()
    load = os.getloadavg()
    return (f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n"
            f"- machine: {cpu}, {os.cpu_count()} cores, load average {load[0]:.1f} at start "
            f"(shared machine: absolute latencies are noisy; ratios come from interleaved runs)\n"
            f"- int8-relevant CPU flags: {flags}\n"
            f"- python {platform.python_version()}, onnx {onnx.__version__}, onnxruntime {ort.__version__}, "
            f"ai-edge-litert {litert}, edgec {ev}, numpy {np.__version__}\n")


def cpu_info(cpuinfo: str | None = None) -> tuple[str, str]:
    """(CPU model name, "avx2 yes, avx512f no, ...") from /proc/cpuinfo (or the text given)."""
    try:
        text = Path("/proc/cpuinfo").read_text() if cpuinfo is None else cpuinfo
    except OSError:
        return platform.processor() or "unknown CPU", "unknown (no /proc/cpuinfo)"
    lines = text.splitlines()
    model = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")),
                 platform.processor() or "unknown CPU")
    have = set(next((ln.split(":", 1)[1].split() for ln in lines if ln.startswith("flags")), []))
    return model, ", ".join(f"{f} {'yes' if f in have else 'no'}" for f in INT8_FLAGS)


def _fmt(x: Any, spec: str) -> str:
    return "–" if x is None else format(x, spec)


def _ratio(a: float | None, b: float | None) -> str:
    return f"x{a / b:.2f}" if a and b else "–"


def table(model: str, variants: list[Variant]) -> str:
    base = variants[0].figures
    rows = [f"### {model}\n", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for v in variants:
        f = v.figures
        speed = base.get("latency_ms", 0) / f["latency_ms"] if f.get("latency_ms") else None
        note = v.note.replace("|", "/").replace("\n", " ")
        rows.append(
            f"| {v.name} | {_fmt(f.get('size_kb'), '.0f')} | {_fmt(f.get('nodes'), 'd')} | "
            f"{_fmt(f.get('latency_ms'), '.2f')} ({_fmt(f.get('min_ms'), '.2f')}) | {_fmt(speed, '.2f')} | "
            f"{_fmt(f.get('sqnr_db'), '.1f')} | {_fmt(f.get('top1_agree'), '.3f')} | "
            f"{_fmt(f.get('accuracy'), '.3f')} | {_fmt(v.build_s, '.1f')} | {_fmt(v.peak_rss_mb, '.0f')} | {note} |")
    # edgec against the matching anchor: fp32 targets vs the best simplifier, int8 vs ORT quantize_static.
    ratios = []
    by = {v.name: v.figures for v in variants}
    for v in variants:
        if not v.name.startswith("edgec:") or "latency_ms" not in v.figures:
            continue
        # int8 against both quantizers (ORT quantize_static and NNCF), fp32 against the fastest simplifier.
        anchors = ["ort-quant", "nncf", "nncf+fix"] if "int8" in v.name else [min(
            (a for a in ("onnxsim", "onnxslim", "fp32") if "latency_ms" in by.get(a, {})),
            key=lambda a: by[a]["latency_ms"])]
        anchors += ONNX2TF_PAIRS.get(v.name.split(":", 1)[1], [])
        for anchor in anchors:
            a = by.get(anchor, {})
            if "latency_ms" in a and "sqnr_db" in a and "sqnr_db" in v.figures:
                sq = (f"SQNR {v.figures['sqnr_db']:.1f} vs {a['sqnr_db']:.1f} dB" if np.isfinite(a["sqnr_db"])
                      else f"SQNR {v.figures['sqnr_db']:.1f} dB (anchor bit-exact)")
                ratios.append(f"{v.name} / {anchor}: latency x{v.figures['latency_ms'] / a['latency_ms']:.2f}, "
                              f"size x{v.figures['size_kb'] / a['size_kb']:.2f}, {sq}")
    return "\n".join(rows) + ("\n\n" + "\n".join(f"- {r}" for r in ratios) if ratios else "") + "\n"


# The onnx2tf variant each edgec TFLite target is compared with (same LiteRT settings, same data).
ONNX2TF_PAIRS = {"tflite-fp32": ["onnx2tf"], "tflite-int8": ["onnx2tf-int8"]}


# ------------------------------------------------------------------------------------------- summary
def summary(results: dict[str, list[Variant]]) -> str:
    """One line per model: edgec cpu-int8 / ORT quantize_static; edgec cpu-fp32 vs the simplifiers; the
    fastest TFLite variant vs fp32 ORT."""
    head = ("| model | int8 latency edgec/ORT-quant | SQNR dB edgec vs ORT-quant vs NNCF | int8 size edgec/ORT-quant | "
            "int8 size edgec/fp32 | quant wall time edgec/ORT-quant: default (MinMax) | quant peak RSS "
            "edgec/ORT-quant: default (MinMax) | fp32 latency edgec / onnxsim, / onnxslim | nodes fp32, onnxsim, "
            "onnxslim, edgec | best TFLite / ORT fp32 latency |")
    intro = ("Ratios below 1 favour edgec (SQNR: higher is better). int8: edgec:cpu-int8 against ORT "
             "quantize_static (MinMax); its default calibration (`auto`: the best of several range methods per "
             "tensor) and, in brackets, edgec with MinMax like ORT's; fp32: edgec:cpu-fp32 against onnxsim and "
             "onnxslim.\n")
    rows = ["## Summary\n", intro, head, "|" + "---|" * 10]
    for model, variants in results.items():
        by = {v.name: v for v in variants}
        # A refused build has a wall time and a peak RSS but no model: it gets no ratio.
        q, e8, e32 = (by[k] if k in by and "size_kb" in by[k].figures else None
                      for k in ("ort-quant", "edgec:cpu-int8", "edgec:cpu-fp32"))
        sim, slim, fp = by.get("onnxsim"), by.get("onnxslim"), by.get("fp32")
        mm = by.get("edgec:cpu-int8@minmax")

        def fig(v: Variant | None, key: str) -> Any:
            return v.figures.get(key) if v is not None else None

        nn = by.get("nncf")
        sq = (f"{_fmt(fig(e8, 'sqnr_db'), '.1f')} vs {_fmt(fig(q, 'sqnr_db'), '.1f')} vs "
              f"{_fmt(fig(nn, 'sqnr_db'), '.1f')}")
        lat32 = (f"{_ratio(fig(e32, 'latency_ms'), fig(sim, 'latency_ms'))}, "
                 f"{_ratio(fig(e32, 'latency_ms'), fig(slim, 'latency_ms'))}")
        nodes = ", ".join(_fmt(fig(v, "nodes"), "d") for v in (fp, sim, slim, e32))
        lite = [v for v in variants if "tflite" in v.name and v.figures.get("latency_ms")]
        best = min(lite, key=lambda v: v.figures["latency_ms"]) if lite else None
        best_s = (f"{best.name.split(':')[-1]} {_ratio(fig(best, 'latency_ms'), fig(fp, 'latency_ms'))}"
                  if best else "–")
        rows.append(f"| {model} | {_ratio(fig(e8, 'latency_ms'), fig(q, 'latency_ms'))} | {sq} | "
                    f"{_ratio(fig(e8, 'size_kb'), fig(q, 'size_kb'))} | "
                    f"{_ratio(fig(e8, 'size_kb'), fig(fp, 'size_kb'))} | {_pair(e8, mm, q, 'build_s')} | "
                    f"{_pair(e8, mm, q, 'peak_rss_mb')} | {lat32} | {nodes} | {best_s} |")
    return "\n".join(rows) + "\n"


def onnx2tf_summary(results: dict[str, list[Variant]]) -> str:
    """edgec's TFLite against onnx2tf 1.29 in LiteRT: one row per model; empty when onnx2tf was not run."""
    if not any(v.name in ("onnx2tf", "onnx2tf-int8") for vs in results.values() for v in vs):
        return ""
    intro = ("Both run in LiteRT (XNNPACK, 2 threads), interleaved run by run with every other variant of the "
             "model; SQNR against fp32 ONNX Runtime on the same held-aside images; both calibrated on the same "
             "images (onnx2tf through -cind, offline). Latency ratios below 1 favour edgec. A failed onnx2tf "
             "conversion is named with its reason.\n")
    rows = ["## edgec TFLite vs onnx2tf 1.29\n", intro,
            ("| model | fp32 latency edgec/onnx2tf | fp32 SQNR dB edgec vs onnx2tf | int8 latency edgec/onnx2tf | "
             "int8 SQNR dB edgec vs onnx2tf | onnx2tf int8 / ORT fp32 latency | onnx2tf notes |"),
            "|" + "---|" * 7]
    for model, variants in results.items():
        by = {v.name: v for v in variants}

        def fig(name: str, key: str, by: dict[str, Variant] = by) -> Any:
            v = by.get(name)
            return v.figures.get(key) if v is not None else None

        notes = "; ".join(f"{k}: {by[k].note}" for k in ("onnx2tf", "onnx2tf-int8")
                          if k in by and by[k].path is None)
        rows.append(f"| {model} | {_ratio(fig('edgec:tflite-fp32', 'latency_ms'), fig('onnx2tf', 'latency_ms'))} | "
                    f"{_fmt(fig('edgec:tflite-fp32', 'sqnr_db'), '.1f')} vs {_fmt(fig('onnx2tf', 'sqnr_db'), '.1f')} | "
                    f"{_ratio(fig('edgec:tflite-int8', 'latency_ms'), fig('onnx2tf-int8', 'latency_ms'))} | "
                    f"{_fmt(fig('edgec:tflite-int8', 'sqnr_db'), '.1f')} vs "
                    f"{_fmt(fig('onnx2tf-int8', 'sqnr_db'), '.1f')} | "
                    f"{_ratio(fig('onnx2tf-int8', 'latency_ms'), fig('fp32', 'latency_ms'))} | "
                    f"{notes.replace('|', '/') or '–'} |")
    return "\n".join(rows) + "\n"


def _pair(default: Variant | None, minmax: Variant | None, ref: Variant | None, attr: str) -> str:
    """``x<default/ref> (x<minmax/ref>)`` for a build figure (wall time, peak RSS)."""
    r = getattr(ref, attr) if ref else None
    alt = _ratio(getattr(minmax, attr), r) if minmax is not None else "–"
    return f"{_ratio(getattr(default, attr) if default else None, r)} ({alt})"


def fidelity(results: dict[str, list[Variant]], shifted: dict[str, list[dict]]) -> str:
    """Held-aside int8 SQNR (and argmax agreement) per trained model and distribution: the in-distribution
    figures are the model's main table, the shifted ones tools/accuracy.py's rows."""
    if not shifted:
        return ""
    edgec8 = {v.name for vs in results.values() for v in vs
              if v.name.startswith("edgec:") and "int8" in v.name and "@" not in v.name}
    fix = any(v.name == "nncf+fix" for vs in results.values() for v in vs) or any(
        r["variant"] == "nncf+fix" for rs in shifted.values() for r in rs)
    names = ["ort-quant", "nncf", *(["nncf+fix"] if fix else []), *sorted(edgec8)]
    intro = ("Output SQNR dB against fp32 on evaluation images whose source photos calibration never saw, "
             "as aggregate / per-sample median (the aggregate is set by the worst few images; the median is what a "
             "typical image sees), argmax agreement in brackets where the output is class scores. Each "
             "distribution is calibrated "
             "on its own data; NNCF: `nncf.quantize` defaults (\"fix\": NNCF refused the raw file, the figure is after "
             "the manual opset-13 / lifted-Constants fix); nncf+fix: NNCF on the fixed file wherever the fix "
             "changes it.\n")
    rows = ["## Held-aside int8 fidelity, two distributions\n", intro,
            "| model | data | " + " | ".join(names) + " |", "|" + "---|" * (2 + len(names))]

    def cell(sqnr: float | None, median: float | None, agree: float | None, fixed: bool = False) -> str:
        if sqnr is None:
            return "failed"
        return (f"{sqnr:.1f}" + (f" / {median:.1f}" if median is not None else "")
                + (f" ({agree:.2f})" if agree is not None else "") + (" fix" if fixed else ""))

    for model, rs in shifted.items():
        by = {v.name: v for v in results.get(model, [])}
        d0 = accuracy.DISTS[model][0]
        cells = []
        for n in names:
            v = by.get(n)
            f = v.figures if v is not None else {}
            cells.append(cell(f.get("sqnr_db"), f.get("sample_sqnr_median"), f.get("top1_agree"),
                              "manual fix" in (v.note if v else ""))
                         if v is not None else "–")
        rows.append(f"| {model} | {d0.name} ({d0.role}) | " + " | ".join(cells) + " |")
        for dist in sorted({r["dist"] for r in rs}):
            got = {r["variant"]: r for r in rs if r["dist"] == dist}
            got.setdefault("ort-quant", got.get("ort", {}))
            role = next(r["role"] for r in rs if r["dist"] == dist)
            cells = [cell(got[n].get("sqnr_db"), got[n].get("sample_sqnr_median"), got[n].get("argmax_agree"))
                     if n in got else "–"
                     for n in names]
            rows.append(f"| {model} | {dist} ({role}) | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


# ------------------------------------------------------------------------------------------- physical limit
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


def model_macs(model_path: Path, feed: Feed) -> int:
    """MACs at the benchmarked input size (dynamic dims pinned to the feed's)."""
    import edgec
    from edgec import metrics

    shapes = {k: tuple(v.shape) for k, v in feed.items()}
    return int(metrics.summarize(edgec.load(model_path, shapes=shapes)).macs)


def peak_fractions(macs: int, variants: list[Variant], peaks: dict[str, float]) -> str:
    """One line per timed variant (ORT and LiteRT): achieved GOP/s and its fraction of the fp32 or int8 GEMM
    peak (tflite-fp16 computes in fp32: fp16 weights are dequantized once)."""
    lines = []
    for v in variants:
        ms = v.figures.get("latency_ms")
        if not ms or not macs:
            continue
        kind = "int8" if ("int8" in v.name or v.name == "ort-quant") else "fp32"
        gops = 2 * macs / (ms / 1e3) / 1e9
        lines.append(f"{v.name} {gops:.1f} GOP/s = {100 * gops / peaks[kind]:.1f}% of the {kind} GEMM peak")
    return f"- physical limit ({macs / 1e6:.1f} MMACs): " + "; ".join(lines) + "\n"


# ------------------------------------------------------------------------------------------- plot
PLOT_VARIANTS = ["onnxsim", "onnxslim", "ort-quant", "edgec:cpu-fp32", "edgec:cpu-int8", "edgec:tflite-fp32",
                 "edgec:tflite-fp16", "edgec:tflite-int8"]
BROKEN_DB = 10.0
PALETTE = [(150, 150, 150), (90, 90, 90), (230, 140, 30), (40, 110, 200), (20, 60, 140), (60, 170, 90),
           (30, 130, 60), (10, 90, 40)]


def plot(results: dict[str, list[Variant]], path: Path) -> Path:
    """Grouped bars: speed-up over fp32 ONNX Runtime (fp32 median / variant median) per model and variant,
    on a log2 axis so 2x faster and 2x slower are the same height above and below the 1x line."""
    from PIL import Image, ImageDraw

    models = list(results)
    w_group, bar, left, top, h = 8 * 14 + 24, 14, 60, 40, 360
    width, height = max(760, left + len(models) * w_group + 20), top + h + 80
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    lo, hi = -2.0, 2.0  # log2 range: 0.25x .. 4x

    def y_of(speed: float) -> float:
        return top + h * (hi - min(hi, max(lo, math.log2(speed)))) / (hi - lo)

    d.text((left, 8), "speed-up over fp32 ONNX Runtime (median latency, 2 threads; log scale); hollow bar: "
           f"output SQNR < {BROKEN_DB:g} dB (broken numerics)", fill="black")
    for k in range(int(lo), int(hi) + 1):
        y = y_of(2.0**k)
        d.line([(left - 4, y), (width - 10, y)], fill=(0, 0, 0) if k == 0 else (220, 220, 220))
        d.text((6, y - 6), f"{2.0 ** k:g}x", fill="black")
    for i, model in enumerate(models):
        by = {v.name: v.figures for v in results[model]}
        base = by.get("fp32", {}).get("latency_ms")
        x0 = left + i * w_group + 10
        for j, name in enumerate(PLOT_VARIANTS):
            ms = by.get(name, {}).get("latency_ms")
            if base and ms:
                y1, y0 = y_of(base / ms), y_of(1.0)
                # A fast variant with broken outputs must not look like a win: hollow bar.
                broken = by[name].get("sqnr_db", 99.0) < BROKEN_DB
                d.rectangle([x0 + j * bar, min(y0, y1), x0 + (j + 1) * bar - 2, max(y0, y1)],
                            fill=None if broken else PALETTE[j], outline=PALETTE[j])
        d.text((x0, top + h + 6), model[:16], fill="black")
    ly = top + h + 30
    for j, name in enumerate(PLOT_VARIANTS):
        x = left + (j % 4) * 170
        yy = ly + (j // 4) * 18
        d.rectangle([x, yy, x + 10, yy + 10], fill=PALETTE[j])
        d.text((x + 14, yy - 1), name, fill="black")
    img.save(path)
    return path
