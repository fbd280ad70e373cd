"""The HTML views of graph diffs: per-pass sections with before/after drawings, SQNR tables, backend tables.

Everything is inline (SVG, CSS, a few lines of JavaScript for the search box) so report.html is one file
that opens anywhere offline. Drawings show the changed region of a pass (changed nodes plus one hop of
context, as recorded by edgec.graphdiff) layered top to bottom by longest path from the region's
sources, ordered within a layer by the mean position of their producers (the barycenter heuristic of
Sugiyama, Tagawa & Toda, "Methods for visual understanding of hierarchical system structures", 1981).
Large passes stay readable: tables are cut at TABLE_CAP rows and drawings at graphdiff.REGION_CAP
changed nodes, and the page says what was cut.
"""

from __future__ import annotations

import html
import json
import math
import zlib
from typing import Any

TABLE_CAP = 200
SQNR_PLOT = 40
BOX_W, BOX_H, GAP_X, GAP_Y, PAD = 172, 38, 18, 46, 12
COLORS = {"removed": ("#f9d4d4", "#c33"), "added": ("#d6f2d6", "#2a8a2a"), "modified": ("#fdeab8", "#c77d00"),
          "rewired": ("#e1ebfb", "#4670b8"), "context": ("#f3f3f3", "#9a9a9a")}

CSS = """
.pass>summary{font-size:15px;cursor:pointer;margin:6px 0}.pass{border-top:1px solid #ddd;padding:4px 0}
.draw{display:grid;grid-template-columns:minmax(0,1fr) minmax(0,1fr);gap:14px;align-items:start}
.draw figure{margin:0;border:1px solid #ddd;padding:4px;max-height:720px;overflow:auto;min-width:0}
.draw figcaption{font-weight:bold;font-size:13px;position:sticky;left:0}.draw .cut{font-size:12px;margin:2px 0}
.nd text{font-size:11px;font-family:monospace}.nd .op{font-weight:bold;font-family:system-ui,sans-serif}
.hit rect{stroke:#d0f !important;stroke-width:4px !important}tr.hit td{background:#fff3a0}
.legend span{display:inline-block;padding:1px 6px;margin-right:6px;border:1px solid;font-size:12px}
.cut{color:#a60}.small td{font-size:12px}#find{font-size:14px;padding:3px 6px;width:22em}
.bar{position:sticky;top:0;background:#fff;padding:6px 0;border-bottom:1px solid #ccc;z-index:2}
"""

SCRIPT = """<script>
function edgecFind(q){q=q.trim().toLowerCase();let n=0;
document.querySelectorAll('[data-name]').forEach(function(e){
const hit=q.length>0&&e.getAttribute('data-name').toLowerCase().indexOf(q)>=0;e.classList.toggle('hit',hit);
if(e.tagName==='TR'){e.style.display=(q.length===0||hit)?'':'none';}
if(hit){n++;let d=e.closest('details');while(d){d.open=true;d=d.parentElement?d.parentElement.closest('details'):null;}}});
document.getElementById('hits').textContent=q.length?n+' match'+(n===1?'':'es'):'';}
</script>"""


def search_bar() -> str:
    legend = "".join(f'<span style="background:{f};border-color:{s}">{k}</span>' for k, (f, s) in COLORS.items())
    return (f'<div class=bar><input id=find type=search placeholder="find a node, tensor or op" '
            f'oninput="edgecFind(this.value)"> <span id=hits></span> <span class=legend>{legend}</span></div>')


