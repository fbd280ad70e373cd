"""The pass framework: edgec passes are onnx_ir passes, onnx_ir passes run as edgec passes, and the
manager's checks are instruments around each pass."""

from __future__ import annotations

import graphs
import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto
from onnx import helper as h
from onnx_ir.passes import common

from edgec import instruments, model_io, runtime
from edgec.graph import const_array, set_input_const
from edgec.manager import Manager, PassFailed
from edgec.pass_infra import (
    EdgecPassResult,
    Pass,
    PassContext,
    parse_spec,
    register_ir_pass,
    register_rewrite_rules,
    registry,
)


def feeds_for(model: ir.Model, n: int = 3, seed: int = 1) -> list[dict[str, np.ndarray]]:
    r = np.random.default_rng(seed)
    return [{v.name: r.normal(0, 1, tuple(v.shape)).astype(np.float32) for v in model.graph.inputs}
            for _ in range(n)]


def duplicated_relu() -> ir.Model:
    """x -> Relu -> a, x -> Relu -> b, a + b -> y: two identical nodes CSE merges into one."""
    x = h.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = h.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    nodes = [h.make_node("Relu", ["x"], ["a"], name="r1"), h.make_node("Relu", ["x"], ["b"], name="r2"),
             h.make_node("Add", ["a", "b"], ["y"], name="add")]
    proto = h.make_model(h.make_graph(nodes, "g", [x], [y]), opset_imports=[h.make_opsetid("", 13)])
    proto.ir_version = 8
    return model_io.from_proto(proto)


def test_every_registered_pass_is_an_onnx_ir_in_place_pass():
    for name, cls in registry().items():
        p = parse_spec(name)
        assert isinstance(p, ir.passes.InPlacePass), name
        assert isinstance(p, Pass) and p.in_place and cls.name == name


def test_calling_a_pass_returns_a_result_with_details_and_exactness():
    model = graphs.conv_bn(bias=True)
    p = parse_spec("fuse-bn")
    result = p(model)  # unbound: an empty context, like any onnx_ir pass
    assert isinstance(result, EdgecPassResult) and isinstance(result, ir.passes.PassResult)
    assert result.model is model and result.modified is True and result.exact is True
    assert result.details["fused"] == [{"node": "bn", "into": "conv"}]
    assert [n.op_type for n in model.graph] == ["Conv"]
    # A second run finds nothing to fuse: modified False, details rewritten (not accumulated).
    again = p(model)
    assert again.modified is False and again.details.get("fused", []) == []


def test_bound_context_reaches_the_pass():
    ctx = PassContext(scheme={"precision": "int8"})
    model = graphs.conv_bn(bias=True)
    p = parse_spec("tflite-gelu").bind(ctx)
    result = p(model)
    assert p.context is ctx
    # tflite-gelu reads ctx.scheme: on an int8 target it skips (and says why) instead of fusing.
    assert result.modified is False and "skipped" in result.details


def test_a_pass_run_inside_another_keeps_the_outer_details():
    class Outer(Pass):
        """Writes a detail, runs fuse-bn as an onnx_ir pass on the same context, writes another."""

        name = "outer"

        def apply(self, model: ir.Model, ctx: PassContext) -> bool:
            ctx.details["before"] = 1
            inner = parse_spec("fuse-bn").bind(ctx)(model)
            ctx.details["inner_fused"] = len(inner.details["fused"])
            return inner.modified

    result = Outer()(graphs.conv_bn(bias=True))
    assert result.details == {"before": 1, "inner_fused": 1} and result.modified


def test_onnx_ir_pass_registered_runs_through_the_manager_with_a_record():
    model = duplicated_relu()
    feeds = feeds_for(model)
    ref = runtime.run(runtime.session(model, optimization="disable"), feeds)
    mgr = Manager(PassContext(samples=feeds))
    out = mgr.run(model, [parse_spec("cse"), parse_spec("dce")])
    assert [n.op_type for n in out.graph] == ["Relu", "Add"]
    rec = mgr.records[1]
    assert rec.name == "cse" and rec.changed and rec.exact and rec.params == {"size_limit": 10}
    assert rec.drift is not None and rec.drift.max_abs == 0.0  # checked by the drift instrument
    assert mgr.records[0].summary.nodes == 3 and rec.summary.nodes == 2
    assert rec.diff is not None and len(rec.diff["removed"]) == 1
    got = runtime.run(runtime.session(out, optimization="disable"), feeds)
    np.testing.assert_allclose(got[0]["y"], ref[0]["y"], rtol=1e-6)


