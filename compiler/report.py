"""The report: the list of pass records (plus the backend's figures) in three views.

Terminal table (rich), JSON (every figure), and one self-contained HTML page with inline SVG plots.
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
from pathlib import Path
from typing import Any

from edgec import graphdiff, report_html
from edgec.model_io import atomic_path
from edgec.records import Artifacts, PassRecord


@dataclasses.dataclass
class Report:
    model: str
    target: str | None
    records: list[PassRecord]
    artifacts: Artifacts | None = None
    warnings: list[str] = dataclasses.field(default_factory=list)
    samples: str = ""
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    # -- JSON ---------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "target": self.target, "samples": self.samples, "warnings": self.warnings,
                "passes": [r.to_dict() for r in self.records],
                "backend": self.artifacts.to_dict() if self.artifacts else None,
                "graph_diff_cost": graphdiff.cost(self.records), **self.extra}

    def to_json(self, path: str | Path) -> Path:
        path = Path(path)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(_finite(self.to_dict()), indent=2, default=str))
        return path

    # -- terminal -----------------------------------------------------------------------------------
    def print(self, console: Any = None) -> None:
        from rich.console import Console
        from rich.table import Table

        console = console or Console()
        table = Table(title=f"edgec: {self.model}" + (f"  target {self.target}" if self.target else ""),
                      title_justify="left")
        for col, just in [("pass", "left"), ("s", "right"), ("nodes", "right"), ("params", "right"),
                          ("MMACs", "right"), ("KB", "right"), ("max rel", "right"), ("n", "right"),
                          ("SQNR dB", "right"), ("min dB", "right"), ("top-1", "right"), ("", "left")]:
            table.add_column(col, justify=just)  # type: ignore[arg-type]
        for r in self.records:
            d = r.drift
            table.add_row(
                r.name + ("" if r.exact else " ~"), f"{r.seconds:.2f}", str(r.summary.nodes), f"{r.summary.params:,}",
                f"{r.summary.macs / 1e6:.2f}", f"{r.summary.bytes / 1024:.1f}",
                "-" if d is None else f"{d.max_rel:.1e}", "-" if d is None or not d.samples else str(d.samples),
                "-" if d is None else _db(d.sqnr_db), "-" if d is None or d.sqnr_min is None else _db(d.sqnr_min),
                "-" if d is None or d.top1 is None else f"{d.top1:.3f}",
                r.status if r.status != "ok" else ("" if r.changed else "no change"))
        console.print(table)
        if self.samples:
            console.print(self.samples)
        if self.artifacts:
            a = self.artifacts
            lat = a.figures.get("latency", {})
            parts = [f"backend {a.backend}"] + [f"{k}: {v}" for k, v in a.files.items()]
            if lat:
                parts.append(f"latency {lat['median_ms']:.3f} ms (median of {lat['runs']}, 2 threads)")
            console.print("  ".join(parts))
            d = a.figures.get("drift")
            if isinstance(d, dict) and "sqnr_db" in d:
                # What the artifact computes in its runtime with every optimization on (fused kernels can
                # differ from the op-by-op numbers in the table above).
                console.print(f"artifact vs input model in {a.backend}{drift_line(d)}")
            for note in a.notes:
                console.print(f"[yellow]note:[/] {note}")
        for w in self.warnings:
            console.print(f"[bold yellow]warning:[/] {w}")

    # -- HTML ---------------------------------------------------------------------------------------
    def to_html(self, path: str | Path) -> Path:
        path = Path(path)
        recs = self.records
        labels = [r.name for r in recs]
        plots = [
            _bars("nodes", labels, [r.summary.nodes for r in recs]),
            _bars("parameters", labels, [r.summary.params for r in recs]),
            _bars("MACs", labels, [r.summary.macs for r in recs]),
            _bars("bytes", labels, [r.summary.bytes for r in recs]),
            _bars("output SQNR vs input model (dB, capped at 120)", labels,
                  [min(r.drift.sqnr_db, 120) if r.drift else 0 for r in recs]),
        ]
        rows = "".join(
            "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in (
                r.name, "exact" if r.exact else "lossy", f"{r.seconds:.3f}", r.summary.nodes, f"{r.summary.params:,}",
                f"{r.summary.macs:,}", f"{r.summary.bytes:,}",
                "-" if r.drift is None else f"{r.drift.max_rel:.2e}",
                "-" if r.drift is None or not r.drift.samples else r.drift.samples,
                "-" if r.drift is None else _db(r.drift.sqnr_db),
                "-" if r.drift is None or r.drift.sqnr_min is None else _db(r.drift.sqnr_min),
                "-" if r.drift is None or r.drift.top1 is None else f"{r.drift.top1:.4f}", r.status,
                ", ".join(f"{k} {v}" for k, v in _op_delta(recs, r).items()))) + "</tr>"
            for r in recs)
        warn = "".join(f"<p class=w>warning: {html.escape(w)}</p>" for w in self.warnings)
        backend = report_html.backend_tables(_finite(self.artifacts.to_dict())) if self.artifacts else ""
        details = "<h2>passes</h2>" + "".join(_pass_html(recs, r) for r in recs[1:])
        extra = _spread_html(recs, self.artifacts) + "".join(self.extra.get("html_sections", []))
        page = f"""<!doctype html><html><head><meta charset="utf-8"><title>edgec report</title><style>
