"""Models people have, beyond what exporters write today: IR-3 files (initializers listed as inputs),
inputs of every dtype, control flow (If/Loop), stacked .npz samples, and ``python -m edgec``.

Every model is built here with onnx.helper and run by ONNX Runtime before and after edgec.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

import edgec
from edgec import data, model_io
from edgec.errors import EdgecError

RNG = np.random.default_rng(0)


def _ort(model: onnx.ModelProto | bytes, feed: dict) -> list:
    raw = model if isinstance(model, bytes) else model.SerializeToString()
    return ort.InferenceSession(raw, providers=["CPUExecutionProvider"]).run(None, feed)


def _ops(proto: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in proto.graph.node]


def ir3_model() -> onnx.ModelProto:
    """Opset 9, IR 3, as the classic model zoo CNNs: every initializer is also a graph input; Conv ->
    BatchNormalization -> Relu, then a 1x1 Conv whose weight is built by ConstantOfShape."""
    w = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32) * 0.3
    b = RNG.standard_normal(4).astype(np.float32) * 0.1
    bn = [RNG.uniform(0.5, 1.5, 4), RNG.standard_normal(4) * 0.1, RNG.standard_normal(4) * 0.1,
          RNG.uniform(0.5, 2.0, 4)]
    inits = [nh.from_array(w, "conv1_W_0"), nh.from_array(b, "conv1_b_0"),
             *(nh.from_array(a.astype(np.float32), n) for a, n in zip(bn, ("bn_s", "bn_b", "bn_m", "bn_v"))),
             nh.from_array(np.array([4, 4, 1, 1], np.int64), "w2_shape")]
    nodes = [
        h.make_node("Conv", ["data_0", "conv1_W_0", "conv1_b_0"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        h.make_node("BatchNormalization", ["c1", "bn_s", "bn_b", "bn_m", "bn_v"], ["n1"], name="bn1", epsilon=1e-5),
        h.make_node("Relu", ["n1"], ["r1"], name="relu1"),
        h.make_node("ConstantOfShape", ["w2_shape"], ["conv2_W"], name="w2",
                    value=nh.from_array(np.array([0.25], np.float32))),
        h.make_node("Conv", ["r1", "conv2_W"], ["out"], name="conv2"),
    ]
    real = h.make_tensor_value_info("data_0", T.FLOAT, [1, 3, 8, 8])
    listed = [h.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits]
    graph = h.make_graph(nodes, "ir3", [real, *listed], [h.make_tensor_value_info("out", T.FLOAT, [1, 4, 8, 8])],
                         inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 9)])
    model.ir_version = 3
    return model


def test_ir3_initializers_listed_as_inputs_are_constants(tmp_path: Path) -> None:
    proto = ir3_model()
    onnx.checker.check_model(proto)
    path = tmp_path / "ir3.onnx"
    onnx.save(proto, str(path))
    x = RNG.standard_normal((6, 3, 8, 8)).astype(np.float32)  # a stack: [N, *input_shape[1:]]
    np.savez(tmp_path / "x.npz", data_0=x)
    # Only the real input is asked for: the weights are not inputs.
    assert [name for name, _d, _t in data.input_specs(model_io.load(path))] == ["data_0"]

    res = edgec.compile(path, target="cpu-fp32", samples=tmp_path / "x.npz")
    out = model_io.to_proto(res.model)
    onnx.checker.check_model(out, full_check=True)
    assert "BatchNormalization" not in _ops(out) and "ConstantOfShape" not in _ops(out)
    assert [i.name for i in out.graph.input] == ["data_0"]
    for k in range(3):
        feed = {"data_0": x[k:k + 1]}
        ref, got = _ort(proto, feed)[0], _ort(out, feed)[0]
        assert np.abs(ref - got).max() <= 1e-4 * np.abs(ref).max()

    int8 = edgec.compile(path, target="cpu-int8", calib=tmp_path / "x.npz", out_dir=tmp_path / "int8")
    q = onnx.load(str(tmp_path / "int8" / "model.onnx"))
    assert "QuantizeLinear" in _ops(q) and "BatchNormalization" not in _ops(q)
    ref, got = _ort(proto, {"data_0": x[:1]})[0], _ort(q, {"data_0": x[:1]})[0]
    assert 10 * np.log10(np.sum(ref**2) / np.sum((ref - got) ** 2)) > 20  # SQNR dB on calibration data
    assert int8.records[-1].drift is not None


def _single(op_inputs: list, nodes: list, outputs: list, opset: int = 17) -> onnx.ModelProto:
    model = h.make_model(h.make_graph(nodes, "m", op_inputs, outputs), opset_imports=[h.make_opsetid("", opset)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("dtype", [T.STRING, T.UINT64, T.UINT16, T.INT16, T.UINT32, T.BOOL])
def test_inputs_fed_in_their_own_dtype(tmp_path: Path, dtype: int) -> None:
    """An input of any dtype: random feeds and sample files come in that dtype; outputs unchanged."""
    x = h.make_tensor_value_info("x", dtype, [2, 3])
    nodes = [h.make_node("Identity", ["x"], ["i"]), h.make_node("Equal", ["i", "x"], ["eq"]),
             h.make_node("Shape", ["x"], ["s"]), h.make_node("Cast", ["s"], ["sf"], to=T.FLOAT),
             h.make_node("Mul", ["sf", "sf"], ["y"])]
    outs = [h.make_tensor_value_info("eq", T.BOOL, [2, 3]), h.make_tensor_value_info("y", T.FLOAT, [2])]
    proto = _single([x], nodes, outs, opset=19)
    path = tmp_path / "m.onnx"
    onnx.save(proto, str(path))
    res = edgec.compile(path, target="cpu-fp32")  # random feeds, in the input's dtype
    out = model_io.to_proto(res.model)
    np_dtype = onnx.helper.tensor_dtype_to_np_dtype(dtype)
    feed = {"x": np.array([["a", "b", "c"], ["d", "e", "f"]], dtype=object) if dtype == T.STRING
            else np.arange(6).reshape(2, 3).astype(np_dtype)}
    for ref, got in zip(_ort(proto, feed), _ort(out, feed)):
        np.testing.assert_array_equal(ref, got)
    assert res.records[0].drift is not None and res.records[-1].drift.max_abs == 0.0


def test_string_npz_samples(tmp_path: Path) -> None:
    x = h.make_tensor_value_info("text", T.STRING, [None])
    nodes = [h.make_node("Equal", ["text", "ref"], ["y"])]
    proto = _single([x], [h.make_node("Constant", [], ["ref"], value=nh.from_array(
        np.array(["yes"], dtype=object))), *nodes], [h.make_tensor_value_info("y", T.BOOL, [None])], opset=19)
    path = tmp_path / "s.onnx"
    onnx.save(proto, str(path))
    np.savez(tmp_path / "s.npz", text=np.array(["yes", "no", "yes"]))  # unicode, no pickle
    res = edgec.compile(path, target="cpu-fp32", samples=tmp_path / "s.npz")
    got = _ort(model_io.to_proto(res.model), {"text": np.array(["yes", "no"], dtype=object)})[0]
    assert got.tolist() == [True, False]


def vad_like_model() -> onnx.ModelProto:
    """A voice-activity-detector shape: an int64 sample-rate input picks a branch (If); each branch
    runs a Conv on a weight from the main graph (outer scope) followed by BatchNormalization."""
    w16 = nh.from_array(RNG.standard_normal((2, 1, 3)).astype(np.float32), "w16")
    w8 = nh.from_array(RNG.standard_normal((2, 1, 5)).astype(np.float32), "w8")
    bn = [nh.from_array(a.astype(np.float32), n) for a, n in zip(
        (RNG.uniform(0.5, 1.5, 2), RNG.standard_normal(2), RNG.standard_normal(2), RNG.uniform(0.5, 2, 2)),
        ("s", "b", "m", "v"))]
    sr16 = nh.from_array(np.array(16000, np.int64), "sr16")

    def branch(w: str, name: str) -> onnx.GraphProto:
        return h.make_graph([
            h.make_node("Conv", ["xin", w], [f"{name}_c"], name=f"{name}_conv", pads=[1, 1] if w == "w16" else [2, 2]),
            h.make_node("BatchNormalization", [f"{name}_c", "s", "b", "m", "v"], [f"{name}_y"], name=f"{name}_bn"),
        ], name, [], [h.make_tensor_value_info(f"{name}_y", T.FLOAT, [1, 2, 16])])

    nodes = [
        h.make_node("Mul", ["x", "two"], ["xin"], name="scale"),
        h.make_node("Equal", ["sr", "sr16"], ["is16"], name="eq"),
        h.make_node("If", ["is16"], ["feat"], name="If_0", then_branch=branch("w16", "then"),
                    else_branch=branch("w8", "else")),
        h.make_node("Relu", ["feat"], ["y"], name="relu"),
    ]
    two = nh.from_array(np.array(2.0, np.float32), "two")
    graph = h.make_graph(nodes, "vad", [h.make_tensor_value_info("x", T.FLOAT, [1, 1, 16]),
                                        h.make_tensor_value_info("sr", T.INT64, [])],
                         [h.make_tensor_value_info("y", T.FLOAT, [1, 2, 16])], [w16, w8, *bn, sr16, two])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_control_flow_if_compiles_fp32_and_int8(tmp_path: Path) -> None:
    proto = vad_like_model()
    onnx.checker.check_model(proto, full_check=True)
    path = tmp_path / "vad.onnx"
    onnx.save(proto, str(path))
    feeds = [{"x": RNG.standard_normal((1, 1, 16)).astype(np.float32), "sr": np.array(sr, np.int64)}
             for sr in (16000, 8000, 16000, 8000)]
    res = edgec.compile(path, target="cpu-fp32", samples=feeds)
    out = model_io.to_proto(res.model)
    assert "If" in _ops(out)
    for feed in feeds[:2]:
        ref, got = _ort(proto, feed)[0], _ort(out, feed)[0]
        assert np.abs(ref - got).max() <= 1e-4 * np.abs(ref).max() + 1e-6

    int8 = edgec.compile(path, target="cpu-int8", calib=feeds, samples=feeds)
    q = model_io.to_proto(int8.model)
    assert "If" in _ops(q)
    for feed in feeds[:2]:
        ref, got = _ort(proto, feed)[0], _ort(q, feed)[0]
        assert np.abs(ref - got).max() <= 0.1 * np.abs(ref).max()


def test_npz_stack_layouts(tmp_path: Path) -> None:
    """[N, 3, 8, 8] for a [1, 3, 8, 8] input is N samples; for a dynamic batch too; a true mismatch names
    the layouts taken."""
    for batch in (1, "N"):
        x = h.make_tensor_value_info("x", T.FLOAT, [batch, 3, 8, 8])
        proto = _single([x], [h.make_node("Relu", ["x"], ["y"])], [h.make_tensor_value_info("y", T.FLOAT, None)])
        path = tmp_path / "m.onnx"
        onnx.save(proto, str(path))
        model = model_io.load(path)
        np.savez(tmp_path / "a.npz", x=np.zeros((5, 3, 8, 8), np.float32))
        src = data.load_feeds(tmp_path / "a.npz", model)
        assert src is not None and len(src) == 5 and src[4]["x"].shape == (1, 3, 8, 8)
        np.savez(tmp_path / "b.npz", x=np.zeros((5, 4, 8, 8), np.float32))
        with pytest.raises(EdgecError) as err:
            data.load_feeds(tmp_path / "b.npz", model)
        assert "[N, 3, 8, 8]" in (err.value.hint or "") and "(dim 1)" in err.value.message


def test_python_dash_m_edgec(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "edgec", "--help"], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0 and "usage" in proc.stdout.lower()
    path = tmp_path / "ir3.onnx"
    onnx.save(ir3_model(), str(path))
    bad = subprocess.run([sys.executable, "-m", "edgec", "compile", str(path), "-t", "cpu-fp64"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert bad.returncode == 2 and "unknown target" in bad.stderr


def test_readers_inside_subgraphs_are_left_alone(tmp_path: Path) -> None:
    """A Conv whose only reader is a Relu / BatchNormalization inside an If body, an Identity whose output a
    Loop body reads: fusions must not pull body nodes out, nor lose the names bodies capture."""
    w = nh.from_array(RNG.standard_normal((4, 3, 3, 3)).astype(np.float32), "W")
    bn = [nh.from_array(a.astype(np.float32), n) for a, n in zip(
        (RNG.uniform(0.5, 1.5, 4), RNG.standard_normal(4), RNG.standard_normal(4), RNG.uniform(0.5, 2, 4)), "sbmv")]
    spec = [1, 4, 8, 8]
    then = h.make_graph([h.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["t"], name="bn_in_then"),
                         h.make_node("Relu", ["t"], ["t2"])], "then", [], [h.make_tensor_value_info("t2", T.FLOAT, spec)])
    other = h.make_graph([h.make_node("Relu", ["c"], ["e"], name="relu_in_else")], "else", [],
                         [h.make_tensor_value_info("e", T.FLOAT, spec)])
    body = h.make_graph([h.make_node("Identity", ["cond_in"], ["cond_out"]), h.make_node("Add", ["acc", "ci"], ["acc2"])],
                        "body", [h.make_tensor_value_info("i", T.INT64, []), h.make_tensor_value_info("cond_in", T.BOOL, []),
                                 h.make_tensor_value_info("acc", T.FLOAT, spec)],
                        [h.make_tensor_value_info("cond_out", T.BOOL, []), h.make_tensor_value_info("acc2", T.FLOAT, spec)])
    nodes = [h.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             h.make_node("Conv", ["x", "W"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
             h.make_node("Identity", ["c2"], ["ci"], name="ident"),
             h.make_node("ReduceSum", ["x"], ["sx"], keepdims=0), h.make_node("Greater", ["sx", "zero"], ["g"]),
             h.make_node("If", ["g"], ["y"], then_branch=then, else_branch=other, name="If_0"),
             h.make_node("Loop", ["three", "", "y"], ["z"], body=body, name="loop")]
    graph = h.make_graph(nodes, "cf", [h.make_tensor_value_info("x", T.FLOAT, [1, 3, 8, 8])],
                         [h.make_tensor_value_info("z", T.FLOAT, spec)],
                         [w, *bn, nh.from_array(np.array(0, np.float32), "zero"), nh.from_array(np.array(3, np.int64), "three")])
    proto = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.checker.check_model(proto, full_check=True)
    path = tmp_path / "cf.onnx"
    onnx.save(proto, str(path))
    feeds = [{"x": (RNG.standard_normal((1, 3, 8, 8)) + sign).astype(np.float32)} for sign in (1, -1, 1, -1)]
    for target in ("cpu-fp32", "cpu-int8"):
        res = edgec.compile(path, target=target, calib=feeds, samples=feeds, out_dir=tmp_path / target)
        out = onnx.load(str(tmp_path / target / "model.onnx"))
        if_node = next(n for n in out.graph.node if n.op_type == "If")
        assert [n.op_type for a in if_node.attribute for n in a.g.node] in (
            ["BatchNormalization", "Relu", "Relu"], ["Relu", "BatchNormalization", "Relu"])
        limit = 1e-4 if target == "cpu-fp32" else 0.1
        for feed in feeds[:2]:  # both branches
            ref, got = _ort(proto, feed)[0], _ort(out, feed)[0]
            assert np.abs(ref - got).max() <= limit * np.abs(ref).max()
    quantize = next(r for r in res.records if r.name == "quantize")
    assert quantize.details.get("float_in_subgraphs") == 5
