"""Hypothesis strategies for random valid conv nets, built with onnx.helper.

A net is drawn as a ``NetSpec``: plain data (ints, tuples, dicts) describing the layers, plus a seed for
the weights. ``build(spec)`` turns it into a ModelProto. Keeping the description separate from the
proto means a failing example prints as a copyable literal, which is how regressions are kept (see
REGRESSIONS in tests/test_fuzz.py): shrinking works on structure, and the weights are reproducible.

What is covered: Conv with random channels, kernel sizes, strides, dilations, groups (including
depthwise), symmetric and asymmetric pads or auto_pad; BatchNormalization after some convs (random
positive variance) and standalone; a constant Add after some convs in every broadcast form (per
channel, scalar, spatial); residual Adds; Concats of branches; ConvTranspose; activations; pooling;
Identity/Dropout; weights held in Constant nodes; intermediate tensors that are also graph outputs;
Gemm / MatMul heads behind Flatten, Reshape or a foldable Shape->Gather->Concat->Reshape, with BN or
bias Adds after them; a symbolic batch dim; opsets 13-17.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import onnx
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

ACTIVATIONS = ("none", "Relu", "Sigmoid", "Tanh", "LeakyRelu", "Clip", "HardSigmoid", "HardSwish", "Elu")
# Broadcast forms of a constant added after a 4-D weighted op: the first three are per-channel (or
# uniform) and fusable into the bias; "hw" and "full" vary over space and must be left alone.
ADD_FORMS = ("c11", "1c11", "scalar", "scalar0d", "hw", "full")


@dataclasses.dataclass(frozen=True)
class NetSpec:
    opset: int
    batch: int
    channels: int
    height: int
    width: int
    blocks: tuple[dict[str, Any], ...]
    head: dict[str, Any] | None
    seed: int
    dynamic_batch: bool = False


# -- strategies -------------------------------------------------------------------------------------

def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _out_dim(size: int, k: int, stride: int, dilation: int, pad: int) -> int:
    return (size + pad - dilation * (k - 1) - 1) // stride + 1


@st.composite
def conv_block(draw: st.DrawFn, cin: int, h: int, w: int, opset: int, same: bool = False) -> dict[str, Any]:
    """A Conv (+ optional BN, constant Add, activation) valid for a [N, cin, h, w] input.

    ``same`` keeps the spatial size (stride 1, odd kernel, centred pads): for residuals and Concat.
    """
    group = draw(st.sampled_from(_divisors(cin)))
    per_group = draw(st.integers(1, max(1, 8 // group)))
    cout = group * per_group
    if draw(st.booleans()) and cin > 1 and not same:
        group, cout = cin, cin * draw(st.integers(1, 2))  # depthwise (multiplier 1 or 2)
    if same:
        kh = draw(st.sampled_from([k for k in (1, 3, 5) if k <= h] or [1]))
        kw = draw(st.sampled_from([k for k in (1, 3, 5) if k <= w] or [1]))
        stride, dilation = 1, 1
        pads = (kh // 2, kw // 2, kh // 2, kw // 2)
        auto_pad = None
    else:
        stride = draw(st.sampled_from((1, 1, 2, 3)))
        dilation = draw(st.sampled_from((1, 1, 1, 2)))
        kh = draw(st.integers(1, 5))
        kw = draw(st.sampled_from((kh, draw(st.integers(1, 5)))))
        auto_pad = draw(st.sampled_from((None, None, None, "SAME_UPPER", "SAME_LOWER", "VALID")))
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            dilation = 1  # ORT: "Dilation not supported for AutoPadType::SAME_*"
        if auto_pad is None:
            pads = tuple(draw(st.integers(0, max(0, k - 1))) for k in (kh, kw, kh, kw))
        else:
            pads = (0, 0, 0, 0)
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            oh, ow = -(-h // stride), -(-w // stride)
        else:
            oh = _out_dim(h, kh, stride, dilation, pads[0] + pads[2])
            ow = _out_dim(w, kw, stride, dilation, pads[1] + pads[3])
        if oh < 1 or ow < 1:
            # Too big a receptive field for this input: fall back to a 1x1 conv.
            kh = kw = stride = dilation = 1
            pads, auto_pad = (0, 0, 0, 0), None
    return {
        "kind": "conv", "out": cout, "k": (kh, kw), "stride": stride, "dilation": dilation, "group": group,
        "pads": pads, "auto_pad": auto_pad, "bias": draw(st.booleans()),
        "bn": draw(st.booleans()), "add": draw(st.sampled_from((None, None) + ADD_FORMS)),
        "act": _act(draw, opset), "const_weights": draw(st.integers(0, 4)) == 0,
        "extra_output": draw(st.integers(0, 7)) == 0,
    }


def _act(draw: st.DrawFn, opset: int) -> str:
    act = draw(st.sampled_from(ACTIVATIONS))
    return "Relu" if act == "HardSwish" and opset < 14 else act


def conv_shape(block: dict[str, Any], h: int, w: int) -> tuple[int, int, int]:
    kh, kw = block["k"]
    s, d = block["stride"], block["dilation"]
    if block["auto_pad"] in ("SAME_UPPER", "SAME_LOWER"):
        return block["out"], -(-h // s), -(-w // s)
    p = block["pads"]
    return block["out"], _out_dim(h, kh, s, d, p[0] + p[2]), _out_dim(w, kw, s, d, p[1] + p[3])


@st.composite
def net_specs(draw: st.DrawFn, max_blocks: int = 5) -> NetSpec:
    opset = draw(st.integers(13, 17))
    batch = draw(st.integers(1, 3))
    c, h, w = draw(st.integers(1, 8)), draw(st.integers(3, 14)), draw(st.integers(3, 14))
    channels, height, width = c, h, w
    blocks: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(1, max_blocks))):
        kind = draw(st.sampled_from(("conv", "conv", "conv", "residual", "concat", "bn", "act", "pool", "noop",
                                     "convT")))
        if kind == "conv":
            b = draw(conv_block(c, h, w, opset))
            c, h, w = conv_shape(b, h, w)
        elif kind == "residual":
            b = draw(conv_block(c, h, w, opset, same=True))
            b = {**b, "kind": "residual", "out": c, "group": draw(st.sampled_from(_divisors(c)))}
        elif kind == "concat":
            branches = [draw(conv_block(c, h, w, opset, same=True)) for _ in range(draw(st.integers(2, 3)))]
            b = {"kind": "concat", "branches": branches}
            c = sum(br["out"] for br in branches)
        elif kind == "bn":
            b = {"kind": "bn"}
        elif kind == "act":
            b = {"kind": "act", "act": _act(draw, opset)}
        elif kind == "pool":
            if h < 2 or w < 2:
                continue
            b = {"kind": "pool", "op": draw(st.sampled_from(("MaxPool", "AveragePool")))}
            h, w = h // 2, w // 2
        elif kind == "noop":
            b = {"kind": "noop", "op": draw(st.sampled_from(("Identity", "Dropout")))}
        else:
            group = draw(st.sampled_from(_divisors(c)))
            out = group * draw(st.integers(1, max(1, 6 // group)))
            stride = draw(st.sampled_from((1, 2)))
            k = draw(st.integers(1, 3))
            b = {"kind": "convT", "out": out, "group": group, "stride": stride, "k": k, "bias": draw(st.booleans()),
                 "bn": draw(st.booleans()), "add": draw(st.sampled_from((None, "c11", "1c11", "hw")))}
            c, h, w = out, (h - 1) * stride + k, (w - 1) * stride + k
        blocks.append(b)
    head = None
    if draw(st.booleans()):
        head = {
            "kind": draw(st.sampled_from(("gemm", "matmul"))),
            "pool": draw(st.booleans()),
            "flatten": draw(st.sampled_from(("Flatten", "Reshape", "ShapeReshape"))),
            "units": draw(st.integers(1, 12)),
            "transB": draw(st.booleans()),
            "alpha": draw(st.sampled_from((1.0, 0.5, 2.0))),
            "beta": draw(st.sampled_from((1.0, 0.5))),
            "bias": draw(st.sampled_from(("none", "vec", "row", "scalar", "full"))),
            "bn": draw(st.booleans()),
            "add": draw(st.sampled_from((None, "vec", "row", "scalar"))),
        }
    return NetSpec(opset=opset, batch=batch, channels=channels, height=height, width=width, blocks=tuple(blocks),
                   head=head, seed=draw(st.integers(0, 2**31 - 1)), dynamic_batch=draw(st.integers(0, 3)) == 0)


# -- building ---------------------------------------------------------------------------------------

class _Builder:
    def __init__(self, spec: NetSpec) -> None:
        self.rng = np.random.default_rng(spec.seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.extra_outputs: list[tuple[str, list[int | str]]] = []
        self.batch_dim: int | str = "N" if spec.dynamic_batch else spec.batch
        self.opset = spec.opset
        self.batch = spec.batch
        self._n = 0

    def name(self, base: str) -> str:
        self._n += 1
        return f"{base}_{self._n}"

    def const(self, array: np.ndarray, base: str, as_node: bool = False) -> str:
        name = self.name(base)
        tensor = numpy_helper.from_array(np.asarray(array), name)
        if as_node:
            self.nodes.append(helper.make_node("Constant", [], [name], name=self.name("const"), value=tensor))
        else:
            self.inits.append(tensor)
        return name

    def node(self, op: str, inputs: list[str], **attrs: Any) -> str:
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=self.name(op), **attrs))
        return out

    def weights(self, shape: tuple[int, ...], fan_in: int) -> np.ndarray:
        # He-like scale keeps activations O(1) through a few layers, so relative errors stay meaningful.
        return (self.rng.standard_normal(shape) / np.sqrt(max(fan_in, 1))).astype(np.float32)

    def vec(self, n: int, scale: float = 0.5) -> np.ndarray:
        return (self.rng.standard_normal(n) * scale).astype(np.float32)

    def bn(self, x: str, c: int) -> str:
        gamma = self.rng.uniform(0.5, 1.5, c).astype(np.float32)
        beta = self.vec(c)
        mean = self.vec(c)
        var = self.rng.uniform(0.05, 2.0, c).astype(np.float32)  # positive, as trained statistics are
        eps = float(self.rng.choice([1e-5, 1e-3]))
        ins = [self.const(a, n) for a, n in ((gamma, "gamma"), (beta, "beta"), (mean, "mean"), (var, "var"))]
        return self.node("BatchNormalization", [x, *ins], epsilon=eps)

    def act(self, x: str, act: str) -> str:
        if act == "none":
            return x
        if act == "LeakyRelu":
            return self.node(act, [x], alpha=0.1)
        if act == "Clip":
            lo, hi = self.const(np.array(0.0, np.float32), "lo"), self.const(np.array(6.0, np.float32), "hi")
            return self.node(act, [x, lo, hi])
        return self.node(act, [x])

    def add_const(self, x: str, form: str | None, c: int, h: int, w: int) -> str:
        if form is None:
            return x
        shapes = {"c11": (c, 1, 1), "1c11": (1, c, 1, 1), "scalar": (1,), "scalar0d": (), "hw": (1, 1, h, w),
                  "full": (1, c, h, w), "vec": (c,), "row": (1, c)}
        k = self.const(self.vec(int(np.prod(shapes[form]))).reshape(shapes[form]), "addc")
        ins = [x, k] if self.rng.integers(2) else [k, x]  # the constant on either side of the Add
        return self.node("Add", ins)

    def conv(self, x: str, cin: int, h: int, w: int, b: dict[str, Any]) -> tuple[str, int, int, int]:
        kh, kw = b["k"]
        g = b["group"]
        wname = self.const(self.weights((b["out"], cin // g, kh, kw), cin // g * kh * kw), "W", b["const_weights"])
        ins = [x, wname] + ([self.const(self.vec(b["out"]), "B")] if b["bias"] else [])
        attrs: dict[str, Any] = {"kernel_shape": [kh, kw], "strides": [b["stride"]] * 2,
                                 "dilations": [b["dilation"]] * 2, "group": g}
        if b["auto_pad"]:
            attrs["auto_pad"] = b["auto_pad"]
        else:
            attrs["pads"] = list(b["pads"])
        y = self.node("Conv", ins, **attrs)
        c, oh, ow = conv_shape(b, h, w)
        if b["extra_output"]:
            # A second reader: BN/Add must not be folded into this conv.
            self.extra_outputs.append((y, [self.batch_dim, c, oh, ow]))
        if b["bn"]:
            y = self.bn(y, c)
        y = self.add_const(y, b["add"], c, oh, ow)
        return self.act(y, b["act"]), c, oh, ow


def build(spec: NetSpec) -> onnx.ModelProto:
    """The ModelProto a spec describes (valid: passes onnx.checker full check)."""
    bld = _Builder(spec)
    x = "input"
    c, h, w = spec.channels, spec.height, spec.width
    for b in spec.blocks:
        kind = b["kind"]
        if kind == "conv":
            x, c, h, w = bld.conv(x, c, h, w, b)
        elif kind == "residual":
            y, _, _, _ = bld.conv(x, c, h, w, b)
            x = bld.node("Add", [x, y] if bld.rng.integers(2) else [y, x])
        elif kind == "concat":
            ys = []
            for br in b["branches"]:
                y, _cb, _, _ = bld.conv(x, c, h, w, br)
                ys.append(y)
            x = bld.node("Concat", ys, axis=1)
            c = sum(br["out"] for br in b["branches"])
        elif kind == "bn":
            x = bld.bn(x, c)
        elif kind == "act":
            x = bld.act(x, b["act"])
        elif kind == "pool":
            x = bld.node(b["op"], [x], kernel_shape=[2, 2], strides=[2, 2])
            h, w = h // 2, w // 2
        elif kind == "noop":
            x = bld.node(b["op"], [x])
        elif kind == "convT":
            g, k = b["group"], b["k"]
            wname = bld.const(bld.weights((c, b["out"] // g, k, k), c // g * k * k), "WT")
            ins = [x, wname] + ([bld.const(bld.vec(b["out"]), "BT")] if b["bias"] else [])
            x = bld.node("ConvTranspose", ins, kernel_shape=[k, k], strides=[b["stride"]] * 2, group=g)
            c, h, w = b["out"], (h - 1) * b["stride"] + k, (w - 1) * b["stride"] + k
            if b["bn"]:
                x = bld.bn(x, c)
            x = bld.add_const(x, b["add"], c, h, w)
        else:
            raise ValueError(f"unknown block kind {kind!r}")
    out_shape: list[int | str] = [spec.batch, c, h, w]
    if spec.head is not None:
        x, units = _head(bld, x, c, h, w, spec.head)
        out_shape = [spec.batch, units]
    batch_dim = bld.batch_dim
    out_shape[0] = batch_dim
    graph = helper.make_graph(
        bld.nodes, "fuzz",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                       [batch_dim, spec.channels, spec.height, spec.width])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, out_shape)]
        + [helper.make_tensor_value_info(e, TensorProto.FLOAT, shape) for e, shape in bld.extra_outputs if e != x],
        bld.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", spec.opset)], producer_name="fuzz")
    model.ir_version = 8  # what exporters of opset 13-17 write; ORT and the checker accept it
    return model


def _head(bld: _Builder, x: str, c: int, h: int, w: int, head: dict[str, Any]) -> tuple[str, int]:
    if head["pool"]:
        x = bld.node("GlobalAveragePool", [x])
        h = w = 1
    feat = c * h * w
    if head["flatten"] == "Flatten":
        x = bld.node("Flatten", [x], axis=1)
    elif head["flatten"] == "Reshape":
        x = bld.node("Reshape", [x, bld.const(np.array([0, -1], np.int64), "shape")])
    else:
        # Shape -> Gather(0) -> Unsqueeze -> Concat([n, -1]) -> Reshape: foldable when the batch is static.
        shape = bld.node("Shape", [x])
        n = bld.node("Gather", [shape, bld.const(np.array(0, np.int64), "idx")], axis=0)
        n1 = bld.node("Unsqueeze", [n, bld.const(np.array([0], np.int64), "axes")])
        target = bld.node("Concat", [n1, bld.const(np.array([-1], np.int64), "minus1")], axis=0)
        x = bld.node("Reshape", [x, target])
    units = head["units"]
    if head["kind"] == "gemm":
        wt = bld.weights((units, feat) if head["transB"] else (feat, units), feat)
        ins = [x, bld.const(wt, "Wfc")]
        bias = head["bias"]
        if bias != "none":
            shape = {"vec": (units,), "row": (1, units), "scalar": (1,), "full": (bld.batch, units)}[bias]
            ins.append(bld.const(bld.vec(int(np.prod(shape))).reshape(shape), "Bfc"))
        x = bld.node("Gemm", ins, transB=int(head["transB"]), alpha=head["alpha"], beta=head["beta"])
    else:
        x = bld.node("MatMul", [x, bld.const(bld.weights((feat, units), feat), "Wmm")])
    if head["bn"]:
        x = bld.bn(x, units)
    if head["add"]:
        x = bld.add_const(x, head["add"], units, 1, 1)
    return x, units


def feeds(spec: NetSpec, n: int = 2) -> list[dict[str, np.ndarray]]:
    """``n`` input feeds for a spec (normal noise, reproducible from the spec's seed)."""
    rng = np.random.default_rng(spec.seed + 1)
    shape = (spec.batch, spec.channels, spec.height, spec.width)
    return [{"input": rng.standard_normal(shape).astype(np.float32)} for _ in range(n)]
