"""tools/float_output_conv.py (issue 16's float-output int8 Conv experiment): its rewrites are exact, so the
SQNR it reports for them is the placement's, not an artefact of the rewrite, and ONNX Runtime runs them."""

from __future__ import annotations

from pathlib import Path

import float_output_conv as foc  # tools/ on pytest's pythonpath
import numpy as np
import onnx
import pytest
from bench_measure import OrtRunner
from onnx import TensorProto as T
from onnx import helper
from onnx import numpy_helper as nh


def _qdq_convs(path: Path) -> dict[str, np.ndarray]:
    """x -> Q/DQ -> 1x1 Conv (int8 weight DQ, float bias) -> HardSwish -> Q/DQ -> depthwise 3x3 Conv -> y:
    PP-LCNet's block with the Conv outputs left float."""
    rng = np.random.default_rng(0)
    w1 = rng.integers(-63, 64, (24, 16, 1, 1)).astype(np.int8)
    w2 = rng.integers(-63, 64, (24, 1, 3, 3)).astype(np.int8)
    init = [nh.from_array(w1, "w1"), nh.from_array(((rng.random(24) + 0.5) * 1e-2).astype(np.float32), "s1"),
            nh.from_array(np.zeros(24, np.int8), "z1"), nh.from_array(rng.standard_normal(24).astype(np.float32), "b1"),
            nh.from_array(w2, "w2"), nh.from_array(((rng.random(24) + 0.5) * 1e-2).astype(np.float32), "s2"),
            nh.from_array(np.zeros(24, np.int8), "z2"),
            nh.from_array(np.array(0.03, np.float32), "xs"), nh.from_array(np.array(120, np.uint8), "xz"),
            nh.from_array(np.array(0.02, np.float32), "hs"), nh.from_array(np.array(30, np.uint8), "hz")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w1", "s1", "z1"], ["w1d"], axis=0),
             helper.make_node("Conv", ["xd", "w1d", "b1"], ["c1"], name="pw"),
             helper.make_node("HardSwish", ["c1"], ["h"]),
             helper.make_node("QuantizeLinear", ["h", "hs", "hz"], ["hq"]),
             helper.make_node("DequantizeLinear", ["hq", "hs", "hz"], ["hd"]),
             helper.make_node("DequantizeLinear", ["w2", "s2", "z2"], ["w2d"], axis=0),
             helper.make_node("Conv", ["hd", "w2d"], ["y"], name="dw", group=24, pads=[1, 1, 1, 1])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", T.FLOAT, [1, 16, 20, 20])],
                          [helper.make_tensor_value_info("y", T.FLOAT, [1, 24, 20, 20])], init)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return {"x": rng.standard_normal((1, 16, 20, 20)).astype(np.float32)}


@pytest.mark.parametrize("kind, only, rewritten", [("matmul", "pointwise", 1), ("conv-integer", "all", 2)])
def test_rewrite_is_exact_and_runs(tmp_path: Path, kind: str, only: str, rewritten: int) -> None:
    src, dst = tmp_path / "qdq.onnx", tmp_path / "fo.onnx"
    feed = _qdq_convs(src)
    counts = foc.float_output_convs(src, dst, only, kind)
    assert counts["rewritten"] == rewritten
    ops = {n.op_type for n in onnx.load(str(dst)).graph.node}
    assert ("MatMulIntegerToFloat" if kind == "matmul" else "ConvInteger") in ops
    ref = OrtRunner(src, feed, "basic").first_output(feed)  # Q/DQ op by op: the float reading of the graph
    got = OrtRunner(dst, feed).first_output(feed)
    # int32 accumulation vs float: only summation-order rounding may differ
    assert np.max(np.abs(got - ref)) <= 1e-4 * np.max(np.abs(ref)) + 1e-6