# -- drawing ------------------------------------------------------------------------------------------
def draw(region: dict[str, Any], caption: str) -> str:
    """One side of a pass's changed region as an inline SVG, layered top to bottom."""
    nodes = region.get("nodes", [])
    cut = region.get("cut", 0)
    note = (f'<p class=cut>drawn: the first {region["changed"] - cut} of {region["changed"]} changed nodes '
            f'(and their neighbours); all are listed in the tables below</p>' if cut else "")
    if not nodes:
        return f"<figure><figcaption>{html.escape(caption)}</figcaption><p>(nothing)</p></figure>"
    producer = {o: i for i, n in enumerate(nodes) for o in n["outputs"]}
    preds: list[list[tuple[int, str]]] = [[(producer[x], x) for x in n["inputs"] if x in producer and producer[x] != i]
                                          for i, n in enumerate(nodes)]
    layer = [0] * len(nodes)
    for i in range(len(nodes)):  # graph order is topological, so one sweep gives the longest path
        layer[i] = max((layer[p] + 1 for p, _ in preds[i] if p < i), default=0)
    succ_layers: dict[int, list[int]] = {}
    for i, ps in enumerate(preds):
        for p, _ in ps:
            succ_layers.setdefault(p, []).append(i)
    for i in range(len(nodes) - 1, -1, -1):  # a source (a weight's DQ, a Constant) sits just above its user
        if not preds[i] and i in succ_layers:
            layer[i] = max(0, min(layer[j] for j in succ_layers[i]) - 1)
    rows: dict[int, list[int]] = {}
    for i, lv in enumerate(layer):
        rows.setdefault(lv, []).append(i)
    xpos: dict[int, float] = {}
    for lv in sorted(rows):
        members = rows[lv]
        bary = {i: (sum(xpos.get(p, 0.0) for p, _ in preds[i]) / len(preds[i]) if preds[i] else k)
                for k, i in enumerate(members)}
        members.sort(key=lambda i: bary[i])
        for k, i in enumerate(members):
            xpos[i] = float(k)
    width = max(len(m) for m in rows.values()) * (BOX_W + GAP_X) + 2 * PAD
    height = len(rows) * (BOX_H + GAP_Y) + 2 * PAD

    def xy(i: int) -> tuple[float, float]:
        return PAD + xpos[i] * (BOX_W + GAP_X), PAD + layer[i] * (BOX_H + GAP_Y)

    # One marker per drawing, with an id that is the same on every run (same inputs, same bytes).
    mid = f"ah{zlib.crc32(caption.encode()):08x}"
    parts = [(f'<defs><marker id="{mid}" viewBox="0 0 8 8" refX="8" refY="4" markerWidth="7" markerHeight="7" '
             f'orient="auto"><path d="M0,0L8,4L0,8z" fill="#777"/></marker></defs>')]
    for i, ps in enumerate(preds):
        for p, tensor in ps:
            (x1, y1), (x2, y2) = xy(p), xy(i)
            x1, y1, x2 = x1 + BOX_W / 2, y1 + BOX_H, x2 + BOX_W / 2
            dy = (y2 - y1) / 2
            parts.append(f'<path d="M{x1:.0f},{y1:.0f} C{x1:.0f},{y1 + dy:.0f} {x2:.0f},{y2 - dy:.0f} {x2:.0f},{y2:.0f}" '
                         f'fill="none" stroke="#888" marker-end="url(#{mid})"><title>{html.escape(tensor)}</title></path>')
    for i, n in enumerate(nodes):
        x, y = xy(i)
        fill, stroke = COLORS.get(n["mark"], COLORS["context"])
        name = n["name"]
        short = name if len(name) <= 24 else "\u2026" + name[-23:]
        tip = f"{name} ({n['op']}, {n['mark']})\nin: {', '.join(n['inputs'])}\nout: {', '.join(n['outputs'])}"
        search = " ".join([name, n["op"], *n["outputs"]])
        parts.append(
            f'<g class=nd data-name="{html.escape(search)}" transform="translate({x:.0f},{y:.0f})">'
            f'<title>{html.escape(tip)}</title><rect width="{BOX_W}" height="{BOX_H}" rx="5" fill="{fill}" '
            f'stroke="{stroke}" stroke-width="{2 if n["mark"] != "context" else 1}"/>'
            f'<text class=op x="6" y="15">{html.escape(n["op"][:26])}</text>'
            f'<text x="6" y="30">{html.escape(short)}</text></g>')
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}">{"".join(parts)}</svg>')
    return f"<figure><figcaption>{html.escape(caption)} ({len(nodes)} nodes)</figcaption>{note}{svg}</figure>"


