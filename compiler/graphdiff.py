"""Node-level graph diffs: what a pass removed, added, modified and rewired, for a person to read.

The manager takes a cheap snapshot of the graph before and after every pass (``DiffInstrument``, shaped
like TVM's PassInstrument: ``run_before_pass`` / ``run_after_pass``) and stores the difference in the
pass's record; passes never describe their own changes. A snapshot holds each node's op, name, input and
output names and a printable form of its attributes, and each initializer's shape, dtype, size and a CRC
of its bytes (so a weight rewritten under the same name is seen as changed). Nodes are matched by name
where the name is unique on both sides, else by structure (same op and outputs, then same op and inputs).

The diff also keeps the *region* around the change (changed nodes plus one hop of neighbours on each
side) so the report can draw before/after pictures without the models.
"""

from __future__ import annotations

import dataclasses
import time
import weakref
import zlib
from collections import Counter, defaultdict
from typing import Any

import numpy as np
import onnx_ir as ir

# Lists longer than this are cut in the record (the counts stay exact); a region is drawn from at most
# REGION_CAP changed nodes per side (the first ones in graph order) plus their neighbours.
LIST_CAP = 1000
REGION_CAP = 60


@dataclasses.dataclass(frozen=True)
class NodeSnap:
    name: str
    op: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: tuple[tuple[str, str], ...]

    def label(self) -> str:
        return self.name or f"<{self.op} -> {','.join(self.outputs)}>"


@dataclasses.dataclass(frozen=True)
class InitSnap:
    shape: tuple[int, ...]
    dtype: str
    nbytes: int
    crc: int


@dataclasses.dataclass
class Snapshot:
    nodes: list[NodeSnap]
    inits: dict[str, InitSnap]
    outputs: tuple[str, ...]


def snapshot(model: ir.Model, cache: dict[int, tuple[Any, InitSnap]] | None = None) -> Snapshot:
    """The structure of ``model``'s main graph, cheap enough to take around every pass.

    ``cache`` maps id(tensor) -> (weak reference, its InitSnap) from the previous snapshot: a weight kept as the
    same tensor object is not read again. Passes compute new arrays and never write into a tensor they
    keep (STYLE.md); a pass that did would be seen only through the tensor's name or shape.
    """
    g = model.graph
    nodes = [NodeSnap(n.name or "", f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type,
                      tuple(v.name or "" if v is not None else "" for v in n.inputs),
                      tuple(v.name or "" for v in n.outputs),
                      tuple(sorted((k, _attr_text(a)) for k, a in n.attributes.items())))
             for n in g]
    inits = {}
    seen: dict[int, tuple[Any, InitSnap]] = {}
    for name, v in g.initializers.items():
        t = v.const_value
        if t is None:
            continue
        hit = cache.get(id(t)) if cache is not None else None
        snap = hit[1] if hit is not None and hit[0]() is t else InitSnap(
            tuple(int(d) for d in t.shape.numpy()) if t.shape is not None else (),
            str(t.dtype).split(".")[-1], int(t.nbytes), _crc(t))
        try:
            # A weak reference: the cache must not keep a weight the pass replaced alive (a > 2 GiB model
            # would carry the old copy through the drift check).
            seen[id(t)] = (weakref.ref(t), snap)
        except TypeError:
            pass
        inits[name] = snap
    if cache is not None:
        cache.clear()
        cache.update(seen)
    return Snapshot(nodes, inits, tuple(v.name or "" for v in g.outputs))


def _crc(t: Any) -> int:
    # CRC32 of the raw bytes: ~1 GB/s, so PP-OCRv4 det's 4.6 MB of weights cost a few ms per snapshot.
    if isinstance(t, ir.ExternalTensor):
        # Immutable and on disk: its file region identifies it. Reading it would map the whole weight file
        # into memory (and keep it mapped), which a > 2 GiB model cannot afford.
        return zlib.crc32(f"{t.path}:{t.offset}:{t.length}".encode())
    try:
        arr = t.numpy()
        return zlib.crc32(np.ascontiguousarray(arr).view(np.uint8).reshape(-1).data)
    except Exception:  # noqa: BLE001 - string tensors and exotic dtypes: their serialized bytes
        return zlib.crc32(t.tobytes())


