"""Per-layer quantization analysis, and the int8-vs-fp32 speed check behind ``--fallback auto``.

``layer_sqnr`` runs the float and the quantized model side by side on real feeds (one feed at a time,
running sums only, so memory does not grow with the data) and gives, for every quantized activation,
the SQNR of its dequantized value against the float model's value of the same tensor: the error
accumulated up to and including that tensor's own rounding. Worst first, it shows where accuracy is
lost; ``edgec quant-report MODEL --calib X`` prints it (terminal), writes JSON and an HTML bar plot.
"""

from __future__ import annotations

import html
import math
import statistics
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from edgec import model_io, runtime
from edgec.calib import with_outputs
from edgec.graph import const_array

Feed = dict[str, np.ndarray]


def quantized_tensors(int8_model: ir.Model, fp32_names: set[str]) -> list[tuple[str, str, str]]:
    """(name in the float model, dequantized name in the int8 model, producing op) per activation Q/DQ."""
    pairs = []
    for node in int8_model.graph:
        if node.op_type != "QuantizeLinear":
            continue
        src = node.inputs[0]
        dq = next((u for u in node.outputs[0].consumers() if u.op_type == "DequantizeLinear"), None)
        if src is None or dq is None:
            continue
        out = dq.outputs[0].name or ""
        name = src.name or ""
        if name not in fp32_names and out in fp32_names:
            name = out  # a graph output: the DQ output took the interface name
        prod = src.producer()
        pairs.append((name, out, prod.op_type if prod is not None else "input"))
    return pairs


def layer_sqnr(fp32_model: ir.Model | bytes, int8_model: ir.Model, feeds: Iterable[Feed],
               limit: int | None = None) -> list[dict[str, Any]]:
    """SQNR (dB) and cosine of every quantized activation against its float value, worst first."""
    fp32 = fp32_model if isinstance(fp32_model, ir.Model) else model_io.from_bytes(fp32_model)
    fp32_names: set[str] = {v.name for n in fp32.graph for v in n.outputs if v.name} | \
        {v.name for v in fp32.graph.inputs if v.name}
    pairs = [p for p in quantized_tensors(int8_model, fp32_names) if p[0] in fp32_names]
    if not pairs:
        return []
    outs = [o.name or "" for o in fp32.graph.outputs]
    # The int8 side is read as the QuantizeLinear's integers, dequantized here: a quarter of the bytes
    # ONNX Runtime hands back (the detector's ~500 activations were 1 GB per image as float).
    ints = _integer_sources(int8_model)
    f_names = list(dict.fromkeys([p[0] for p in pairs] + outs))
    q_names = list(dict.fromkeys([ints[p[1]][0] if p[1] in ints and p[1] not in outs else p[1] for p in pairs]
                                 + outs))
    types = {ints[q][0]: ints[q][3] for q in ints}
    sf = runtime.session(with_outputs(fp32, f_names), optimization="basic", lean=True)
    sq = runtime.session(with_outputs(int8_model, q_names, types), optimization="basic", lean=True)
    acc = {p[0]: np.zeros(4) for p in pairs}  # sum a^2, sum (a-b)^2, sum a*b, sum b^2
    acc_out = {o: np.zeros(4) for o in outs}
    for i, feed in enumerate(feeds):
        if limit is not None and i >= limit:
            break
        a = dict(zip(f_names, sf.run(f_names, runtime.input_feed(sf, feed))))
        b = dict(zip(q_names, sq.run(q_names, runtime.input_feed(sq, feed))))
        for f, q, _op in pairs:
            if q in ints and q not in outs:
                name, scale, zp, _t = ints[q]
                _accumulate(acc[f], a[f], (b[name].astype(np.float32) - np.float32(zp)) * np.float32(scale))
            else:
                _accumulate(acc[f], a[f], b[q])
        for o in outs:
            _accumulate(acc_out[o], a[o], b[o])
        del a, b
    rows: list[dict[str, Any]] = []
    for f, q, op in pairs:
        rows.append({"tensor": f, "op": op, **_figures(acc[f])})
    rows.sort(key=lambda r: float(r["sqnr_db"]))
    for o in outs:
        rows.append({"tensor": o, "op": "output", "is_output": True, **_figures(acc_out[o])})
    return rows


