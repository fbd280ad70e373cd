"""`edgec explore out/`: open a compiled artifact in Google's Model Explorer with edgec's figures on it.

Three node-data overlays are written next to the report (out/explore/*.json), in Model Explorer's
node-data format (model_explorer/node_data_builder.py: ``{graph_id: {"name", "results": {node_id:
{"value": number}}, "gradient": [{"stop", "bgColor"}]}}``; the ONNX adapter, model-explorer-onnx, uses
the graph's name, or "<main>", as graph id and each node's name as node id):

- ``sqnr.json``: per-layer SQNR (dB) the quantize pass measured, on the node that produces the tensor;
- ``last_pass.json``: the index of the last pass whose node-level diff added, modified or rewired the node
  (the legend, index -> pass, is in the overlay's name);
- ``macs.json``: multiply-accumulates per node.

The viewer itself (``pip install 'edgec[explore]'``: ai-edge-model-explorer, model-explorer-onnx) is a
local web server that opens a browser; ``--no-open`` only writes and checks the overlays.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgec.errors import EdgecError

if TYPE_CHECKING:
    import onnx

RED_TO_GREEN = [{"stop": 0, "bgColor": "#d7301f"}, {"stop": 0.5, "bgColor": "#fdd49e"}, {"stop": 1, "bgColor": "#a1d99b"}]
LIGHT_TO_DARK = [{"stop": 0, "bgColor": "#f7fbff"}, {"stop": 1, "bgColor": "#2171b5"}]


def write_overlays(out: str | Path) -> tuple[Path, dict[str, Path], dict[str, int]]:
    """Write the overlays for the compile in ``out``; returns (model path, overlay files, nodes covered)."""
    import onnx

    out = Path(out)
    try:
        report = json.loads((out / "report.json").read_text())
    except (OSError, ValueError) as exc:
        raise EdgecError(f"{out}: no readable report.json ({exc})", hint="give the -o folder of `edgec compile`") from None
    model_path = _model_path(out, report)
    proto = onnx.load(str(model_path), load_external_data=False)
    graph_id = proto.graph.name or "<main>"
    names = {n.name for n in proto.graph.node if n.name}
    producer = {o: n.name for n in proto.graph.node for o in n.output if n.name}
    overlays: dict[str, tuple[str, dict[str, Any], list[dict[str, Any]]]] = {
        "sqnr": ("per-layer SQNR (dB) measured by quantize", _sqnr(report, producer), RED_TO_GREEN),
        "last_pass": _last_pass(report, names),
        "macs": ("MACs per node", _macs(proto), LIGHT_TO_DARK),
    }
    folder = out / "explore"
    folder.mkdir(exist_ok=True)
    files, covered = {}, {}
    for key, (title, results, gradient) in overlays.items():
        data = {graph_id: {"name": title, "results": {k: {"value": v} for k, v in sorted(results.items())},
                           "gradient": gradient}}
        check_node_data(data)
        files[key] = folder / f"{key}.json"
        files[key].write_text(json.dumps(data, indent=1))
        covered[key] = len(results)
    return model_path, files, covered


def _model_path(out: Path, report: dict[str, Any]) -> Path:
    files = (report.get("backend") or {}).get("files") or {}
    recorded = files.get("model")
    if not recorded:
        raise EdgecError(f"{out}/report.json names no model artifact", hint="compile with -o to write one")
    path = Path(recorded)
    if not path.exists():
        path = out / path.name  # the folder was moved after compiling
    if path.suffix != ".onnx":
        raise EdgecError(f"{path}: Model Explorer overlays are written for ONNX artifacts only",
                         hint="the TFLite/TensorRT artifacts' node ids are not the ONNX node names")
    if not path.exists():
        raise EdgecError(f"{out}: the model artifact {path.name} is missing")
    return path


def _sqnr(report: dict[str, Any], producer: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in report.get("passes", []):
        for row in (p.get("details") or {}).get("layers") or []:
            v, node = row.get("sqnr_db"), producer.get(str(row.get("tensor")))
            if node and isinstance(v, (int, float)) and math.isfinite(v):
                out[node] = round(float(v), 3)
    return out


def _last_pass(report: dict[str, Any], names: set[str]) -> tuple[str, dict[str, Any], list[dict[str, Any]]]:
    last: dict[str, Any] = {}
    legend = []
    for i, p in enumerate(report.get("passes", [])):
        d = p.get("diff")
        if not d:
            continue
        touched = [r["name"] for r in d.get("added", []) + d.get("modified", [])] + [r["node"] for r in d.get("rewired", [])]
        hits = {n for n in touched if n in names}
        for n in hits:
            last[n] = i
        if hits:
            legend.append(f"{i} {p['name']}")
    title = "last pass that touched the node: " + ", ".join(legend) if legend else "no pass touched a node"
    return title, last, LIGHT_TO_DARK


def _macs(proto: onnx.ModelProto) -> dict[str, Any]:
    import onnx

    from edgec import metrics

    shapes = metrics._proto_shapes(proto)  # the shapes the report's MAC count uses
    out = {}
    for n in proto.graph.node:
        attrs = {a.name: a.i for a in n.attribute if a.type == onnx.AttributeProto.INT}
        macs = metrics.node_macs(n.op_type, attrs, [shapes.get(i) for i in n.input], [shapes.get(o) for o in n.output])
        if macs and n.name:
            out[n.name] = int(macs)
    return out


def check_node_data(data: Any) -> None:
    """Raise ValueError unless ``data`` is Model Explorer model node data (node_data_builder.ModelNodeData)."""
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise ValueError(f"not Model Explorer node data: {what}")

    need(isinstance(data, dict) and bool(data), "top level must map graph ids to graph node data")
    for gid, g in data.items():
        need(isinstance(gid, str) and isinstance(g, dict), f"graph {gid!r}")
        need(set(g) <= {"name", "results", "thresholds", "gradient", "hideInAggregatedStatsTable",
                        "hideInChildrenStatsTable", "hideAggregatedStats", "showExpandedSummaryOnGroupNode",
                        "showLabelCountColumnsInChildrenStatsTable"}, f"unknown keys {sorted(g)}")
        need(isinstance(g.get("results"), dict), "results must be a dict")
        for key, r in g["results"].items():
            need(isinstance(key, str) and isinstance(r, dict) and set(r) <= {"value", "bgColor", "textColor"},
                 f"result {key!r}")
            v = r.get("value")
            need(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v), f"value of {key!r}")
        stops = [s.get("stop") for s in g.get("gradient", [])]
        need(all(isinstance(s, (int, float)) and 0 <= s <= 1 for s in stops), "gradient stops lie in [0, 1]")
        need(not stops or (0 in stops and 1 in stops), "a gradient has stops 0 and 1")


def command(out: str, no_open: bool, port: int) -> int:
    """The CLI: write (and check) the overlays, then start Model Explorer on the artifact with them."""
    if not no_open:
        try:
            import model_explorer
        except ImportError:
            raise EdgecError("edgec explore needs Model Explorer",
                             hint="pip install 'edgec[explore]', or --no-open to only write the overlays") from None
    model_path, files, covered = write_overlays(out)
    for key, path in files.items():
        print(f"wrote {path} ({covered[key]} nodes)")
    if no_open:
        return 0
    model_explorer.visualize(model_paths=[str(model_path)], port=port, extensions=["model_explorer_onnx"],
                             node_data=[{"name": k, "node_data_path": str(p)} for k, p in files.items()])
    return 0


def add_parser(sub: Any) -> None:
    x = sub.add_parser("explore", help="open a compile's artifact in Model Explorer with SQNR/last-pass/MACs overlays")
    x.add_argument("out", help="the -o folder of `edgec compile`")
    x.add_argument("--no-open", action="store_true", help="only write the overlays (out/explore/*.json)")
    x.add_argument("--port", type=int, default=8080)


def run(args: argparse.Namespace) -> int:
    return command(args.out, args.no_open, args.port)
