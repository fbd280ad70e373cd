"""The rewrite rules of passes/patterns.py on their real exported forms (torch.onnx.export, ONNX Runtime's
QDQ quantizer), and on near misses that must stay as they are: a wrong constant, an intermediate read
by something outside the chain. Each rewrite is also run in ONNX Runtime against the original."""

from __future__ import annotations

import io
import math

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch
from test_passes_core import assert_close, outputs

from edgec.graph import NameSource
from edgec.passes import patterns

SHAPE = (1, 4, 6, 6)


def export(fn, opset: int, outputs_n: int = 1) -> ir.Model:
    class M(torch.nn.Module):
        def forward(self, x):
            return fn(x)

    buf = io.BytesIO()
    names = ["out"] if outputs_n == 1 else [f"out{i}" for i in range(outputs_n)]
    with torch.no_grad():
        torch.onnx.export(M().eval(), torch.randn(*SHAPE), buf, dynamo=False, opset_version=opset,
                          input_names=["x"], output_names=names)
    return ir.serde.deserialize_model(onnx.load_from_string(buf.getvalue()))


def ops(model: ir.Model) -> list[str]:
    """The model's ops without the Constant nodes the exporter writes scalars as."""
    return [n.op_type for n in model.graph if n.op_type != "Constant"]


def feeds(n: int = 3) -> list[dict[str, np.ndarray]]:
    r = np.random.default_rng(5)
    return [{"x": (r.normal(0, 3, SHAPE)).astype(np.float32)} for _ in range(n)]  # spans the Clip's 0..6


def hardswish(model: ir.Model, one_op: bool = True) -> list[patterns.Rewrite]:
    return patterns.apply(model.graph, patterns.hardswish_rules(NameSource(model.graph), one_op))


def gelu(model: ir.Model) -> list[patterns.Rewrite]:
    return patterns.apply(model.graph, patterns.gelu_rules(NameSource(model.graph), model.graph), at="first")


def spelled_hardswish(x, three=3.0, six=6.0):
    return x * torch.clamp(x + three, 0, 6) / six  # PaddlePaddle's and older PyTorch's spelling


def spelled_gelu(x, half=0.5, root2=patterns.SQRT2):
    return x * (1 + torch.erf(x / root2)) * half  # the structure nn.GELU() exports


@pytest.mark.parametrize("fn,want", [
    (spelled_hardswish, 4),
    (lambda x: x * (torch.clamp(x + 3, 0, 6) * (1 / 6)), 4),  # the division before the product
    (torch.nn.Hardswish(), 2),  # opset 13: x * HardSigmoid(x; 1/6, 1/2)
])
def test_hardswish_rules_fuse_the_exported_forms(fn, want):
    model = export(fn, opset=13)
    ref = outputs(model, feeds())
    model.opset_imports[""] = 14  # HardSwish exists from 14; every other op here is the same in 14
    done = hardswish(model)
    assert len(done) == 1 and len(done[0].old) == want and ops(model) == ["HardSwish"]
    assert [v.name for v in model.graph.outputs] == ["out"]
    assert_close(ref, outputs(model, feeds()))


def test_hardswish_below_opset_14_is_x_times_hardsigmoid():
    model = export(spelled_hardswish, opset=13)
    ref = outputs(model, feeds())
    assert len(hardswish(model, one_op=False)) == 1
    assert ops(model) == ["HardSigmoid", "Mul"]
    hs = next(n for n in model.graph if n.op_type == "HardSigmoid")
    assert abs(hs.attributes["alpha"].value - 1 / 6) < 1e-7 and hs.attributes["beta"].value == 0.5
    assert_close(ref, outputs(model, feeds()))
    # That two-op form is what older opsets keep: nothing more to fuse there.
    assert hardswish(model, one_op=False) == []


