"""fuse-affine: constant per-channel Mul/Div/Add/Sub around Conv / ConvTranspose / Gemm fold into weights."""

from __future__ import annotations

import graphs
import numpy as np
import pytest
from onnx import helper
from test_passes_core import assert_close, feeds_for, ops, outputs, run_passes


def _conv(x, y, w, b=None, name="conv", **attrs):
    return helper.make_node("Conv", [x, w] + ([b] if b else []), [y], name=name, **attrs)


def affine_after(op: str, shape: tuple[int, ...], groups: int = 1, transpose: bool = False, seed: int = 0):
    """x -> Conv(group) -> op(const) -> Relu."""
    r = graphs.rng(seed)
    c = r.uniform(0.5, 2.0, shape).astype(np.float32)
    if transpose:
        w = r.normal(0, 0.3, (8, 6 // groups, 3, 3)).astype(np.float32)  # ConvTranspose: [Cin, Cout/g, k, k]
        conv = helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], name="conv", group=groups, strides=[2, 2])
        b = r.normal(0, 0.1, 6).astype(np.float32)
        out_shape = [1, 6, 17, 17]
    else:
        w = r.normal(0, 0.3, (8, 8 // groups, 3, 3)).astype(np.float32)
        conv = _conv("x", "y", "w", "b", group=groups, pads=[1, 1, 1, 1])
        b = r.normal(0, 0.1, 8).astype(np.float32)
        out_shape = [1, 8, 8, 8]
    nodes = [conv, helper.make_node(op, ["y", "c"], ["z"], name="affine"), helper.make_node("Relu", ["z"], ["out"])]
    return graphs.make(nodes, [graphs.vi("x", [1, 8, 8, 8])], [graphs.vi("out", out_shape)],
                       [graphs.init("w", w), graphs.init("b", b), graphs.init("c", c)])


@pytest.mark.parametrize("op", ["Mul", "Div", "Add", "Sub"])
@pytest.mark.parametrize("shape", [(), (8, 1, 1), (1, 8, 1, 1)])
def test_affine_after_conv_folds(op, shape):
    model = affine_after(op, shape)
    feeds = feeds_for(model)
    ref = outputs(model, feeds)
    out, recs = run_passes(model, "fuse-affine,dce", feeds)
    assert ops(out) == ["Conv", "Relu"]
    assert_close(ref, outputs(out, feeds))
    assert recs[1].details["fused"] == [{"node": "affine", "op": op, "into": "conv"}]


@pytest.mark.parametrize("groups", [1, 2])
def test_scale_after_grouped_convtranspose_folds(groups):
    model = affine_after("Mul", (1, 6, 1, 1), groups=groups, transpose=True)
    feeds = feeds_for(model)
    ref = outputs(model, feeds)
    out, _ = run_passes(model, "fuse-affine,dce", feeds)
    assert ops(out) == ["ConvTranspose", "Relu"]
    assert_close(ref, outputs(out, feeds))


def test_spatial_constant_is_left_alone():
    model = affine_after("Mul", (1, 1, 8, 8))
    out, recs = run_passes(model, "fuse-affine")
    assert ops(out) == ["Conv", "Mul", "Relu"]
    assert recs[1].changed is False


def affine_before(pads: list[int], groups: int, seed: int = 0):
    """x -> Mul(a) -> Add(b) -> Conv(pads, group): the learnable-affine block in front of a conv."""
    r = graphs.rng(seed)
    a = r.uniform(0.5, 2.0, (1, 8, 1, 1)).astype(np.float32)
    bb = r.normal(0, 1.0, (1, 8, 1, 1)).astype(np.float32)
    w = r.normal(0, 0.3, (8, 8 // groups, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Mul", ["x", "a"], ["xa"], name="scale"),
             helper.make_node("Add", ["xa", "bb"], ["xb"], name="shift"),
             _conv("xb", "out", "w", group=groups, pads=pads)]
    side = 8 + pads[0] + pads[2] - 2
    return graphs.make(nodes, [graphs.vi("x", [1, 8, 8, 8])], [graphs.vi("out", [1, 8, side, side])],
                       [graphs.init("a", a), graphs.init("bb", bb), graphs.init("w", w)])


@pytest.mark.parametrize("groups", [1, 2, 8])
def test_affine_before_unpadded_conv_folds(groups):
    model = affine_before([0, 0, 0, 0], groups)
    feeds = feeds_for(model)
    ref = outputs(model, feeds)
    out, _ = run_passes(model, "fuse-affine,dce", feeds)
    assert ops(out) == ["Conv"]
    assert len(out.graph.node(0).inputs) == 3  # the shift became a bias
    assert_close(ref, outputs(out, feeds))


def test_affine_before_padded_conv_is_kept():
    # The zero border would become -b/a after folding: not exact, so the pass leaves it.
    model = affine_before([1, 1, 1, 1], 1)
    out, recs = run_passes(model, "fuse-affine")
    assert ops(out) == ["Mul", "Add", "Conv"]
    assert recs[1].changed is False


def test_scale_and_shift_before_gemm_fold():
    r = graphs.rng(3)
    nodes = [helper.make_node("Mul", ["x", "a"], ["xa"]), helper.make_node("Sub", ["xa", "m"], ["xs"]),
             helper.make_node("Gemm", ["xs", "w", "b"], ["out"], transB=1)]
    model = graphs.make(nodes, [graphs.vi("x", [2, 16])], [graphs.vi("out", [2, 4])],
                        [graphs.init("a", r.uniform(0.5, 2, 16).astype(np.float32)),
                         graphs.init("m", r.normal(0, 1, 16).astype(np.float32)),
                         graphs.init("w", r.normal(0, 0.3, (4, 16)).astype(np.float32)),
                         graphs.init("b", r.normal(0, 0.1, 4).astype(np.float32))])
    feeds = feeds_for(model)
    ref = outputs(model, feeds)
    out, _ = run_passes(model, "fuse-affine,dce", feeds)
    assert ops(out) == ["Gemm"]
    assert_close(ref, outputs(out, feeds))


def test_shared_conv_output_is_left_alone():
    # The Conv output is also a graph output: scaling the weights would change it.
    r = graphs.rng(4)
    nodes = [_conv("x", "y", "w"), helper.make_node("Mul", ["y", "c"], ["out"])]
    model = graphs.make(nodes, [graphs.vi("x", [1, 8, 6, 6])], [graphs.vi("y", [1, 8, 4, 4]),
                                                                 graphs.vi("out", [1, 8, 4, 4])],
                        [graphs.init("w", r.normal(0, 0.3, (8, 8, 3, 3)).astype(np.float32)),
                         graphs.init("c", np.float32(2.0))])
    out, recs = run_passes(model, "fuse-affine")
    assert ops(out) == ["Conv", "Mul"] and recs[1].changed is False