# -- tables -------------------------------------------------------------------------------------------
def table(rows: list[dict[str, Any]], cols: list[str], total: int | None = None, key: str = "name") -> str:
    total = len(rows) if total is None else total
    body = "".join(f'<tr data-name="{html.escape(str(r.get(key, "")))}">'
                   + "".join(f"<td>{html.escape(_cell(r.get(c)))}</td>" for c in cols) + "</tr>"
                   for r in rows[:TABLE_CAP])
    more = (f'<p class=cut>{total - min(TABLE_CAP, len(rows))} more rows in report.json</p>'
            if total > min(TABLE_CAP, len(rows)) else "")
    return f'<table class=small><tr>{"".join(f"<th>{html.escape(c)}</th>" for c in cols)}</tr>{body}</table>{more}'


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "inf" if math.isinf(v) else f"{v:.4g}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, (list, str, int, type(None))) for x in v):
        return f"{_cell(v[0])} \u2192 {_cell(v[1])}"
    if isinstance(v, dict):
        return "; ".join(f"{k}: {_cell(x)}" for k, x in v.items())
    if isinstance(v, list):
        return ", ".join(_cell(x) for x in v)
    return str(v)


def diff_body(d: dict[str, Any], before: str = "before", after: str = "after") -> str:
    """Drawings plus the removed/added/modified/rewired/initializer tables of one diff."""
    c = d["counts"]
    region = d.get("region", {})
    if region.get("before", {}).get("nodes") or region.get("after", {}).get("nodes"):
        drawings = (f'<div class=draw>{draw(region.get("before", {}), before)}'
                    f'{draw(region.get("after", {}), after)}</div>')
    else:
        drawings = "<p>no node changed (initializers only)</p>"
    blocks = []
    for key, cols in (("removed", ["op", "name", "inputs", "outputs"]), ("added", ["op", "name", "inputs", "outputs"]),
                      ("modified", ["op", "name", "renamed_from", "op_before", "inputs", "outputs", "attrs", "weights"]),
                      ("rewired", ["node", "slot", "before", "after"]),
                      ("initializers_removed", ["name", "shape", "dtype", "bytes"]),
                      ("initializers_added", ["name", "shape", "dtype", "bytes"]),
                      ("initializers_changed", ["name", "shape", "dtype", "bytes"])):
        if c.get(key):
            rows = d.get(key, [])
            blocks.append(f'<details><summary>{key.replace("_", " ")} ({c[key]})</summary>'
                          f'{table(rows, cols, c[key], key="node" if key == "rewired" else "name")}</details>')
    return drawings + "".join(blocks)


def diff_summary(d: dict[str, Any] | None) -> str:
    if not d:
        return "no diff recorded"
    c = d["counts"]
    if not any(c.values()):
        return "no structural change"
    parts = [f"{c[k]} {k}" for k in ("removed", "added", "modified", "rewired") if c[k]]
    inits = c["initializers_added"] + c["initializers_removed"] + c["initializers_changed"]
    if inits:
        parts.append(f"{inits} initializers changed")
    return ", ".join(parts)


def sqnr_section(rows: list[dict[str, Any]]) -> str:
    """Per-layer SQNR of a lossy pass, worst first: a bar plot of the worst layers and the full table."""
    scored = sorted((r for r in rows if isinstance(r.get("sqnr_db"), (int, float))), key=lambda r: r["sqnr_db"])
    if not scored:
        return ""
    worst = scored[:SQNR_PLOT]
    top = max(max(r["sqnr_db"] for r in worst), 1e-9)
    left, bw, h = 260, 300, 15
    bars = []
    for k, r in enumerate(worst):
        y = 22 + k * (h + 3)
        v = r["sqnr_db"]
        w = max(1.0, bw * max(v, 0) / top)
        color = "#c33" if v < 20 else "#d90" if v < 30 else "#4a7fb5"
        name = _layer_name(r)
        label = name if len(name) <= 38 else "\u2026" + name[-37:]
        bars.append(f'<g data-name="{html.escape(name)}"><text x="{left - 4}" y="{y + 11}" font-size="11" '
                    f'text-anchor="end">{html.escape(label)}</text><rect x="{left}" y="{y}" width="{w:.1f}" '
                    f'height="{h}" fill="{color}"/><text x="{left + w + 4:.1f}" y="{y + 11}" font-size="11">'
                    f'{v:.1f} dB</text></g>')
    height = 30 + len(worst) * (h + 3)
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + bw + 70}" height="{height}">'
           f'<text x="4" y="14" font-size="13" font-weight="bold">per-layer SQNR, worst {len(worst)} of '
           f'{len(scored)} (dB)</text>{"".join(bars)}</svg>')
    cols = [c for c in ("tensor", "node", "op", "kind", "decision", "rank", "sqnr_db", "cosine", "expected_sqnr_db",
                        "scale", "method") if any(c in r for r in scored)]
    rows_named = [{**r, "_name": _layer_name(r)} for r in scored]
    return (f"<h4>per-layer SQNR (worst first)</h4>{svg}<details><summary>all {len(scored)} layers</summary>"
            f"{table(rows_named, cols, key='_name')}</details>")