@pytest.mark.parametrize("fn", [
    lambda x: spelled_hardswish(x, three=2.9),  # wrong shift
    lambda x: spelled_hardswish(x, six=5.0),  # wrong divisor
    lambda x: x * torch.clamp(x + 3, 0, 5) / 6,  # wrong Clip bound
    lambda x: x * torch.nn.functional.hardsigmoid(x),  # PyTorch's default HardSigmoid is 1/6, 1/2 ...
])
def test_hardswish_near_misses_stay(fn):
    model = export(fn, opset=14)
    before = ops(model)
    done = hardswish(model)
    if before == ["HardSigmoid", "Mul"]:
        # ... and ONNX's default (alpha 0.2) is not: rewrite its alpha to check the constant test.
        hs = model.graph.node(0)
        assert len(done) == 1  # the real export fuses
        model = export(fn, opset=14)
        model.graph.node(0).attributes["alpha"] = ir.AttrFloat32("alpha", 0.2)
        assert hardswish(model) == [] and ops(model) == before, hs
        return
    assert done == [] and ops(model) == before


def shared_clip(x):
    c = torch.clamp(x + 3, 0, 6)
    return x * c / 6 + c.mean()


def shared_erf(x):
    e = torch.erf(x / math.sqrt(2.0))
    return x * (1 + e) * 0.5 + e.mean()


def test_hardswish_intermediate_read_elsewhere_stays():
    model = export(shared_clip, opset=14)
    before = ops(model)
    assert hardswish(model) == [] and ops(model) == before  # the Clip output feeds the ReduceSum too


def test_gelu_rule_fuses_nn_gelu_export():
    model = export(torch.nn.GELU(), opset=17)
    assert ops(model) == ["Div", "Erf", "Add", "Mul", "Mul"]
    ref = outputs(model, feeds())
    model.opset_imports[""] = 20  # Gelu exists from 20; Div/Erf/Add/Mul are the same there
    done = gelu(model)
    assert len(done) == 1 and [n.op_type for n in done[0].old] == ["Div", "Erf", "Add", "Mul", "Mul"]
    patterns.prune(model.graph, done[0].loose)
    assert ops(model) == ["Gelu"] and not model.graph.initializers and model.graph.outputs[0].name == "out"
    assert_close(ref, outputs(model, feeds()))


@pytest.mark.parametrize("fn", [
    lambda x: spelled_gelu(x, half=0.4),
    lambda x: spelled_gelu(x, root2=1.4),
    lambda x: x.flip(-1) * (1 + torch.erf(x / math.sqrt(2.0))) * 0.5,  # another tensor times the gate
])
def test_gelu_near_misses_stay(fn):
    model = export(fn, opset=17)
    before = ops(model)
    assert not patterns.matches(model.graph, patterns.gelu_rules(NameSource(model.graph), model.graph))
    assert gelu(model) == [] and ops(model) == before


def spelled_tanh_gelu(x, k=0.044715):
    return x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + k * x ** 3))) * 0.5  # x^3 as Pow


@pytest.mark.parametrize("fn,n_ops", [(lambda x: torch.nn.functional.gelu(x, approximate="tanh"), 9),
                                      (spelled_tanh_gelu, 8)])
def test_tanh_gelu_rule_fuses_the_exports(fn, n_ops):
    model = export(fn, opset=17)
    ref = outputs(model, feeds())
    model.opset_imports[""] = 20
    done = gelu(model)
    assert len(done) == 1 and len(done[0].old) == n_ops and ops(model) == ["Gelu"]
    assert next(n for n in model.graph if n.op_type == "Gelu").attributes["approximate"].value == "tanh"
    assert_close(ref, outputs(model, feeds()))
    # 0.044 instead of 0.044715: another function, left alone.
    miss = export(lambda x: spelled_tanh_gelu(x, k=0.044), opset=17)
    before = ops(miss)
    assert gelu(miss) == [] and ops(miss) == before


