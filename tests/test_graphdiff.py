"""Node-level graph diffs: the algorithm on hand-built graphs, the manager's records, `edgec diff`, and the
Model Explorer overlays (written and schema-checked without starting the viewer)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgec import explore, graphdiff, model_io
from edgec.cli import main


def _model(nodes, inits, out="y", shape=(1, 4, 8, 8)):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info(out, TensorProto.FLOAT, list(shape))], inits)
    return model_io.from_proto(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))


def _w(name, shape, seed=0):
    return numpy_helper.from_array(np.random.default_rng(seed).standard_normal(shape).astype(np.float32), name)


def _before():
    return _model([helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
                   helper.make_node("Relu", ["c"], ["r"], name="relu"),
                   helper.make_node("Sigmoid", ["r"], ["y"], name="sig")], [_w("w", (4, 3, 3, 3))])


def test_diff_names_removed_added_modified_rewired_and_weights() -> None:
    after = _model([helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[0, 0, 0, 0]),
                    helper.make_node("Tanh", ["c"], ["t"], name="tanh"),
                    helper.make_node("Sigmoid", ["t"], ["y"], name="sig")],
                   [_w("w", (4, 3, 3, 3), seed=1), _w("b", (4,))])
    d = graphdiff.diff_models(_before(), after)
    assert d["counts"] == {"removed": 1, "added": 1, "modified": 1, "rewired": 2, "initializers_added": 1,
                           "initializers_removed": 0, "initializers_changed": 1}
    assert d["removed"][0]["name"] == "relu" and d["removed"][0]["op"] == "Relu"
    assert d["added"][0] == {"name": "tanh", "op": "Tanh", "inputs": ["c"], "outputs": ["t"]}
    conv = d["modified"][0]
    assert conv["name"] == "conv" and conv["attrs"] == {"pads": ["[1, 1, 1, 1]", "[0, 0, 0, 0]"]}
    # same name "w", new values (CRC), and a new bias input: both are weight changes of the Conv
    assert conv["weights"] == [{"slot": 1, "before": "w", "after": "w"}, {"slot": 2, "before": None, "after": "b"}]
    assert d["initializers_changed"] == [{"name": "w", "shape": [[4, 3, 3, 3], [4, 3, 3, 3]],
                                          "dtype": ["FLOAT", "FLOAT"], "bytes": [432, 432]}]
    assert {"node": "sig", "slot": 0, "before": "r", "after": "t"} in d["rewired"]
    marks = {n["name"]: n["mark"] for n in d["region"]["after"]["nodes"]}
    assert marks == {"conv": "modified", "tanh": "added", "sig": "rewired"}


def test_unnamed_nodes_are_matched_by_structure() -> None:
    def unnamed(op_mid):
        return _model([helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
                       helper.make_node(op_mid, ["c"], ["r"]), helper.make_node("Sigmoid", ["r"], ["y"])],
                      [_w("w", (4, 3, 3, 3))])
    same = graphdiff.diff_models(unnamed("Relu"), unnamed("Relu"))
    assert graphdiff.is_empty(same)
    d = graphdiff.diff_models(unnamed("Relu"), unnamed("Tanh"))
    # Conv (same outputs) and Sigmoid (same outputs) pair up; Relu -> Tanh is one removed, one added
    assert [r["op"] for r in d["removed"]] == ["Relu"] and [r["op"] for r in d["added"]] == ["Tanh"]
    assert d["counts"]["modified"] == 0


def test_snapshot_is_cheap_on_a_real_model(zoo_path) -> None:
    model = model_io.load(str(zoo_path("ppocr-det")))
    t0 = time.perf_counter()
    a = graphdiff.snapshot(model)
    d = graphdiff.diff(a, graphdiff.snapshot(model))
    seconds = time.perf_counter() - t0
    assert graphdiff.is_empty(d) and len(a.nodes) > 600
    assert seconds < 2.0, seconds  # ~0.1 s on an idle core for 672 nodes and 4.6 MB of weights


@pytest.fixture(scope="module")
def example_out(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("example") / "out"
    t0 = time.perf_counter()
    assert main(["compile", "--example", "-o", str(out), "-q"]) == 0
    (out / "wall.txt").write_text(str(time.perf_counter() - t0))
    return out


def test_every_record_has_a_diff_and_the_cost_is_small(example_out: Path) -> None:
    report = json.loads((example_out / "report.json").read_text())
    passes = report["passes"]
    assert passes[0]["diff"] is None and all(p["diff"] is not None for p in passes[1:])
    fuse_bn = next(p for p in passes if p["name"] == "fuse-bn")
    assert fuse_bn["diff"]["counts"]["removed"] == 4
    # a pass that reports no change has an empty diff, and every changed pass a non-empty one
    for p in passes[1:]:
        assert graphdiff.is_empty(p["diff"]) == (not p["changed"]), p["name"]
    cost = report["graph_diff_cost"]
    wall = float((example_out / "wall.txt").read_text())
    assert 0 < cost["seconds"] < 0.10 * wall, (cost, wall)


def test_cli_diff_report_pass_names_the_bn_nodes_and_conv_weights(example_out: Path, capsys) -> None:
    """Acceptance: `edgec diff out/report.json --pass fuse-bn` names the four BatchNormalization nodes
    removed and the Conv nodes whose weights changed."""
    assert main(["diff", str(example_out / "report.json"), "--pass", "fuse-bn"]) == 0
    text = capsys.readouterr().out
    removed = [ln.split()[1] for ln in text.split("removed (4):")[1].splitlines()[1:5]]
    assert removed == ["/stem/stem.1/BatchNormalization", "/branch/branch.1/BatchNormalization",
                       "/branch/branch.4/BatchNormalization", "/down/down.1/BatchNormalization"]
    weights_line = next(ln for ln in text.splitlines() if ln.startswith("weights changed:"))
    convs = [c.split(" (")[0] for c in weights_line.removeprefix("weights changed: ").split(", ")]
    assert convs == ["/stem/stem.0/Conv", "/branch/branch.0/Conv", "/branch/branch.3/Conv", "/down/down.0/Conv"]
    assert main(["diff", str(example_out / "report.json"), "--pass", "fuse-bn", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    (only,) = d.values()
    assert sorted(r["op"] for r in only["removed"]) == ["BatchNormalization"] * 4


def test_cli_diff_report_errors_exit_2(example_out: Path, capsys) -> None:
    assert main(["diff", str(example_out / "report.json"), "--pass", "no-such-pass"]) == 2
    err = capsys.readouterr().err
    assert "no pass 'no-such-pass'" in err and "fuse-bn" in err and len(err.strip().splitlines()) == 1


def test_cli_diff_two_models_names_nodes_and_writes_html(example_out: Path, digits_model: Path, tmp_path: Path,
                                                          capsys) -> None:
    page = tmp_path / "d.html"
    assert main(["diff", str(digits_model), str(example_out / "model.onnx"), "--html", str(page)]) == 0
    text = capsys.readouterr().out
    assert "4 removed" in text and "/down/down.1/BatchNormalization" in text
    html = page.read_text()
    assert html.count("<svg") == 2 and html.count('class=nd data-name="/down/down.1/BatchNormalization') == 1


def test_explore_overlays_are_model_explorer_node_data(example_out: Path) -> None:
    model_path, files, covered = explore.write_overlays(example_out)
    data = {k: json.loads(p.read_text()) for k, p in files.items()}
    assert covered["last_pass"] == 8 and covered["sqnr"] == 0  # a float compile has no per-layer SQNR
    for d in data.values():
        explore.check_node_data(d)
    proto = onnx.load(str(model_path))
    names = {n.name for n in proto.graph.node}
    (gid, last), = data["last_pass"].items()
    assert gid == proto.graph.name
    # fuse-bn (pass 5) touched the 4 Convs and the 4 nodes after the removed BNs
    assert sorted(last["results"]) == sorted(["/stem/stem.0/Conv", "/stem/stem.2/Relu", "/branch/branch.0/Conv",
                                              "/branch/branch.2/Relu", "/branch/branch.3/Conv", "/Add",
                                              "/down/down.0/Conv", "/down/down.2/Relu"])
    assert {v["value"] for v in last["results"].values()} == {5} and "5 fuse-bn" in last["name"]
    macs = data["macs"][gid]["results"]
    assert set(macs) <= names and macs["/down/down.0/Conv"]["value"] == 32 * 4 * 4 * 16 * 9
    with pytest.raises(ValueError, match="stops 0 and 1"):
        explore.check_node_data({gid: {"results": {}, "gradient": [{"stop": 0.5, "bgColor": "red"}]}})
    with pytest.raises(ValueError, match="value"):
        explore.check_node_data({gid: {"results": {"a": {"value": "x"}}}})
    # The ONNX adapter of Model Explorer (the optional extra) uses the same graph and node ids.
    adapter = pytest.importorskip("model_explorer_onnx.main", reason="edgec[explore] not installed")
    graph = adapter.ONNXAdapter().convert(str(model_path), {})["graphs"][0]
    ids = {n.id for n in graph.nodes}
    assert graph.id == gid and set(last["results"]) <= ids and set(macs) <= ids


def test_explore_without_the_viewer_installed_is_one_line(example_out: Path, capsys, monkeypatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "model_explorer", None)  # as if the extra were not installed
    assert main(["explore", str(example_out)]) == 2
    assert "pip install 'edgec[explore]'" in capsys.readouterr().err
    assert main(["explore", str(example_out), "--no-open"]) == 0
    assert "last_pass.json (8 nodes)" in capsys.readouterr().out


def test_instrument_sees_a_weight_replaced_under_the_same_name() -> None:
    """The instrument reuses a weight's snapshot while it is the same tensor object, and re-reads it when
    a pass puts a new tensor in (as passes do: they never write into a kept array)."""
    import onnx_ir as ir

    model = _before()
    inst = graphdiff.DiffInstrument()
    inst.run_before_pass(model)
    assert graphdiff.is_empty(inst.run_after_pass(model))
    inst.run_before_pass(model)
    w = model.graph.initializers["w"]
    w.const_value = ir.Tensor(w.const_value.numpy() * 2.0, name="w")
    d = inst.run_after_pass(model)
    assert d["counts"]["initializers_changed"] == 1 and d["modified"][0]["name"] == "conv"
    assert d["modified"][0]["weights"] == [{"slot": 1, "before": "w", "after": "w"}]
    assert 0 < d["seconds"] <= d["pipeline_seconds"]