body{{font-family:system-ui,sans-serif;margin:2em;color:#222}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right;font-size:13px}}td:first-child{{text-align:left}}
.w{{color:#a60;font-weight:bold}}.plots{{display:flex;flex-wrap:wrap;gap:16px}}{report_html.CSS}</style>
{report_html.SCRIPT}</head><body>
<h1>edgec report</h1>{report_html.search_bar()}<p>model <b>{html.escape(self.model)}</b>{' &middot; target <b>' + html.escape(self.target) + '</b>' if self.target else ''}
&middot; samples: {html.escape(self.samples or 'none')}</p>{warn}
<table><tr><th>pass</th><th>kind</th><th>s</th><th>nodes</th><th>params</th><th>MACs</th><th>bytes</th>
<th>max rel</th><th>n</th><th>SQNR dB</th><th>min dB</th><th>top-1</th><th>status</th><th>op changes</th></tr>{rows}</table>
<div class=plots>{''.join(plots)}</div>{details}{extra}{backend}</body></html>"""
        with atomic_path(path) as tmp:
            tmp.write_text(page)
        return path


def drift_line(d: dict[str, Any], held: str = "held-aside") -> str:
    """The drift as one line: the aggregate over every scored sample, then its spread (worst sample,
    10th percentile, median, inputs below 10 dB) and the top-1 flips by sample number. Used by compile
    (the artifact) and diff."""
    n = d.get("samples") or 0
    text = f" on {n} {held + ' ' if held else ''}samples" if n else ""
    text += f": SQNR {_db(d['sqnr_db'])} dB"
    if d.get("sqnr_min") is not None:
        text += (f" (per sample: min {_db(d['sqnr_min'])} at sample {d.get('worst_sample')}, "
                 f"p10 {_db(d['sqnr_p10'])}, median {_db(d['sqnr_median'])}; "
                 f"{d.get('below_10db', 0)} below 10 dB)")
    if d.get("top1") is not None:
        flips = d.get("flips") or []
        text += f"  top-1 {d['top1']:.3f}"
        if n:
            shown = ", ".join(str(i) for i in flips[:10]) + (", ..." if len(flips) > 10 else "")
            text += f" ({len(flips)} flipped{': samples ' + shown if flips else ''})"
    return text + f"  max rel {d['max_rel']:.1e}  cosine {d['cosine']:.5f}"


def _spread_html(records: list[PassRecord], artifacts: Artifacts | None) -> str:
    """Per-sample spread of every scored result: the numbers an aggregate hides."""
    rows = [(r.name, r.drift.to_dict()) for r in records if r.drift is not None and r.drift.sqnr_min is not None
            and not r.exact]
    art = artifacts.figures.get("drift") if artifacts else None
    if isinstance(art, dict) and art.get("sqnr_min") is not None:
        rows.append((f"artifact ({artifacts.backend if artifacts else ''})", art))
    if not rows:
        return ""
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in (
            name, d.get("samples"), _db(d["sqnr_db"]), _db(d["sqnr_min"]), d.get("worst_sample"),
            _db(d["sqnr_p10"]), _db(d["sqnr_median"]), d.get("below_10db"),
            "-" if d.get("top1") is None else f"{d['top1']:.4f}", len(d.get("flips") or []),
            ", ".join(str(i) for i in d.get("flips") or []) or "-",
            ", ".join(str(i) for i in d.get("confident_flips") or []) or "-")) + "</tr>"
        for name, d in rows)
    return ("<h2>held-aside spread</h2><table><tr><th>result</th><th>samples</th><th>SQNR dB (all)</th>"
            "<th>min dB</th><th>worst sample</th><th>p10 dB</th><th>median dB</th><th>&lt; 10 dB</th>"
            "<th>top-1</th><th>flips</th><th>flipped samples</th><th>confident flips</th></tr>"
            f"{body}</table>")


def _pass_html(recs: list[PassRecord], r: PassRecord) -> str:
    """One pass: its op delta, drift, before/after drawings and tables (edgec.report_html)."""
    prev = recs[recs.index(r) - 1].summary
    d = r.drift
    drift = "" if d is None else (f"drift vs input model: max rel {d.max_rel:.2e}, SQNR {_db(d.sqnr_db)} dB, "
                                  f"cosine {d.cosine:.6f}" + (f", worst output {html.escape(d.worst_output)}"
                                                              if d.worst_output else ""))
    if r.status != "ok":
        drift = f"<b>{html.escape(r.status)}</b>: {html.escape(r.message)}<br>{drift}"
    head = (f"<b>{html.escape(r.name)}</b> &middot; {'exact' if r.exact else 'lossy'} &middot; {r.seconds:.2f} s "
            f"&middot; nodes {prev.nodes} &rarr; {r.summary.nodes} &middot; {report_html.diff_summary(r.diff)}")
    ops = ", ".join(f"{k} {v}" for k, v in _op_delta(recs, r).items())
    changed = bool(r.diff and not graphdiff.is_empty(r.diff))
    return report_html.pass_section(r.name, head, drift, ops, _finite(r.diff) if r.diff else None,
                                    _finite(r.details), is_open=changed or r.status != "ok")


def _db(x: float) -> str:
    return "inf" if math.isinf(x) and x > 0 else f"{x:.1f}"


def _op_delta(recs: list[PassRecord], r: PassRecord) -> dict[str, str]:
    i = recs.index(r)
    if i == 0:
        return {}
    before, after = recs[i - 1].summary.ops, r.summary.ops
    out = {}
    for op in sorted(set(before) | set(after)):
        d = after.get(op, 0) - before.get(op, 0)
        if d:
            out[op] = f"{d:+d}"
    return out


def _finite(obj: Any) -> Any:
    """JSON has no inf/nan: write them as strings a person can read."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _bars(title: str, labels: list[str], values: list[float], width: int = 420) -> str:
    """A horizontal bar chart as inline SVG (no plotting dependency)."""
    h_bar, pad, left = 16, 4, 130
    height = len(values) * (h_bar + pad) + 30
    top = max([abs(v) for v in values] + [1e-12])
    bars = []
    for i, (lab, v) in enumerate(zip(labels, values)):
        y = 24 + i * (h_bar + pad)
        w = max(1.0, (width - left - 70) * abs(v) / top)
        bars.append(f'<text x="{left - 4}" y="{y + 12}" font-size="11" text-anchor="end">{html.escape(lab)}</text>'
                    f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{h_bar}" fill="#4a7fb5"/>'
                    f'<text x="{left + w + 4:.1f}" y="{y + 12}" font-size="11">{_fmt(v)}</text>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">'
            f'<text x="4" y="14" font-size="13" font-weight="bold">{html.escape(title)}</text>{"".join(bars)}</svg>')


def _fmt(v: float) -> str:
    if isinstance(v, float) and not v.is_integer():
        return f"{v:.2f}"
    v = int(v)
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= div:
            return f"{v / div:.2f}{unit}"
    return str(v)
