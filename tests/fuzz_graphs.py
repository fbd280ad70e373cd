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
bias Adds after them; a symbolic batch dim; opsets 13-17. And the elementwise forms exporters leave:
Mul/Div/Sub/Add chains with per-channel, scalar or spatial constants on either side, before and after
convs (per-channel affines); HardSwish and HardSigmoid spelled out in every spelling fuse-activation
accepts plus near misses it must leave alone (Clip to 5, alpha 0.2), SE-style gates; Split/Concat;
Resize (nearest, linear); Transpose to NHWC and back around a per-channel constant.

``random_spec(rng)`` draws a small spec from a numpy RNG (the CI run: thousands per job, a fresh seed
each run); ``net_specs()`` is the hypothesis strategy (the slow run, with shrinking).
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


# -- drawing specs ----------------------------------------------------------------------------------
# The same generator runs under hypothesis (the slow run: shrinking) and under a numpy RNG (the CI run:
# thousands of graphs, a fresh seed each run, reproducible from the seed). Both draw through ``Draw``.

class Draw:
    """What the generator asks for: an int in [lo, hi], one of a sequence, a coin flip."""

    def int(self, lo: int, hi: int) -> int:
        raise NotImplementedError

    def choice(self, seq: Any) -> Any:
        seq = list(seq)
        return seq[self.int(0, len(seq) - 1)]

    def bool(self) -> bool:
        return self.int(0, 1) == 1


class RngDraw(Draw):
    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def int(self, lo: int, hi: int) -> int:
        return int(self.rng.integers(lo, hi + 1))


class HypothesisDraw(Draw):
    def __init__(self, draw: st.DrawFn) -> None:
        self.draw = draw

    def int(self, lo: int, hi: int) -> int:
        return int(self.draw(st.integers(lo, hi)))

    def choice(self, seq: Any) -> Any:
        return self.draw(st.sampled_from(list(seq)))


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _out_dim(size: int, k: int, stride: int, dilation: int, pad: int) -> int:
    return (size + pad - dilation * (k - 1) - 1) // stride + 1


