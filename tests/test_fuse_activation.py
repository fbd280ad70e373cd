"""fuse-activation: spelled-out HardSwish becomes HardSwish (opset 14+) or x * HardSigmoid(x) (older)."""

from __future__ import annotations

import graphs
import numpy as np
import pytest
from onnx import helper
from test_passes_core import assert_close, feeds_for, ops, outputs, run_passes


def hardswish_graph(opset: int, tail: str, out_is_clip: bool = False):
    """Conv -> x * clip(x + 3, 0, 6) / 6 in one of its spellings."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"]), helper.make_node("Add", ["y", "three"], ["a"]),
             helper.make_node("Clip", ["a", "zero", "six"], ["c"])]
    if tail == "div":  # (x * c) / 6
        nodes += [helper.make_node("Mul", ["y", "c"], ["m"]), helper.make_node("Div", ["m", "six"], ["out"])]
    elif tail == "mul-first":  # x * (c * 1/6)
        nodes += [helper.make_node("Mul", ["c", "sixth"], ["d"]), helper.make_node("Mul", ["d", "y"], ["out"])]
    else:  # (c * x) * 1/6
        nodes += [helper.make_node("Mul", ["c", "y"], ["m"]), helper.make_node("Mul", ["m", "sixth"], ["out"])]
    outs = [graphs.vi("out", [1, 4, 4, 4])] + ([graphs.vi("c", [1, 4, 4, 4])] if out_is_clip else [])
    r = graphs.rng(0)
    return graphs.make(nodes, [graphs.vi("x", [1, 4, 6, 6])], outs,
                       [graphs.init("w", r.normal(0, 1, (4, 4, 3, 3)).astype(np.float32)),
                        graphs.init("three", np.float32(3)), graphs.init("zero", np.float32(0)),
                        graphs.init("six", np.float32(6)), graphs.init("sixth", np.float32(1 / 6))], opset=opset)


@pytest.mark.parametrize("tail", ["div", "mul-first", "mul-last"])
@pytest.mark.parametrize("opset,want", [(13, ["Conv", "HardSigmoid", "Mul"]), (14, ["Conv", "HardSwish"])])
def test_spelled_out_hardswish_fuses(tail, opset, want):
    model = hardswish_graph(opset, tail)
    feeds = feeds_for(model)
    ref = outputs(model, feeds)
    out, recs = run_passes(model, "fuse-activation,dce", feeds)
    assert ops(out) == want
    assert_close(ref, outputs(out, feeds))
    assert recs[1].details["fused"][0]["ops"] == 4
    assert [v.name for v in out.graph.outputs] == ["out"]


def test_intermediate_read_elsewhere_is_left_alone():
    model = hardswish_graph(14, "div", out_is_clip=True)  # the Clip output is also a graph output
    out, recs = run_passes(model, "fuse-activation")
    assert "HardSwish" not in ops(out) and recs[1].changed is False


def test_x_times_hardsigmoid_becomes_hardswish_on_opset_14():
    nodes = [helper.make_node("HardSigmoid", ["x"], ["h"], alpha=1 / 6, beta=0.5),
             helper.make_node("Mul", ["x", "h"], ["out"])]
    model = graphs.make(nodes, [graphs.vi("x", [2, 8])], [graphs.vi("out", [2, 8])], [], opset=14)
    feeds = feeds_for(model)
    ref = outputs(model, feeds)
    out, _ = run_passes(model, "fuse-activation,dce", feeds)
    assert ops(out) == ["HardSwish"]
    assert_close(ref, outputs(out, feeds))
    # PyTorch's default HardSigmoid constants (alpha 0.2) are a different function: kept.
    other = graphs.make([helper.make_node("HardSigmoid", ["x"], ["h"]), helper.make_node("Mul", ["x", "h"], ["out"])],
                        [graphs.vi("x", [2, 8])], [graphs.vi("out", [2, 8])], [], opset=14)
    out2, _ = run_passes(other, "fuse-activation")
    assert ops(out2) == ["HardSigmoid", "Mul"]