def _attr_text(a: Any) -> str:
    # Dispatch on the attribute's declared type: isinstance against ir.TensorProtocol (a runtime Protocol)
    # costs ~2 ms a call, which made snapshots 25x slower.
    v, kind = a.value, a.type
    if kind == ir.AttributeType.TENSOR:
        return f"tensor{list(v.shape.numpy())} {str(v.dtype).split('.')[-1]} crc={_crc(v):08x}"
    if kind == ir.AttributeType.GRAPH:
        return f"graph '{v.name}' ({len(v)} nodes)"
    if kind in (ir.AttributeType.GRAPHS, ir.AttributeType.TENSORS):
        return f"{len(v)} {'graphs' if kind == ir.AttributeType.GRAPHS else 'tensors'}"
    text = repr(list(v) if isinstance(v, tuple) else v)
    return text if len(text) <= 200 else text[:197] + "..."


# -- matching and diffing ---------------------------------------------------------------------------
def match(before: list[NodeSnap], after: list[NodeSnap]) -> tuple[list[tuple[int, int]], list[int], list[int]]:
    """Pairs (i, j) of the same node in ``before``/``after``, then the unmatched indices on each side.

    By name where a name is unique on both sides; else by structure: the same op writing the same
    outputs, then the same op reading the same inputs (each key used only where it is unique).
    """
    pairs: list[tuple[int, int]] = []
    left, right = set(range(len(before))), set(range(len(after)))
    keys = (lambda n: n.name or None, lambda n: (n.op, n.outputs), lambda n: (n.op, n.inputs))
    for key in keys:
        kb = _unique({i: key(before[i]) for i in left})
        ka = _unique({j: key(after[j]) for j in right})
        for k, i in kb.items():
            j = ka.get(k)
            if j is not None:
                pairs.append((i, j))
                left.discard(i)
                right.discard(j)
    return sorted(pairs), sorted(left), sorted(right)


def _unique(keyed: dict[int, Any]) -> dict[Any, int]:
    count = Counter(k for k in keyed.values() if k is not None)
    return {k: i for i, k in keyed.items() if k is not None and count[k] == 1}