def _layer_name(r: dict[str, Any]) -> str:
    # quantize's rows name the tensor, depthwise's the node
    return str(r.get("tensor") or r.get("node") or r.get("name") or "")


def pass_section(name: str, head: str, drift: str, ops: str, d: dict[str, Any] | None,
                 details: dict[str, Any], is_open: bool) -> str:
    body = [f"<p>{drift}</p>" if drift else "", f"<p>op changes: {html.escape(ops)}</p>" if ops else ""]
    if d and any(d["counts"].values()):
        body.append(diff_body(d, f"before {name}", f"after {name}"))
    layers = details.get("layers")
    if isinstance(layers, list):
        body.append(sqnr_section(layers))
    rest = {k: v for k, v in details.items() if k != "layers"}
    if rest:
        text = json.dumps(rest, indent=1, default=str)
        text = text if len(text) <= 20000 else text[:20000] + "\n... (cut; report.json has all)"
        body.append(f"<details><summary>pass details</summary><pre>{html.escape(text)}</pre></details>")
    return (f'<details class=pass{" open" if is_open else ""}><summary>{head}</summary>'
            f'{"".join(body)}</details>')


# -- backend ------------------------------------------------------------------------------------------
def backend_tables(a: dict[str, Any]) -> str:
    """The backend's files, figures and notes as tables: scalars in one, each nested group in its own."""
    out = [f"<h2>backend: {html.escape(str(a.get('backend')))}</h2>"]
    files = a.get("files") or {}
    if files:
        out.append(table([{"role": k, "path": v} for k, v in files.items()], ["role", "path"], key="role"))
    figures = a.get("figures") or {}
    scalars = [{"figure": k, "value": v} for k, v in figures.items() if not isinstance(v, (dict, list))]
    if scalars:
        out.append("<h3>figures</h3>" + table(scalars, ["figure", "value"], key="figure"))
    for k, v in figures.items():
        if isinstance(v, dict):
            flat = _flatten(v)
            out.append(f"<h3>{html.escape(k)}</h3>" + table([{"key": x, "value": y} for x, y in flat.items()],
                                                            ["key", "value"], key="key"))
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            cols = list(dict.fromkeys(c for x in v for c in x))
            out.append(f"<h3>{html.escape(k)}</h3>" + table(v, cols, key=cols[0]))
        elif isinstance(v, list):
            out.append(f"<h3>{html.escape(k)}</h3><p>{html.escape(_cell(v))}</p>")
    notes = a.get("notes") or []
    if notes:
        out.append("<ul>" + "".join(f"<li>{html.escape(str(n))}</li>" for n in notes) + "</ul>")
    return "".join(out)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


# -- the page for two arbitrary models (edgec diff --html) ---------------------------------------------
def diff_page(d: dict[str, Any], a: str, b: str, extra: str = "") -> str:
    from edgec.graphdiff import format_text

    head = html.escape(format_text(d, limit=0)[0])
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>edgec diff</title><style>'
            f'body{{font-family:system-ui,sans-serif;margin:2em;color:#222}}table{{border-collapse:collapse}}'
            f'td,th{{border:1px solid #ccc;padding:2px 6px;text-align:left}}{CSS}</style>{SCRIPT}</head><body>'
            f'<h1>edgec diff</h1><p><b>{html.escape(a)}</b> \u2192 <b>{html.escape(b)}</b></p>{search_bar()}'
            f'<p>{head}</p>{extra}{diff_body(d, a, b)}</body></html>')
