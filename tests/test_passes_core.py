"""Cleanup and fusion passes on hand-built graphs: structure after the pass AND numbers via ORT."""

from __future__ import annotations

import graphs
import numpy as np
import pytest

from edgec import model_io, runtime
from edgec.errors import EdgecError
from edgec.manager import Manager, PassFailed
from edgec.pass_infra import Pass, PassContext, parse_pipeline, parse_spec


def feeds_for(model, n=3, seed=1):
    r = np.random.default_rng(seed)
    return [{v.name: r.normal(0, 1, tuple(v.shape)).astype(np.float32) for v in model.graph.inputs} for _ in range(n)]


def run_passes(model, spec: str, samples=None):
    ctx = PassContext(samples=samples if samples is not None else feeds_for(model))
    mgr = Manager(ctx)
    out = mgr.run(model, parse_pipeline(spec))
    return out, mgr.records


def ops(model):
    return [n.op_type for n in model.graph]


def outputs(model, feeds):
    return runtime.run(runtime.session(model, optimization="disable"), feeds)


def assert_close(ref, got, rtol=1e-5):
    for r, g in zip(ref, got):
        for k in r:
            scale = np.abs(r[k]).max()
            np.testing.assert_allclose(g[k], r[k], atol=rtol * scale + 1e-6)


@pytest.mark.parametrize("bias", [True, False])
def test_fuse_bn_into_conv(bias):
    model = graphs.conv_bn(bias=bias)
    feeds = feeds_for(model)
    ref = outputs(model, feeds)
    out, recs = run_passes(model, "fuse-bn,dce", feeds)
    assert ops(out) == ["Conv"]
    assert len(out.graph.node(0).inputs) == 3  # a bias was created when the conv had none
    assert_close(ref, outputs(out, feeds))
    assert recs[1].details["fused"] == [{"node": "bn", "into": "conv"}]
    assert recs[-1].summary.params == 8 * 3 * 9 + 8  # the BN statistics are gone


@pytest.mark.parametrize("groups", [1, 2])
def test_fuse_bn_into_convtranspose(groups):
    model = graphs.convtranspose_bn(groups=groups)
    feeds = feeds_for(model)
    ref = outputs(model, feeds)
    out, _ = run_passes(model, "fuse-bn,dce", feeds)
    assert ops(out) == ["ConvTranspose"]
    assert_close(ref, outputs(out, feeds))


@pytest.mark.parametrize("trans_b", [0, 1])
def test_fuse_bn_into_gemm(trans_b):
    model = graphs.gemm_bn(trans_b)
    feeds = feeds_for(model)
    ref = outputs(model, feeds)
    out, _ = run_passes(model, "fuse-bn,dce", feeds)
    assert ops(out) == ["Gemm"]
    assert_close(ref, outputs(out, feeds))


def test_fuse_bn_into_matmul_makes_gemm():
    model = graphs.matmul_bn()
    feeds = feeds_for(model)
    ref = outputs(model, feeds)
    out, _ = run_passes(model, "fuse-bn,dce", feeds)
    assert ops(out) == ["Gemm"]
    assert_close(ref, outputs(out, feeds))


def test_fuse_bn_refuses_shared_conv_output():
    model = graphs.conv_bn_shared()
    out, recs = run_passes(model, "fuse-bn")
    assert sorted(ops(out)) == ["BatchNormalization", "Conv", "Relu"]
    assert recs[1].changed is False


@pytest.mark.parametrize("shape", [(8, 1, 1), (1, 8, 1, 1)])
def test_fuse_bias_per_channel(shape):
    model = graphs.conv_add(shape)
    feeds = feeds_for(model)
    ref = outputs(model, feeds)
    out, _ = run_passes(model, "fuse-bias,dce", feeds)
    assert ops(out) == ["Conv"]
    assert_close(ref, outputs(out, feeds))


def test_fuse_bias_refuses_spatial_constant():
    model = graphs.conv_add((1, 1, 6, 6))
    out, recs = run_passes(model, "fuse-bias")
    assert ops(out) == ["Conv", "Add"]
    assert recs[1].changed is False