def test_tanh_gelu_through_the_tflite_pipeline(tmp_path):
    """tflite-fp32 end to end: one GELU (approximate) in the flatbuffer, LiteRT within 1e-4 of ORT."""
    import edgec

    path = tmp_path / "g.onnx"
    ir.save(export(lambda x: torch.nn.functional.gelu(x, approximate="tanh") * 2, opset=17), path)
    res = edgec.compile(path, target="tflite-fp32", calib=feeds(4), out_dir=tmp_path / "o",
                        options={"bench_runs": 0})
    rec = {r.name: r for r in res.records}["tflite-gelu"]
    assert rec.changed and rec.exact and rec.status == "ok"
    assert res.artifacts.figures["ops"].get("GELU") == 1 and "TANH" not in res.artifacts.figures["ops"]
    assert res.artifacts.figures["drift_vs_input"]["max_rel"] <= 1e-4


def test_gelu_intermediate_read_elsewhere_stays():
    model = export(shared_erf, opset=17)
    assert "Erf" in ops(model) and gelu(model) == []
    assert gelu(export(spelled_gelu, opset=17)) != []  # the same export without the extra reader fuses


@pytest.mark.parametrize("approximate,inner_edges", [("none", 4), ("tanh", 8)])
def test_gelu_rule_fuses_the_onnxruntime_qdq_chain(tmp_path, monkeypatch, approximate, inner_edges):
    """ONNX Runtime's quantizer puts a Q -> DQ pair on every edge of the chain and its scalars behind
    DequantizeLinear: the rule looks through both, and the pairs inside the chain go with it."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    monkeypatch.chdir(tmp_path)
    model = export(lambda x: torch.nn.functional.gelu(x, approximate=approximate) + x, opset=17)
    src, dst = tmp_path / "f.onnx", tmp_path / "q.onnx"
    ir.save(model, src)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(feeds(8))

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8, op_types_to_quantize=["Div", "Erf", "Tanh", "Add", "Mul"])
    q = ir.load(dst)
    assert sum(n.op_type == "QuantizeLinear" for n in q.graph) >= 5
    q.opset_imports[""] = 20
    done = gelu(q)
    assert len(done) == 1
    removed = sum(n.op_type in patterns.QDQ for n in done[0].old)
    assert removed == 2 * inner_edges, [n.op_type for n in done[0].old]  # a Q/DQ pair on every inner edge
    patterns.prune(q.graph, done[0].loose)
    assert not {"Erf", "Tanh"} & set(ops(q)) and ops(q).count("Gelu") == 1
    ref = outputs(model, feeds())
    got = outputs(q, feeds())
    err = np.abs(got[0]["out"] - ref[0]["out"]).max() / np.abs(ref[0]["out"]).max()
    assert err < 0.05, err  # int8 input/output roundings only


def test_split_rules_give_the_int8_friendly_form_and_keep_named_nodes():
    model = export(lambda x: torch.nn.functional.hardswish(x) + torch.nn.functional.hardsigmoid(x), opset=14)
    ref = outputs(model, feeds())
    keep = next(n.name for n in model.graph if n.op_type == "HardSigmoid")
    done = patterns.apply(model.graph, patterns.split_rules(model.graph, keep=[keep]))
    assert [r.rule for r in done] == ["SplitHardSwish"]
    assert ops(model) == ["Add", "Clip", "Mul", "Mul", "HardSigmoid", "Add"]
    assert_close(ref, outputs(model, feeds()))
    # Both at once: PyTorch's HardSigmoid has HardSwish's constants, so the two splits share all four.
    model = export(lambda x: torch.nn.functional.hardswish(x) + torch.nn.functional.hardsigmoid(x), opset=14)
    done = patterns.apply(model.graph, patterns.split_rules(model.graph))
    assert [r.rule for r in done] == ["SplitHardSwish", "SplitHardSigmoid"] and "HardSigmoid" not in ops(model)
    assert sorted(k for k in model.graph.initializers if k.startswith("hsig_")) == [
        "hsig_alpha", "hsig_hi", "hsig_lo", "hsig_shift"]
    assert_close(ref, outputs(model, feeds()))