def conv_block(d: Draw, cin: int, h: int, w: int, opset: int, same: bool = False) -> dict[str, Any]:
    """A Conv (+ optional BN, constant Add, activation) valid for a [N, cin, h, w] input.

    ``same`` keeps the spatial size (stride 1, odd kernel, centred pads): for residuals and Concat.
    """
    group = d.choice(_divisors(cin))
    per_group = d.int(1, max(1, 8 // group))
    cout = group * per_group
    if d.bool() and cin > 1 and not same:
        group, cout = cin, cin * d.int(1, 2)  # depthwise (multiplier 1 or 2)
    if same:
        kh = d.choice([k for k in (1, 3, 5) if k <= h] or [1])
        kw = d.choice([k for k in (1, 3, 5) if k <= w] or [1])
        stride, dilation = 1, 1
        pads = (kh // 2, kw // 2, kh // 2, kw // 2)
        auto_pad = None
    else:
        stride = d.choice((1, 1, 2, 3))
        dilation = d.choice((1, 1, 1, 2))
        kh = d.int(1, 5)
        kw = d.choice((kh, d.int(1, 5)))
        auto_pad = d.choice((None, None, None, "SAME_UPPER", "SAME_LOWER", "VALID"))
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            dilation = 1  # ORT: "Dilation not supported for AutoPadType::SAME_*"
        if auto_pad is None:
            pads = tuple(d.int(0, max(0, k - 1)) for k in (kh, kw, kh, kw))
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
        "pads": pads, "auto_pad": auto_pad, "bias": d.bool(),
        "bn": d.bool(), "add": d.choice((None, None) + ADD_FORMS),
        "act": _act(d, opset), "const_weights": d.int(0, 4) == 0,
        "extra_output": d.int(0, 7) == 0,
    }


def _act(d: Draw, opset: int) -> str:
    act = d.choice(ACTIVATIONS)
    return "Relu" if act == "HardSwish" and opset < 14 else act


def conv_shape(block: dict[str, Any], h: int, w: int) -> tuple[int, int, int]:
    kh, kw = block["k"]
    s, dl = block["stride"], block["dilation"]
    if block["auto_pad"] in ("SAME_UPPER", "SAME_LOWER"):
        return block["out"], -(-h // s), -(-w // s)
    p = block["pads"]
    return block["out"], _out_dim(h, kh, s, dl, p[0] + p[2]), _out_dim(w, kw, s, dl, p[1] + p[3])


def affine_chain(d: Draw) -> list[tuple[str, str, str]]:
    """1-3 elementwise steps with a constant: (op, form, side). ``form`` is c11 / 1c11 (per channel),
    scalar or hw (varies over space: never foldable); ``side`` "left" puts the constant first
    (Sub(c, x) and Div(c, x) are not affine in x: a pass that folds them is wrong)."""
    return [(d.choice(("Mul", "Mul", "Add", "Sub", "Div")), d.choice(("c11", "1c11", "c11", "scalar", "hw")),
             d.choice(("right", "right", "right", "left"))) for _ in range(d.int(1, 3))]


HSWISH_FORMS = ("clip_div", "clip_mul", "div_first", "mul_first", "hsig", "near_miss_clip", "near_miss_hsig")
HSIG_FORMS = ("clip_div", "clip_mul", "op", "near_miss")


def _block(d: Draw, kind: str, c: int, h: int, w: int, opset: int) -> tuple[dict[str, Any] | None, int, int, int]:
    """One block of ``kind`` for a [N, c, h, w] input, and the shape after it (None: not possible here)."""
    b: dict[str, Any]
    if kind == "conv":
        b = conv_block(d, c, h, w, opset)
        return (b, *conv_shape(b, h, w))
    if kind == "residual":
        b = conv_block(d, c, h, w, opset, same=True)
        return {**b, "kind": "residual", "out": c, "group": d.choice(_divisors(c))}, c, h, w
    if kind == "concat":
        branches = [conv_block(d, c, h, w, opset, same=True) for _ in range(d.int(2, 3))]
        return {"kind": "concat", "branches": branches}, sum(br["out"] for br in branches), h, w
    if kind == "bn":
        return {"kind": "bn"}, c, h, w
    if kind == "act":
        return {"kind": "act", "act": _act(d, opset)}, c, h, w
    if kind == "pool":
        if h < 2 or w < 2:
            return None, c, h, w
        return {"kind": "pool", "op": d.choice(("MaxPool", "AveragePool"))}, c, h // 2, w // 2
    if kind == "noop":
        return {"kind": "noop", "op": d.choice(("Identity", "Dropout"))}, c, h, w
    if kind == "convT":
        group = d.choice(_divisors(c))
        out = group * d.int(1, max(1, 6 // group))
        stride, k = d.choice((1, 2)), d.int(1, 3)
        b = {"kind": "convT", "out": out, "group": group, "stride": stride, "k": k, "bias": d.bool(),
             "bn": d.bool(), "add": d.choice((None, "c11", "1c11", "hw"))}
        return b, out, (h - 1) * stride + k, (w - 1) * stride + k
    if kind == "affine":
        # A per-channel affine chain, then (usually) a conv reading it: fuse-affine folds it before the
        # conv (not across padding), equalize-act rescales it.
        b = {"kind": "affine", "chain": affine_chain(d), "conv": conv_block(d, c, h, w, opset) if d.int(0, 3) else None}
        if b["conv"] is not None:
            return (b, *conv_shape(b["conv"], h, w))
        return b, c, h, w
    if kind == "conv_affine":
        # A conv then a constant chain after it (fuse-affine's "after" side, fuse-bias's Sub).
        b = {"kind": "conv_affine", "conv": {**conv_block(d, c, h, w, opset), "bn": False, "add": None, "act": "none"},
             "chain": affine_chain(d), "act": _act(d, opset)}
        return (b, *conv_shape(b["conv"], h, w))
    if kind == "conv_pair":
        # Conv -> (Relu | LeakyRelu | Clip | nothing) -> Conv, the first read by nothing else: what
        # cross-layer equalization rescales (a Clip only with equalize:clip=split).
        first = {**conv_block(d, c, h, w, opset), "bn": False, "add": None, "extra_output": False,
                 "act": d.choice(("Relu", "Relu", "LeakyRelu", "Clip", "none"))}
        c1, h1, w1 = conv_shape(first, h, w)
        second = conv_block(d, c1, h1, w1, opset)
        return {"kind": "conv_pair", "convs": (first, second)}, *conv_shape(second, h1, w1)
    if kind == "hswish":
        form = d.choice(HSWISH_FORMS)
        return {"kind": "hswish", "form": form, "swap": d.bool()}, c, h, w
    if kind == "hsigmoid":
        return {"kind": "hsigmoid", "form": d.choice(HSIG_FORMS), "gate": d.bool()}, c, h, w
    if kind == "split":
        if c < 2:
            return None, c, h, w
        first = d.int(1, c - 1)
        conv = conv_block(d, first, h, w, opset, same=True) if d.bool() else None
        b = {"kind": "split", "sizes": (first, c - first), "swap": d.bool(), "conv": conv}
        return b, (conv["out"] if conv else first) + c - first, h, w
    if kind == "resize":
        if h * 2 > 16 or w * 2 > 16:
            return None, c, h, w
        return {"kind": "resize", "mode": d.choice(("nearest", "linear"))}, c, h * 2, w * 2
    if kind == "transpose":
        # NCHW -> NHWC, a per-channel constant along the last axis, and back.
        return {"kind": "transpose", "op": d.choice(("Mul", "Add")), "back": True}, c, h, w
    raise ValueError(kind)


KINDS = ("conv", "conv", "conv", "residual", "concat", "bn", "act", "pool", "noop", "convT")
KINDS_ELEMENTWISE = ("affine", "affine", "conv_affine", "conv_affine", "hswish", "hswish", "hsigmoid", "split",
                     "resize", "transpose", "conv_pair", "conv_pair")


def draw_spec(d: Draw, max_blocks: int = 5, max_hw: int = 14, kinds: tuple[str, ...] = KINDS + KINDS_ELEMENTWISE,
              heads: bool = True) -> NetSpec:
    opset = d.int(13, 17)
    batch = d.int(1, 3)
    c, h, w = d.int(1, 8), d.int(3, max_hw), d.int(3, max_hw)
    channels, height, width = c, h, w
    blocks: list[dict[str, Any]] = []
    for _ in range(d.int(1, max_blocks)):
        b, c2, h2, w2 = _block(d, d.choice(kinds), c, h, w, opset)
        if b is None:
            continue
        blocks.append(b)
        c, h, w = c2, h2, w2
    head = None
    if heads and d.bool():
        head = {
            "kind": d.choice(("gemm", "matmul")),
            "pool": d.bool(),
            "flatten": d.choice(("Flatten", "Reshape", "ShapeReshape")),
            "units": d.int(1, 12),
            "transB": d.bool(),
            "alpha": d.choice((1.0, 0.5, 2.0)),
            "beta": d.choice((1.0, 0.5)),
            "bias": d.choice(("none", "vec", "row", "scalar", "full")),
            "bn": d.bool(),
            "add": d.choice((None, "vec", "row", "scalar")),
        }
    return NetSpec(opset=opset, batch=batch, channels=channels, height=height, width=width, blocks=tuple(blocks),
                   head=head, seed=d.int(0, 2**31 - 1), dynamic_batch=d.int(0, 3) == 0)


@st.composite
def net_specs(draw: st.DrawFn, max_blocks: int = 5) -> NetSpec:
    """The hypothesis strategy (shrinks a failure to a small literal): the original conv-net kinds."""
    return draw_spec(HypothesisDraw(draw), max_blocks=max_blocks, kinds=KINDS)


def random_spec(rng: np.random.Generator, max_blocks: int = 4) -> NetSpec:
    """One spec from a numpy RNG, small (at most 10x10 inputs) so thousands run per CI job."""
    return draw_spec(RngDraw(rng), max_blocks=max_blocks, max_hw=10)


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
        elif kind in ELEMENTWISE_BUILDERS:
            x, c, h, w = ELEMENTWISE_BUILDERS[kind](bld, x, c, h, w, b)
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


# -- elementwise blocks (Mul/Div/Sub chains, spelled-out activations, Split, Resize, Transpose) ---------

def _scalar(bld: _Builder, value: float, base: str) -> str:
    return bld.const(np.array(value, np.float32), base)


def _chain(bld: _Builder, x: str, chain: list, c: int, h: int, w: int) -> str:
    shapes = {"c11": (c, 1, 1), "1c11": (1, c, 1, 1), "scalar": (1,), "hw": (1, 1, h, w)}
    for op, form, side in chain:
        shape = shapes[form]
        if op in ("Mul", "Div"):
            # |k| in [0.5, 2], either sign: a scale, never near zero (a division stays well conditioned).
            k = bld.rng.uniform(0.5, 2.0, shape) * bld.rng.choice([-1.0, 1.0], shape)
        else:
            k = bld.rng.standard_normal(shape) * 0.5
        name = bld.const(k.astype(np.float32), "k")
        if op == "Div" and side == "left":
            op = "Mul"  # c / x is not an affine of x and blows up near zero: use the constant-first Mul
        x = bld.node(op, [name, x] if side == "left" else [x, name])
    return x


def _affine(bld: _Builder, x: str, c: int, h: int, w: int, b: dict[str, Any]) -> tuple[str, int, int, int]:
    x = _chain(bld, x, b["chain"], c, h, w)
    if b["conv"] is not None:
        return bld.conv(x, c, h, w, b["conv"])
    return x, c, h, w


def _conv_affine(bld: _Builder, x: str, c: int, h: int, w: int, b: dict[str, Any]) -> tuple[str, int, int, int]:
    x, c, h, w = bld.conv(x, c, h, w, b["conv"])
    x = _chain(bld, x, b["chain"], c, h, w)
    return bld.act(x, b["act"]), c, h, w


def _relu6_of_x_plus_3(bld: _Builder, x: str, hi: float = 6.0) -> str:
    three = _scalar(bld, 3.0, "three")
    t = bld.node("Add", [x, three] if bld.rng.integers(2) else [three, x])
    return bld.node("Clip", [t, _scalar(bld, 0.0, "zero"), _scalar(bld, hi, "six")])


def _conv_pair(bld: _Builder, x: str, c: int, h: int, w: int, b: dict[str, Any]) -> tuple[str, int, int, int]:
    for conv in b["convs"]:
        x, c, h, w = bld.conv(x, c, h, w, conv)
    return x, c, h, w


def _hswish(bld: _Builder, x: str, c: int, h: int, w: int, b: dict[str, Any]) -> tuple[str, int, int, int]:
    form = b["form"]

    def mul(a: str, g: str) -> str:
        return bld.node("Mul", [g, a] if b["swap"] else [a, g])

    if form in ("hsig", "near_miss_hsig"):
        alpha = 1.0 / 6.0 if form == "hsig" else 0.2
        return mul(x, bld.node("HardSigmoid", [x], alpha=alpha, beta=0.5)), c, h, w
    gate = _relu6_of_x_plus_3(bld, x, hi=5.0 if form == "near_miss_clip" else 6.0)
    if form in ("clip_div", "near_miss_clip"):
        y = bld.node("Div", [mul(x, gate), _scalar(bld, 6.0, "six")])
    elif form == "clip_mul":
        y = bld.node("Mul", [mul(x, gate), _scalar(bld, 1.0 / 6.0, "sixth")])
    elif form == "div_first":
        y = mul(x, bld.node("Div", [gate, _scalar(bld, 6.0, "six")]))
    else:  # mul_first
        y = mul(x, bld.node("Mul", [gate, _scalar(bld, 1.0 / 6.0, "sixth")]))
    return y, c, h, w


def _hsigmoid(bld: _Builder, x: str, c: int, h: int, w: int, b: dict[str, Any]) -> tuple[str, int, int, int]:
    src = bld.node("GlobalAveragePool", [x]) if b["gate"] else x  # SE-style gate: x * hsig(pool(x))
    form = b["form"]
    if form == "op":
        g = bld.node("HardSigmoid", [src], alpha=1.0 / 6.0, beta=0.5)
    else:
        r = _relu6_of_x_plus_3(bld, src)
        if form == "clip_mul":
            g = bld.node("Mul", [r, _scalar(bld, 1.0 / 6.0, "sixth")])
        else:
            g = bld.node("Div", [r, _scalar(bld, 5.0 if form == "near_miss" else 6.0, "six")])
    return (bld.node("Mul", [x, g]) if b["gate"] else g), c, h, w


def _split(bld: _Builder, x: str, c: int, h: int, w: int, b: dict[str, Any]) -> tuple[str, int, int, int]:
    a, rest = b["sizes"]
    pa, pb = bld.name("split_a"), bld.name("split_b")
    bld.nodes.append(helper.make_node("Split", [x, bld.const(np.array([a, rest], np.int64), "sizes")], [pa, pb],
                                      name=bld.name("Split"), axis=1))
    ca = a
    if b["conv"] is not None:
        pa, ca, _, _ = bld.conv(pa, a, h, w, b["conv"])
    return bld.node("Concat", [pb, pa] if b["swap"] else [pa, pb], axis=1), ca + rest, h, w


def _resize(bld: _Builder, x: str, c: int, h: int, w: int, b: dict[str, Any]) -> tuple[str, int, int, int]:
    scales = bld.const(np.array([1.0, 1.0, 2.0, 2.0], np.float32), "scales")
    return bld.node("Resize", [x, "", scales], mode=b["mode"]), c, h * 2, w * 2


def _transpose(bld: _Builder, x: str, c: int, h: int, w: int, b: dict[str, Any]) -> tuple[str, int, int, int]:
    t = bld.node("Transpose", [x], perm=[0, 2, 3, 1])
    k = bld.const((bld.rng.uniform(0.5, 2.0, c) if b["op"] == "Mul" else bld.vec(c)).astype(np.float32), "kc")
    t = bld.node(b["op"], [t, k])
    return bld.node("Transpose", [t], perm=[0, 3, 1, 2]), c, h, w


ELEMENTWISE_BUILDERS = {"conv_pair": _conv_pair, "affine": _affine, "conv_affine": _conv_affine, "hswish": _hswish, "hsigmoid": _hsigmoid,
                        "split": _split, "resize": _resize, "transpose": _transpose}