def test_register_ir_pass_parses_its_constructor_arguments():
    cls = registry()["dedup-initializers"]
    assert cls.exact and issubclass(cls, Pass)
    p = parse_spec("dedup-initializers:size_limit=16")
    assert p.params == {"size_limit": 16} and p.spec() == "dedup-initializers:size_limit=16"
    with pytest.raises(Exception, match="wants int"):
        parse_spec("dedup-initializers:size_limit=many")


def test_register_ir_pass_from_a_factory_without_parameters():
    cls = register_ir_pass("test-topo-sort", common.TopologicalSortPass, exact=True, doc="Sort topologically.")
    try:
        p = cls()
        assert p.params == {} and p.name == "test-topo-sort"
        model = graphs.conv_bn(bias=True)
        nodes = list(model.graph)
        model.graph.remove(nodes[0])
        model.graph.append(nodes[0])  # Conv after the BN that reads it
        assert p(model).modified is True
        assert [n.op_type for n in model.graph] == ["Conv", "BatchNormalization"]
    finally:
        from edgec import pass_infra

        pass_infra._REGISTRY.pop("test-topo-sort", None)


class Spy(instruments.Instrument):
    """Records what it sees around each pass: the node count before and after, the step's verdicts."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, int, bool]] = []

    def run_before_pass(self, model, step):
        self.seen.append(("before", step.p.name, len(list(model.graph)), step.changed))

    def run_after_pass(self, model, step):
        self.seen.append(("after", step.p.name, len(list(model.graph)), step.changed))


def test_an_instrument_sees_each_pass_before_and_after():
    model = graphs.conv_bn(bias=True)
    spy = Spy()
    mgr = Manager(PassContext(samples=feeds_for(model)), instruments=[spy, instruments.Figures()])
    mgr.run(model, [parse_spec("fuse-bn"), parse_spec("dce")])
    assert spy.seen == [("before", "fuse-bn", 2, False), ("after", "fuse-bn", 1, True),
                        ("before", "dce", 1, False), ("after", "dce", 1, False)]
    # No drift instrument: no reference run, no drift in the records; figures still there.
    assert mgr.reference is None and all(r.drift is None for r in mgr.records)
    assert [r.summary.nodes for r in mgr.records] == [2, 1, 1]


class BreakOutput(Pass):
    """Exact by claim, yet doubles the conv's weights (a broken pass for the checks to catch)."""

    name = "break-output"

    def apply(self, model: ir.Model, ctx: PassContext) -> bool:
        conv = next(n for n in model.graph if n.op_type == "Conv")
        set_input_const(conv, 1, 2 * const_array(conv.inputs[1]))
        return True


def test_validity_only_manager_accepts_what_the_drift_check_rejects():
    model = graphs.conv_bn(bias=True)
    feeds = feeds_for(model)
    with pytest.raises(PassFailed, match="exact pass 'break-output' changed output"):
        Manager(PassContext(samples=feeds)).run(model_io.clone(model), [BreakOutput()])
    # Validity only (how a caller scoring candidates itself builds it): the model is valid, so it passes.
    mgr = Manager(PassContext(samples=feeds), instruments=[instruments.Validity()])
    mgr.run(model_io.clone(model), [BreakOutput()])
    assert mgr.records[-1].status == "ok" and mgr.records[-1].changed


