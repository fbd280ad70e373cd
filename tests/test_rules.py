"""One rule table per runtime (passes/quantize/rules.py), read by placement, insertion and the TensorRT lint:
the scheme names its table, changing a table changes placement, and what placement builds for TensorRT is
what the lint accepts (while an ORT-built model breaks the TensorRT table's rules)."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir
import pytest
from graphs import init, make, rng, vi
from onnx import helper

from edgec import calib, targets
from edgec.backends import tensorrt_lint
from edgec.graph import infer_shapes
from edgec.passes.quantize import rules
from edgec.passes.quantize.insert import insert_qdq
from edgec.passes.quantize.placement import place
from edgec.passes.quantize.ranges import activation_params
from edgec.passes.quantize.scheme import QuantScheme


def _block(seed: int = 0):
    """Conv -> Relu -> MaxPool -> Conv -> Add(residual: the pool) -> Concat(pool) -> Sigmoid, and a Gemm head."""
    r = rng(seed)
    inits = [init("w1", r.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32)),
             init("b1", r.normal(0, 0.1, 8).astype(np.float32)),
             init("w2", r.normal(0, 0.3, (8, 8, 3, 3)).astype(np.float32)),
             init("b2", r.normal(0, 0.1, 8).astype(np.float32)),
             init("wg", r.normal(0, 0.3, (16 * 4 * 4, 5)).astype(np.float32)),
             init("bg", r.normal(0, 0.1, 5).astype(np.float32))]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c2", "p1"], ["a1"], name="add1"),
             helper.make_node("Concat", ["a1", "p1"], ["cat"], name="cat1", axis=1),
             helper.make_node("Sigmoid", ["cat"], ["s1"], name="sig1"),
             helper.make_node("Flatten", ["s1"], ["f1"], name="flat1"),
             helper.make_node("Gemm", ["f1", "wg", "bg"], ["y"], name="head")]
    model = make(nodes, [vi("x", [1, 3, 8, 8])], [vi("y", [1, 5])], inits)
    infer_shapes(model)  # placement quantizes FLOAT tensors only: it needs their types
    return model


def _quantized(target: str):
    model = _block()
    scheme = QuantScheme.from_mapping(targets.get(target).scheme)
    plan = place(model.graph, scheme)
    feeds = [{"x": rng(i).normal(0, 1, (1, 3, 8, 8)).astype(np.float32)} for i in range(4)]
    stats = calib.collect(model, [t.name or "" for t in plan.tensors], feeds)
    insert_qdq(model, plan, activation_params(plan, stats, scheme, "minmax", 99.99), scheme, scheme.weight_bits)
    return model, plan


@pytest.mark.parametrize("target,table", [("cpu-int8", rules.ORT_CPU), ("cpu-int8-vnni", rules.ORT_CPU),
                                          ("jetson-int8", rules.TENSORRT), ("tflite-int8", rules.TFLITE)])
def test_the_scheme_names_its_table(target: str, table: rules.RuntimeRules) -> None:
    assert QuantScheme.from_mapping(targets.get(target).scheme).rules is table


def test_placement_follows_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """Take Sigmoid out of ORT's int8 ops: its input and output lose their Q/DQ, nothing else moves."""
    scheme = QuantScheme.from_mapping(targets.get("cpu-int8").scheme)
    before = {t.name for t in place(_block().graph, scheme).tensors}
    assert {"cat", "s1"} <= before
    no_sigmoid = tuple(op for op in rules.ORT_CPU.int8_ops if op != "Sigmoid")
    monkeypatch.setitem(rules.RULES, "ort", dataclasses.replace(rules.ORT_CPU, int8_ops=no_sigmoid))
    after = {t.name for t in place(_block().graph, scheme).tensors}
    assert before - after == {"s1"}  # "cat" stays: Concat is still int8 and writes it
    # TensorRT's table: Q/DQ on the weighted ops' data inputs and on the residual input of the Add only.
    trt = {t.name for t in place(_block().graph, QuantScheme.from_mapping(targets.get("jetson-int8").scheme)).tensors}
    assert trt == {"x", "p1", "f1"}


def test_what_placement_builds_for_tensorrt_is_what_the_lint_accepts() -> None:
    model, _ = _quantized("jetson-int8")
    qdq_rules = {"qdq-dtype", "weight-per-channel", "activation-per-tensor", "weighted-input", "qdq-conv-activation",
                 "residual-add", "concat-scales", "qdq-breaks-fusion"}
    errors = [f for f in tensorrt_lint.lint(model, "jetson-int8") if f.severity == "error" and f.rule in qdq_rules]
    assert errors == []
    # The ORT table's model (uint8 asymmetric activations, int32 biases) breaks TensorRT's: the lint says so.
    ort, _ = _quantized("cpu-int8")
    dtype = [f for f in tensorrt_lint.lint(ort, "jetson-int8") if f.rule == "qdq-dtype" and f.severity == "error"]
    assert len(dtype) >= 3  # at least: uint8 activation Q/DQ, non-zero zero points, the Gemm's INT32 bias DQ
    assert any("INT32" in f.message for f in dtype)


def test_one_weight_axis_for_insertion_and_lint() -> None:
    """insert.py quantizes on rules.weight_axis; the lint expects the same axis and flags any other."""
    model, _ = _quantized("jetson-int8")
    dqs = {n.outputs[0].name: n for n in model.graph if n.op_type == "DequantizeLinear"}
    head = next(n for n in model.graph if n.name == "head")
    w_dq = head.inputs[1].producer()
    assert w_dq is not None and w_dq.op_type == "DequantizeLinear" and w_dq.outputs[0].name in dqs
    assert w_dq.attributes["axis"].value == rules.weight_axis("Gemm", 0, 2) == 1
    conv = next(n for n in model.graph if n.name == "conv2")
    c_dq = conv.inputs[1].producer()
    assert c_dq.attributes["axis"].value == rules.weight_axis("Conv") == 0
    assert not [f for f in tensorrt_lint.lint(model, "jetson-int8") if f.rule == "weight-per-channel"]
    # Claim the Gemm's 5 scales run along axis 0 (its 256 inputs): the lint names the axis the table gives.
    w_dq.attributes["axis"] = ir.AttrInt64("axis", 0)
    found = [f for f in tensorrt_lint.lint(model, "jetson-int8") if f.rule == "weight-per-channel"]
    assert len(found) == 1 and found[0].node == "head" and "axis 1" in found[0].message