def diff(a: Snapshot, b: Snapshot) -> dict[str, Any]:
    """The node-level difference from ``a`` to ``b`` as plain JSON-ready data."""
    if a is b:  # the manager's "unchanged": the same snapshot on both sides
        keys = ("removed", "added", "modified", "rewired", "initializers_added", "initializers_removed",
                "initializers_changed")
        empty = {"nodes": [], "changed": 0, "cut": 0}
        return {"nodes_before": len(a.nodes), "nodes_after": len(a.nodes), "counts": dict.fromkeys(keys, 0),
                **{k: [] for k in keys}, "region": {"before": empty, "after": empty}}
    pairs, removed, added = match(a.nodes, b.nodes)
    modified, rewired = [], []
    rewired_only: set[tuple[int, int]] = set()
    changed_a, changed_b = set(removed), set(added)
    for i, j in pairs:
        na, nb = a.nodes[i], b.nodes[j]
        entry: dict[str, Any] = {"name": nb.label(), "op": nb.op}
        if na.name != nb.name:
            entry["renamed_from"] = na.label()
        if na.op != nb.op:
            entry["op_before"] = na.op
        if na.inputs != nb.inputs:
            entry["inputs"] = [list(na.inputs), list(nb.inputs)]
        if na.outputs != nb.outputs:
            entry["outputs"] = [list(na.outputs), list(nb.outputs)]
        attrs_a, attrs_b = dict(na.attrs), dict(nb.attrs)
        changed_attrs = {k: [attrs_a.get(k), attrs_b.get(k)] for k in sorted(set(attrs_a) | set(attrs_b))
                         if attrs_a.get(k) != attrs_b.get(k)}
        if changed_attrs:
            entry["attrs"] = changed_attrs
        weights = []
        for slot in range(max(len(na.inputs), len(nb.inputs))):
            xa = na.inputs[slot] if slot < len(na.inputs) else ""
            xb = nb.inputs[slot] if slot < len(nb.inputs) else ""
            if xa != xb:
                rewired.append({"node": nb.label(), "slot": slot, "before": xa, "after": xb})
            ia, ib = a.inits.get(xa), b.inits.get(xb)
            if (ia or ib) and (xa != xb or ia != ib):
                weights.append({"slot": slot, "before": xa if ia else None, "after": xb if ib else None})
        if weights:
            entry["weights"] = weights
        if set(entry) - {"name", "op", "inputs"}:
            modified.append(entry)
        elif "inputs" in entry:
            rewired_only.update({(0, i), (1, j)})  # only its data inputs moved: drawn as rewired
        else:
            continue
        changed_a.add(i)
        changed_b.add(j)
    init_added = [_init_row(k, b.inits[k]) for k in b.inits if k not in a.inits]
    init_removed = [_init_row(k, a.inits[k]) for k in a.inits if k not in b.inits]
    init_changed = [{"name": k, "shape": [list(a.inits[k].shape), list(b.inits[k].shape)],
                     "dtype": [a.inits[k].dtype, b.inits[k].dtype], "bytes": [a.inits[k].nbytes, b.inits[k].nbytes]}
                    for k in a.inits if k in b.inits and a.inits[k] != b.inits[k]]
    if a.outputs != b.outputs:
        rewired += [{"node": "<graph output>", "slot": s, "before": x, "after": y}
                    for s, (x, y) in enumerate(zip(a.outputs, b.outputs)) if x != y]
    lists = {"removed": [_node_row(a.nodes[i]) for i in removed], "added": [_node_row(b.nodes[j]) for j in added],
             "modified": modified, "rewired": rewired, "initializers_added": init_added,
             "initializers_removed": init_removed, "initializers_changed": init_changed}
    out: dict[str, Any] = {"nodes_before": len(a.nodes), "nodes_after": len(b.nodes),
                           "counts": {k: len(v) for k, v in lists.items()}}
    out.update({k: v[:LIST_CAP] for k, v in lists.items()})
    cut = {k: len(v) - LIST_CAP for k, v in lists.items() if len(v) > LIST_CAP}
    if cut:
        out["cut"] = cut
    marks_a = {i: "removed" for i in removed} | {
        i: "rewired" if (0, i) in rewired_only else "modified" for i in changed_a - set(removed)}
    marks_b = {j: "added" for j in added} | {
        j: "rewired" if (1, j) in rewired_only else "modified" for j in changed_b - set(added)}
    out["region"] = {"before": _region(a.nodes, marks_a), "after": _region(b.nodes, marks_b)}
    return out


def is_empty(d: dict[str, Any]) -> bool:
    return not any(d.get("counts", {}).values())


def _node_row(n: NodeSnap) -> dict[str, Any]:
    return {"name": n.label(), "op": n.op, "inputs": list(n.inputs), "outputs": list(n.outputs)}


def _init_row(name: str, s: InitSnap) -> dict[str, Any]:
    return {"name": name, "shape": list(s.shape), "dtype": s.dtype, "bytes": s.nbytes}


def _region(nodes: list[NodeSnap], marks: dict[int, str]) -> dict[str, Any]:
    """Changed nodes (at most REGION_CAP, in graph order) plus one hop of context, for drawing."""
    changed = sorted(marks)
    kept = changed[:REGION_CAP]
    producer = {o: i for i, n in enumerate(nodes) for o in n.outputs if o}
    consumers: dict[str, list[int]] = defaultdict(list)
    for i, n in enumerate(nodes):
        for x in n.inputs:
            if x:
                consumers[x].append(i)
    region = set(kept)
    for i in kept:
        region.update(producer[x] for x in nodes[i].inputs if x in producer)
        for o in nodes[i].outputs:
            region.update(consumers.get(o, ()))
    rows = [{"name": nodes[i].label(), "op": nodes[i].op, "inputs": [x for x in nodes[i].inputs if x],
             "outputs": list(nodes[i].outputs), "mark": marks.get(i, "context")} for i in sorted(region)]
    return {"nodes": rows, "changed": len(changed), "cut": len(changed) - len(kept)}