def _integer_sources(int8_model: ir.Model) -> dict[str, tuple[str, float, int, int]]:
    """DequantizeLinear output -> (its integer input, scale, zero point, ONNX elem type), for per-tensor
    DQs of a QuantizeLinear output."""
    out: dict[str, tuple[str, float, int, int]] = {}
    for node in int8_model.graph:
        if node.op_type != "DequantizeLinear" or node.inputs[0] is None:
            continue
        q = node.inputs[0].producer()
        if q is None or q.op_type != "QuantizeLinear" or q.outputs[0].dtype is None:
            continue
        s = const_array(node.inputs[1])
        z = const_array(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else np.zeros(())
        if s is None or z is None or s.size != 1 or z.size != 1 or node.inputs[0].name is None:
            continue
        out[node.outputs[0].name or ""] = (node.inputs[0].name, float(s), int(z), int(q.outputs[0].dtype.value))
    return out


def _accumulate(acc: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
    a32, b32 = np.asarray(a, np.float32).ravel(), np.asarray(b, np.float32).ravel()
    if a32.shape != b32.shape:
        return
    if a32.size > 1 << 20:  # an odd-strided subsample of huge maps: the ratio is what matters
        step = (a32.size >> 20) | 1
        a32, b32 = a32[::step], b32[::step]
    d = a32 - b32
    # BLAS dot products (float32 in, accumulated blockwise): 20x faster than float64 elementwise sums.
    acc += (float(np.dot(a32, a32)), float(np.dot(d, d)), float(np.dot(a32, b32)), float(np.dot(b32, b32)))


def _figures(acc: np.ndarray) -> dict[str, float]:
    sig, noise, ab, bb = (float(x) for x in acc)
    sqnr = 10 * math.log10(sig / noise) if noise > 0 and sig > 0 else (math.inf if noise == 0 else -math.inf)
    cos = ab / math.sqrt(sig * bb) if sig > 0 and bb > 0 else 1.0
    return {"sqnr_db": round(sqnr, 2) if math.isfinite(sqnr) else sqnr, "cosine": round(cos, 6)}


# ------------------------------------------------------------------------------------------- speed check
def compare_fp32(fp32_model: ir.Model | bytes | str | Path, int8_model: ir.Model | bytes | str | Path,
                 feed: Feed, *, runs: int = 30, rounds: int = 3, threads: int = 2,
                 decisive: float = 0.1) -> dict[str, Any]:
    """Median latency of the int8 and the fp32 model in ONNX Runtime CPU, single runs alternated.

    Returns {fp32_ms, int8_ms, ratio (int8/fp32), int8_slower, pairs}. ``ratio`` > 1 means int8 is
    slower: with ``--fallback auto`` the caller keeps the fp32 model (or a partially float variant).
    Alternating single runs exposes both models to the same load; the loop stops after 5 pairs when the
    ratio is 2 * ``decisive`` away from 1, after ``min(runs, 10)`` pairs when it is ``decisive`` away,
    else runs up to ``runs * rounds`` pairs. On a detector this cut the check from 78 runs to ~12.
    """
    sessions = {k: runtime.session(Path(m) if isinstance(m, str) else m, threads=threads)
                for k, m in (("fp32", fp32_model), ("int8", int8_model))}
    feeds = {k: runtime.input_feed(s, feed) for k, s in sessions.items()}
    names = {k: [o.name for o in s.get_outputs()] for k, s in sessions.items()}
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for k, s in sessions.items():  # warm-up: first runs allocate and pre-pack
        for _ in range(2):
            s.run(names[k], feeds[k])
    minimum = max(5, min(runs, 10))
    for i in range(runs * rounds):
        order = ("fp32", "int8") if i % 2 == 0 else ("int8", "fp32")
        for k in order:
            t0 = time.perf_counter()
            sessions[k].run(names[k], feeds[k])
            times[k].append((time.perf_counter() - t0) * 1e3)
        if i + 1 >= 5:
            r = statistics.median(times["int8"]) / statistics.median(times["fp32"])
            if abs(r - 1) > 2 * decisive or (i + 1 >= minimum and abs(r - 1) > decisive):
                break
    f, q = statistics.median(times["fp32"]), statistics.median(times["int8"])
    return {"fp32_ms": round(f, 3), "int8_ms": round(q, 3), "ratio": round(q / f, 3) if f > 0 else math.inf,
            "int8_slower": q > f, "threads": threads, "pairs": len(times["int8"])}


def fastest(variants: dict[str, ir.Model | bytes], feed: Feed, *, runs: int = 20, rounds: int = 3,
            threads: int = 2) -> tuple[str, dict[str, float]]:
    """The name of the fastest variant (median over interleaved rounds) and every variant's ms."""
    sessions = {k: runtime.session(m, threads=threads) for k, m in variants.items()}
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(rounds):
        for k, s in sessions.items():
            times[k].append(runtime.time_session(s, feed, runs=runs, warmup=3)["median_ms"])
    med = {k: round(statistics.median(v), 3) for k, v in times.items()}
    return min(med, key=med.__getitem__), med


# ------------------------------------------------------------------------------------------- the report
def quant_report(model: str | Path, calib: str | Path | None, *, target: str = "cpu-int8",
                 calib_limit: int | None = None, report_limit: int = 32, options: dict[str, Any] | None = None,
                 shapes: dict[str, tuple[int, ...]] | None = None) -> dict[str, Any]:
    """Compile ``model`` for an int8 target and measure every quantized tensor on the calibration data.

    The logic behind ``edgec quant-report MODEL --calib X [--target T] [--calib-method M] [--exclude ...]``.
    Returns {model, target, method, warnings, layers: [...worst first...], outputs: [...], weights: [...]}.
    """
    import edgec
    from edgec import data, targets

    # Compare against the float model right before quantize (after fuse-bn etc.): tensor names keep
    # their meaning only there (a Conv output means Conv+BN once BN is folded).
    # The float part and the int8 part of the target's pipeline come from its stages (split_pipeline).
    from edgec.sensitivity import QUANTIZE, split_pipeline

    before, int8_part = split_pipeline(targets.get(target))
    fp32 = edgec.compile(model, target=target, passes=before, shapes=shapes).model if before else \
        edgec.api.load_model(model, shapes)
    fp32_bytes = model_io.to_bytes(fp32)
    res = edgec.compile(model_io.from_bytes(fp32_bytes), target=target, passes=int8_part, calib=calib,
                        calib_limit=calib_limit, options=options)
    q = next((r for r in res.records if r.name == QUANTIZE), None)
    src = data.load_feeds(calib if calib is not None else "random", fp32, limit=calib_limit,
                          preprocess=(options or {}).get("preprocess"))
    warnings = list(res.context.warnings)
    if src is None or src.synthetic:
        warnings.append("quant-report measured on RANDOM data: per-layer figures do not describe real inputs")
    rows = layer_sqnr(fp32, res.model, src or [], limit=report_limit)
    details = q.details if q is not None else {}
    planned = {r["tensor"]: r for r in details.get("layers", []) if r.get("kind") == "activation"}
    for r in rows:
        p = planned.get(r["tensor"])
        if p:
            r.update({k: p[k] for k in ("scale", "zero_point", "method", "lo", "hi") if k in p})
    return {"model": str(model), "target": target, "method": details.get("method"), "warnings": warnings,
            "layers": [r for r in rows if not r.get("is_output")],
            "outputs": [r for r in rows if r.get("is_output")],
            "weights": [r for r in details.get("layers", []) if r.get("kind") == "weight"],
            "skipped": details.get("skipped", []), "calibration": details.get("calibration", {})}


def format_table(report: dict[str, Any], top: int = 20) -> str:
    lines = [f"{report['model']} -> {report['target']} (method {report.get('method')})"]
    for w in report.get("warnings", []):
        lines.append(f"WARNING: {w}")
    for o in report.get("outputs", []):
        lines.append(f"output {o['tensor']}: SQNR {o['sqnr_db']} dB, cosine {o['cosine']}")
    lines.append(f"{'tensor':50} {'op':18} {'SQNR dB':>8} {'cosine':>9} {'method':>10}")
    for r in report["layers"][:top]:
        lines.append(f"{r['tensor'][:50]:50} {r['op'][:18]:18} {r['sqnr_db']:8.2f} {r['cosine']:9.5f} "
                     f"{r.get('method', '')!s:>10}")
    if len(report["layers"]) > top:
        lines.append(f"... {len(report['layers']) - top} more (best last)")
    return "\n".join(lines)


def to_html(report: dict[str, Any]) -> str:
    """A self-contained HTML page: per-layer SQNR as a horizontal bar plot (inline SVG), worst first."""
    rows = report["layers"]
    finite = [r["sqnr_db"] for r in rows if isinstance(r["sqnr_db"], (int, float)) and math.isfinite(r["sqnr_db"])]
    top = max(finite + [1.0])
    bar_h, label_w, plot_w = 16, 360, 420
    parts = [(f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_w + plot_w + 80}" '
              f'height="{bar_h * len(rows) + 10}" font-family="monospace" font-size="11">')]
    for i, r in enumerate(rows):
        v = r["sqnr_db"] if isinstance(r["sqnr_db"], (int, float)) and math.isfinite(r["sqnr_db"]) else top
        w = max(1.0, plot_w * max(v, 0) / top)
        color = "#c0392b" if v < 20 else "#e67e22" if v < 30 else "#27ae60"
        y = i * bar_h + 4
        parts.append(f'<text x="{label_w - 4}" y="{y + 11}" text-anchor="end">{html.escape(r["tensor"][-48:])}</text>')
        parts.append(f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h - 3}" fill="{color}"/>')
        parts.append(f'<text x="{label_w + w + 4:.1f}" y="{y + 11}">{r["sqnr_db"]} dB</text>')
    parts.append("</svg>")
    warn = "".join(f"<p style='color:#c0392b'><b>WARNING:</b> {html.escape(w)}</p>" for w in report.get("warnings", []))
    outs = "".join(f"<li>{html.escape(o['tensor'])}: SQNR {o['sqnr_db']} dB, cosine {o['cosine']}</li>"
                   for o in report.get("outputs", []))
    return (f"<!doctype html><meta charset='utf-8'><title>quant-report</title>"
            f"<h1>Per-layer quantization SQNR</h1><p>{html.escape(report['model'])} &rarr; "
            f"{html.escape(report['target'])}, method {html.escape(str(report.get('method')))}</p>{warn}"
            f"<ul>{outs}</ul>{''.join(parts)}")


def write(report: dict[str, Any], path: str | Path) -> None:
    import json

    p = Path(path)
    with model_io.atomic_path(p) as tmp:
        if p.suffix == ".html":
            Path(tmp).write_text(to_html(report))
        else:
            Path(tmp).write_text(json.dumps(report, indent=1, default=str))


def worst(rows: Sequence[dict[str, Any]], n: int = 5) -> list[str]:
    return [r["tensor"] for r in rows[:n]]
