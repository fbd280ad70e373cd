"""Small hand-built ONNX graphs for pass tests (onnx.helper), with real numbers from numpy RNGs."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def make(nodes, inputs, outputs, inits, opset: int = 13) -> ir.Model:
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = 8
    # Outputs declared without a shape get the inferred one (the checker wants a full type).
    inferred = onnx.shape_inference.infer_shapes(proto)
    known = {v.name: v for v in [*inferred.graph.value_info, *inferred.graph.output]
             if v.type.tensor_type.HasField("shape")}
    for i, out in enumerate(proto.graph.output):
        if not out.type.tensor_type.HasField("shape") and out.name in known:
            proto.graph.output[i].CopyFrom(known[out.name])
    del proto.graph.value_info[:]
    onnx.checker.check_model(proto, full_check=True)
    return ir.serde.deserialize_model(proto)


def vi(name: str, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def bn_inits(prefix: str, c: int, r: np.random.Generator) -> list[onnx.TensorProto]:
    return [init(f"{prefix}_g", r.uniform(0.5, 2.0, c).astype(np.float32)),
            init(f"{prefix}_b", r.normal(0, 1, c).astype(np.float32)),
            init(f"{prefix}_m", r.normal(0, 1, c).astype(np.float32)),
            init(f"{prefix}_v", r.uniform(0.2, 3.0, c).astype(np.float32))]


def bn_node(prefix: str, x: str, y: str) -> onnx.NodeProto:
    return helper.make_node("BatchNormalization", [x, f"{prefix}_g", f"{prefix}_b", f"{prefix}_m", f"{prefix}_v"],
                            [y], name=prefix, epsilon=1e-3)


def conv_bn(bias: bool = True, seed: int = 0) -> ir.Model:
    r = rng(seed)
    inits = [init("W", r.normal(0, 0.5, (8, 3, 3, 3)).astype(np.float32)), *bn_inits("bn", 8, r)]
    ins = ["x", "W"]
    if bias:
        inits.append(init("B", r.normal(0, 1, 8).astype(np.float32)))
        ins.append("B")
    nodes = [helper.make_node("Conv", ins, ["c"], name="conv", pads=[1, 1, 1, 1], strides=[2, 2]),
             bn_node("bn", "c", "y")]
    return make(nodes, [vi("x", [1, 3, 16, 16])], [vi("y", None)], inits)


def convtranspose_bn(groups: int = 2, seed: int = 0) -> ir.Model:
    r = rng(seed)
    cin, cout = 4, 6
    inits = [init("W", r.normal(0, 0.5, (cin, cout // groups, 2, 2)).astype(np.float32)),
             init("B", r.normal(0, 1, cout).astype(np.float32)), *bn_inits("bn", cout, r)]
    nodes = [helper.make_node("ConvTranspose", ["x", "W", "B"], ["c"], name="convT", strides=[2, 2], group=groups),
             bn_node("bn", "c", "y")]
    return make(nodes, [vi("x", [1, cin, 5, 5])], [vi("y", None)], inits)


def gemm_bn(trans_b: int = 1, seed: int = 0) -> ir.Model:
    r = rng(seed)
    w = r.normal(0, 0.5, (10, 6) if trans_b else (6, 10)).astype(np.float32)
    inits = [init("W", w), init("C", r.normal(0, 1, 10).astype(np.float32)), *bn_inits("bn", 10, r)]
    nodes = [helper.make_node("Gemm", ["x", "W", "C"], ["g"], name="gemm", transB=trans_b, alpha=0.5, beta=2.0),
             bn_node("bn", "g", "y")]
    return make(nodes, [vi("x", [3, 6])], [vi("y", None)], inits)


def matmul_bn(seed: int = 0) -> ir.Model:
    r = rng(seed)
    inits = [init("W", r.normal(0, 0.5, (6, 10)).astype(np.float32)), *bn_inits("bn", 10, r)]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["g"], name="mm"), bn_node("bn", "g", "y")]
    return make(nodes, [vi("x", [3, 6])], [vi("y", None)], inits)


def conv_bn_shared(seed: int = 0) -> ir.Model:
    """Conv output read by both a BN and a Relu: folding would corrupt the Relu branch."""
    r = rng(seed)
    inits = [init("W", r.normal(0, 0.5, (4, 3, 1, 1)).astype(np.float32)), *bn_inits("bn", 4, r)]
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], name="conv"), bn_node("bn", "c", "y"),
             helper.make_node("Relu", ["c"], ["z"], name="relu")]
    return make(nodes, [vi("x", [1, 3, 4, 4])], [vi("y", None), vi("z", None)], inits)


def conv_add(const_shape: tuple[int, ...], seed: int = 0) -> ir.Model:
    r = rng(seed)
    inits = [init("W", r.normal(0, 0.5, (8, 3, 3, 3)).astype(np.float32)),
             init("A", r.normal(0, 1, const_shape).astype(np.float32))]
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["A", "c"], ["y"], name="add")]
    return make(nodes, [vi("x", [1, 3, 6, 6])], [vi("y", None)], inits)


def matmul_add(seed: int = 0) -> ir.Model:
    r = rng(seed)
    inits = [init("W", r.normal(0, 0.5, (6, 5)).astype(np.float32)),
             init("A", r.normal(0, 1, (5,)).astype(np.float32))]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["m"], name="mm"),
             helper.make_node("Add", ["m", "A"], ["y"], name="add")]
    return make(nodes, [vi("x", [2, 6])], [vi("y", None)], inits)


def constants_and_shapes(seed: int = 0) -> ir.Model:
    """Weights in Constant nodes (as Paddle exports them), a ConstantOfShape, and shape arithmetic."""
    r = rng(seed)
    w = r.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Constant", [], ["W"], value=init("w", w)),
        helper.make_node("Conv", ["x", "W"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Constant", [], ["shp"], value=init("s", np.array([4], np.int64))),
        helper.make_node("ConstantOfShape", ["shp"], ["ones"], value=init("v", np.array([0.5], np.float32))),
        helper.make_node("Unsqueeze", ["ones", "axes"], ["ones4"], name="unsq"),
        helper.make_node("Mul", ["c", "ones4"], ["m"], name="mul"),
        helper.make_node("Shape", ["m"], ["ms"], name="shape"),
        helper.make_node("Gather", ["ms", "zero"], ["n"], name="gather", axis=0),
        helper.make_node("Unsqueeze", ["n", "axes0"], ["n1"], name="unsq_n"),
        helper.make_node("Concat", ["n1", "minus1"], ["newshape"], name="cat", axis=0),
        helper.make_node("Reshape", ["m", "newshape"], ["r"], name="reshape"),
        helper.make_node("Identity", ["r"], ["i"], name="ident"),
        helper.make_node("Dropout", ["i"], ["y"], name="drop"),
    ]
    inits = [init("axes", np.array([1, 2], np.int64)), init("zero", np.array(0, np.int64)),
             init("axes0", np.array([0], np.int64)), init("minus1", np.array([-1], np.int64))]
    return make(nodes, [vi("x", [1, 3, 5, 5])], [vi("y", [1, 100])], inits)