# -- the manager's instrument -----------------------------------------------------------------------
class DiffInstrument:
    """Snapshots the model around each pass; ``run_after_pass`` returns the record's ``diff``.

    The snapshot after one pass is reused as the one before the next when the model object is the same
    (nothing but a pass changes the model between the two calls), halving the cost.
    """

    def __init__(self) -> None:
        self._before: Snapshot | None = None
        self._after: tuple[int, Snapshot] | None = None
        self._t_first: float | None = None
        self._tensors: dict[int, tuple[Any, InitSnap]] = {}

    def run_before_pass(self, model: ir.Model) -> None:
        t0 = time.perf_counter()
        if self._t_first is None:
            self._t_first = t0
        cached = self._after
        self._before = cached[1] if cached is not None and cached[0] == id(model) else snapshot(model, self._tensors)
        self._cost = time.perf_counter() - t0

    def run_after_pass(self, model: ir.Model, changed: bool = True) -> dict[str, Any] | None:
        """The diff of the pass; ``changed=False`` (the manager's judgement that the model is untouched,
        which also skips its validation and drift) reuses the snapshot from before."""
        if self._before is None:
            return None
        t0 = time.perf_counter()
        snap = snapshot(model, self._tensors) if changed else self._before
        out = diff(self._before, snap)
        self._after, self._before = (id(model), snap), None
        t1 = time.perf_counter()
        # ``seconds``: what diffing this pass cost; ``pipeline_seconds``: wall time since the first pass
        # began, so the last record gives the cost as a fraction of the whole pipeline.
        out["seconds"] = round(self._cost + t1 - t0, 6)
        out["pipeline_seconds"] = round(t1 - (self._t_first or t0), 6)
        return out

    def forget(self) -> None:
        """The model was replaced behind our back (a roll-back): take a fresh snapshot next time."""
        self._before, self._after = None, None
        self._tensors.clear()


def diff_models(a: ir.Model, b: ir.Model) -> dict[str, Any]:
    return diff(snapshot(a), snapshot(b))


def cost(records: list[Any]) -> dict[str, float] | None:
    """The diffs' total cost and the pipeline's wall time, from the records (for report.json)."""
    diffs = [r.diff for r in records if getattr(r, "diff", None)]
    if not diffs:
        return None
    spent = sum(d.get("seconds", 0.0) for d in diffs)
    wall = max(d.get("pipeline_seconds", 0.0) for d in diffs)
    return {"seconds": round(spent, 4), "pipeline_seconds": round(wall, 3),
            "fraction": round(spent / wall, 5) if wall > 0 else 0.0}


# -- text for the terminal --------------------------------------------------------------------------
def format_text(d: dict[str, Any], limit: int = 40) -> list[str]:
    """Lines a person reads in a terminal: removed/added/modified nodes, weights, initializers."""
    c = d["counts"]
    lines = [(f"nodes {d['nodes_before']} -> {d['nodes_after']}: {c['removed']} removed, {c['added']} added, "
             f"{c['modified']} modified, {c['rewired']} inputs rewired; initializers +{c['initializers_added']} "
             f"-{c['initializers_removed']} ~{c['initializers_changed']}")]

    def block(title: str, rows: list[Any], fmt: Any, total: int) -> None:
        if not rows:
            return
        lines.append(f"{title} ({total}):")
        lines.extend("  " + fmt(r) for r in rows[:limit])
        if total > min(limit, len(rows)):
            lines.append(f"  ... {total - min(limit, len(rows))} more (--json for all)")

    block("removed", d["removed"], lambda r: f"{r['op']:<22} {r['name']}", c["removed"])
    block("added", d["added"], lambda r: f"{r['op']:<22} {r['name']}", c["added"])
    block("modified", d["modified"], _modified_text, c["modified"])
    weights = [m for m in d["modified"] if m.get("weights")]
    if weights:
        lines.append("weights changed: " + ", ".join(f"{m['name']} ({m['op']})" for m in weights[:limit])
                     + (f" ... {len(weights) - limit} more" if len(weights) > limit else ""))
    block("initializers removed", d["initializers_removed"], _init_text, c["initializers_removed"])
    block("initializers added", d["initializers_added"], _init_text, c["initializers_added"])
    block("initializers changed", d["initializers_changed"],
          lambda r: f"{r['name']} {r['shape'][0]}->{r['shape'][1]} {r['dtype'][0]}->{r['dtype'][1]} "
                    f"{r['bytes'][0]:,}->{r['bytes'][1]:,} B", c["initializers_changed"])
    return lines