def test_fuse_bias_matmul_becomes_gemm():
    model = graphs.matmul_add()
    feeds = feeds_for(model)
    ref = outputs(model, feeds)
    out, _ = run_passes(model, "fuse-bias,dce", feeds)
    assert ops(out) == ["Gemm"]
    assert_close(ref, outputs(out, feeds))


def test_lift_fold_dce_remove_constants_shape_math_identity_dropout():
    model = graphs.constants_and_shapes()
    feeds = feeds_for(model)
    ref = outputs(model, feeds)
    out, recs = run_passes(model, "lift-constants,fold,dce", feeds)
    assert "Constant" not in ops(out) and "ConstantOfShape" not in ops(out)
    assert ops(out) == ["Conv", "Mul", "Reshape"]  # Shape/Gather/Unsqueeze/Concat folded, Identity+Dropout gone
    assert out.graph.outputs[0].name == "y"  # the interface keeps its names
    assert_close(ref, outputs(out, feeds), rtol=0)
    assert recs[0].summary.params == 4 * 3 * 3 * 3  # weights in Constant nodes count as parameters


def test_pass_spec_parsing():
    p = parse_spec("fold:max_elements=10")
    assert p.params == {"max_elements": 10, "rounds": 8}
    with pytest.raises(EdgecError, match="unknown pass 'nope'"):
        parse_spec("nope")
    with pytest.raises(EdgecError, match="wants int"):
        parse_spec("fold:abc")
    with pytest.raises(EdgecError, match="no parameter 'zzz'"):
        parse_spec("fold:zzz=1")
    with pytest.raises(EdgecError, match="too many parameters"):
        parse_spec("fold:1:2:3")


class _BreakOutput(Pass):
    """Test pass: scales the first initializer it finds, claiming to be exact."""

    name = "break"
    exact = True

    def apply(self, model, ctx):
        for v in model.graph.initializers.values():
            if v.const_value is not None and v.const_value.dtype.is_floating_point():
                import onnx_ir as ir

                v.const_value = ir.tensor(v.const_value.numpy() * 1.5)
                return True
        return False


def test_exact_pass_drift_fails_and_keep_going_rolls_back():
    model = graphs.conv_bn()
    feeds = feeds_for(model)
    with pytest.raises(PassFailed, match="exact pass 'break' changed output 'y'"):
        Manager(PassContext(samples=feeds)).run(model, [_BreakOutput()])
    model = graphs.conv_bn()
    mgr = Manager(PassContext(samples=feeds), keep_going=True)
    out = mgr.run(model, [_BreakOutput(), *parse_pipeline("fuse-bn,dce")])
    assert [r.status for r in mgr.records] == ["ok", "rolled-back", "ok", "ok"]
    assert ops(out) == ["Conv"]
    assert mgr.records[-1].drift.max_rel < 1e-5


class _Corrupt(Pass):
    """Test pass: leaves a node reading a tensor nothing produces."""

    name = "corrupt"
    exact = True

    def apply(self, model, ctx):
        import onnx_ir as ir

        node = model.graph.node(0)
        node.replace_input_with(0, ir.Value(name="ghost"))
        return True


def test_invalid_model_raises_with_pass_name():
    model = graphs.conv_bn()
    with pytest.raises(PassFailed, match="pass 'corrupt'"):
        Manager(PassContext(samples=feeds_for(model))).run(model, [_Corrupt()])


def test_ensure_opset_upgrades():
    model = graphs.conv_bn()
    up = model_io.ensure_opset(model, 17)
    assert up.opset_imports[""] == 17


def test_paddle_minus_one_dims_are_dynamic(tmp_path):
    # Paddle writes dim_value -1 for dynamic dims; pinning the input must not leave the output's -1 to clash
    # with the inferred size in the checker (ppocr-cls failed in `fold` this way).
    import onnx
    from onnx import TensorProto, helper

    import edgec

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [-1, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Identity", ["r"], ["y"])],
                              "g", [x], [y])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    path = tmp_path / "paddle_dims.onnx"
    onnx.save(proto, str(path))
    feeds = [{"x": np.ones((2, 4), np.float32)}]
    res = edgec.compile(path, target="cpu-fp32", samples=feeds, shapes={"x": (2, 4)})
    assert [n.op_type for n in res.model.graph] == ["Relu"]
    assert list(res.model.graph.outputs[0].shape) == [2, 4]