def test_validity_instrument_rejects_an_invalid_model_and_keep_going_rolls_back():
    class Dangling(Pass):
        """Points the output's producer at a value nothing defines (an invalid model)."""

        name = "dangling"

        def apply(self, model: ir.Model, ctx: PassContext) -> bool:
            node = list(model.graph)[-1]
            node.replace_input_with(0, ir.Value(name="nowhere", type=ir.TensorType(ir.DataType.FLOAT)))
            return True

    model = graphs.conv_bn(bias=True)
    mgr = Manager(PassContext(), keep_going=True, instruments=[instruments.Validity(), instruments.Figures()])
    out = mgr.run(model, [Dangling()])
    assert mgr.records[-1].status == "rolled-back" and "invalid model" in mgr.records[-1].message
    onnx.checker.check_model(model_io.to_proto(out), full_check=True)


def test_should_run_skips_a_pass():
    class OnlyDce(instruments.Instrument):
        def should_run(self, model, p):
            return p.name == "dce"

    model = graphs.conv_bn(bias=True)
    mgr = Manager(PassContext(), instruments=[OnlyDce(), instruments.Figures()])
    out = mgr.run(model, [parse_spec("fuse-bn"), parse_spec("dce")])
    assert [r.name for r in mgr.records] == ["input", "dce"]
    assert [n.op_type for n in out.graph] == ["Conv", "BatchNormalization"]


def test_clone_is_independent_and_from_bytes_round_trips():
    model = graphs.conv_bn(bias=True)
    copy = model_io.clone(model)
    parse_spec("fuse-bn")(copy)
    assert [n.op_type for n in model.graph] == ["Conv", "BatchNormalization"]
    assert [n.op_type for n in copy.graph] == ["Conv"]
    data = model_io.to_bytes(model)
    assert model_io.to_bytes(model_io.from_bytes(data)) == data


def test_onnxscript_rewrite_rules_register_and_run_as_a_pass():
    pytest.importorskip("onnxscript", reason="onnxscript is an optional extra (edgec[torch])")
    from onnxscript.rewriter import pattern

    def double_relu(op, x):
        return op.Relu(op.Relu(x))

    def single_relu(op, x):
        return op.Relu(x)

    rule = pattern.RewriteRule(double_relu, single_relu)
    cls = register_rewrite_rules("test-relu-relu", [rule], exact=True, doc="Relu(Relu(x)) -> Relu(x).")
    try:
        x = h.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
        y = h.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
        nodes = [h.make_node("Relu", ["x"], ["a"]), h.make_node("Relu", ["a"], ["y"])]
        proto = h.make_model(h.make_graph(nodes, "g", [x], [y]), opset_imports=[h.make_opsetid("", 13)])
        proto.ir_version = 8
        model = model_io.from_proto(proto)
        mgr = Manager(PassContext(samples=feeds_for(model)))
        out = mgr.run(model, [cls()])
        assert [n.op_type for n in out.graph] == ["Relu"]
        rec = mgr.records[-1]
        assert rec.name == "test-relu-relu" and rec.changed and rec.drift is not None and rec.drift.max_abs == 0.0
    finally:
        from edgec import pass_infra

        pass_infra._REGISTRY.pop("test-relu-relu", None)


def test_cheap_default_set_has_no_drift_and_no_diff():
    model = graphs.conv_bn(bias=True)
    ctx = PassContext(samples=feeds_for(model))
    cheap = instruments.default(ctx, check_drift=False, diff=False)
    assert [type(i).__name__ for i in cheap] == ["Timing", "Validity", "Figures"]
    mgr = Manager(ctx, instruments=cheap)
    mgr.run(model, [parse_spec("fuse-bn")])
    rec = mgr.records[-1]
    assert rec.drift is None and rec.diff is None and rec.summary.nodes == 1 and rec.seconds > 0


def test_a_crashing_non_judging_instrument_is_not_blamed_on_the_pass():
    class Broken(instruments.Instrument):
        def run_after_pass(self, model, step):
            raise OSError("disk full")

    model = graphs.conv_bn(bias=True)
    mgr = Manager(PassContext(), keep_going=True, instruments=[instruments.Figures(), Broken()])
    with pytest.raises(OSError, match="disk full"):  # not rolled back as if fuse-bn had failed
        mgr.run(model, [parse_spec("fuse-bn")])
    assert [r.status for r in mgr.records] == ["ok"]  # the input record only