def _modified_text(m: dict[str, Any]) -> str:
    parts = [f"{m['op']:<22} {m['name']}"]
    if "renamed_from" in m:
        parts.append(f"(was {m['renamed_from']})")
    if "op_before" in m:
        parts.append(f"op {m['op_before']} -> {m['op']}")
    if "inputs" in m:
        parts.append(f"inputs {m['inputs'][0]} -> {m['inputs'][1]}")
    if "outputs" in m:
        parts.append(f"outputs {m['outputs'][0]} -> {m['outputs'][1]}")
    for k, (x, y) in m.get("attrs", {}).items():
        parts.append(f"{k}: {x} -> {y}")
    if m.get("weights"):
        parts.append("weights " + ", ".join(f"[{w['slot']}] {w['before']} -> {w['after']}" for w in m["weights"]))
    return "  ".join(parts)


def _init_text(r: dict[str, Any]) -> str:
    return f"{r['name']} {r['shape']} {r['dtype']} {r['bytes']:,} B"


# -- reading diffs back (edgec diff) ------------------------------------------------------------------
def diff_files(a: str, b: str, shapes: dict[str, tuple[int, ...]] | None = None) -> dict[str, Any]:
    """The node-level diff between two ONNX files (matched by name, else by structure)."""
    from edgec.api import load_model

    return diff_models(load_model(a, shapes, allow_custom_ops=True), load_model(b, shapes, allow_custom_ops=True))


def report_diffs(path: str, pass_name: str | None) -> list[tuple[str, dict[str, Any]]]:
    """(label, diff) of the passes in a compile's report.json; one pass's (each run of it) with ``pass_name``."""
    import json
    from pathlib import Path

    from edgec.errors import EdgecError

    try:
        passes = json.loads(Path(path).read_text())["passes"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EdgecError(f"{path}: not an edgec report.json ({type(exc).__name__}: {exc})") from None
    found = [(f"{i:02d} {p['name']}", p.get("diff")) for i, p in enumerate(passes)
             if i > 0 and (pass_name is None or p["name"] == pass_name)]
    if pass_name is not None and not found:
        raise EdgecError(f"{path}: no pass '{pass_name}'",
                         hint="passes in this report: " + ", ".join(dict.fromkeys(p["name"] for p in passes[1:])))
    missing = [label for label, d in found if d is None]
    if missing and len(missing) == len(found):
        raise EdgecError(f"{path}: no node-level diff recorded for {', '.join(missing)}",
                         hint="the report predates node-level diffs or the pass was rolled back; compile again")
    return [(label, d) for label, d in found if d is not None]


def show_report(path: str, other: str | None, pass_name: str | None, html_path: str | None, as_json: bool,
                quiet: bool) -> int:
    """`edgec diff out/report.json --pass fuse-bn`: the node-level diff the compile recorded for a pass."""
    import json

    from edgec import report_html
    from edgec.errors import EdgecError

    if other:
        raise EdgecError(f"edgec diff {path}: a report.json takes --pass NAME, not a second model ({other})")
    found = report_diffs(path, pass_name)
    if html_path:
        label, d = found[0]
        write_page(html_path, report_html.diff_page(d, f"before {label}", f"after {label}"))
    if as_json:
        print(json.dumps(dict(found), indent=2, default=str))
    elif not quiet:
        for label, d in found:
            lines = format_text(d) if pass_name else [report_html.diff_summary(d)]
            print(f"{label}: " + "\n".join(lines))
    return 0


def write_page(path: str, page: str) -> None:
    from pathlib import Path

    from edgec.model_io import atomic_path

    with atomic_path(Path(path)) as tmp:
        tmp.write_text(page)
