"""ONNX nodes -> TFLite operators, in NHWC, for fp32, fp16 (fp16 weights + DEQUANTIZE) and full-int8.

The converter walks the (topologically sorted) ONNX graph once. Each ONNX value gets a ``Slot``: the
TFLite tensor that holds it and the layout it is stored in (see layout.py). Consumers ask for a value
in the layout and number type they need; a TRANSPOSE, DEQUANTIZE or requantizing QUANTIZE is emitted
only when that differs from what exists, and at most once per (value, layout, type).

int8 works on a QDQ graph, whoever inserted the QuantizeLinear/DequantizeLinear pairs:
  * a DequantizeLinear of a constant is a quantized weight, read by the op that consumes it;
  * a DequantizeLinear of an activation is an alias of its int8 input (no op);
  * an op runs in int8 when all its activation inputs are int8 and every reader of its output is a
    QuantizeLinear with one (scale, zero point): its output tensor carries that quantization and those
    QuantizeLinear nodes become aliases. Otherwise it runs in float between DEQUANTIZE/QUANTIZE ops,
    like the TFLite converter's fallback for ops without an int8 kernel.
uint8 QDQ (e.g. ONNX Runtime's default activations) is read as int8 with zero point - 128: the real
values are the same.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
import onnx
import onnx_ir as ir
from onnx.reference import ReferenceEvaluator

from edgec.errors import EdgecError
from edgec.graph import attr, consumers, const_array, only_consumer, opset_version, static_shape

from . import layout as L
from .writer import ActFn, BuiltinOp, Builder, Padding, Quant, options

F32 = np.dtype(np.float32)
I8 = np.dtype(np.int8)

# Fixed output quantization of TFLite's int8 kernels for bounded functions (the kernels use lookup
# tables built for exactly these); a different QDQ scale gets a requantizing QUANTIZE after the op.
_Q_SIGMOID = Quant((1.0 / 256,), (-128,))
_Q_TANH = Quant((1.0 / 128,), (0,))


@dataclasses.dataclass
class Slot:
    """Where an ONNX value lives: tensor index, layout, ONNX shape; ``flat`` for a flattened NHWC map
    (TFLite position j holds ONNX feature flat[j]) that only a FULLY_CONNECTED may read."""

    index: int
    perm: L.Perm
    shape: tuple[int, ...]
    flat: np.ndarray | None = None


class Converter:
    def __init__(self, model: ir.Model, precision: str = "fp32", io: str = "float",
                 keep_nchw_io: bool = False) -> None:
        if precision not in ("fp32", "fp16", "int8"):
            raise EdgecError(f"TFLite backend: unknown precision {precision!r}", hint="use fp32, fp16 or int8")
        if io not in ("float", "int8"):
            raise EdgecError(f"TFLite backend: --io must be int8 or float, got {io!r}")
        self.model = model
        self.graph = model.graph
        self.opset = opset_version(model)
        self.precision = precision
        self.int8 = precision == "int8"
        self.io = io
        self.keep_nchw_io = keep_nchw_io
        self.b = Builder(description=f"edgec tflite {precision}")
        self.slots: dict[ir.Value, Slot] = {}
        self.done: set[int] = set()
        self._folded: dict[ir.Value, np.ndarray] = {}
        self._const_cache: dict[ir.Value, np.ndarray | None] = {}
        self._variants: dict[tuple, int] = {}
        self._f16: dict[int, int] = {}

    # ================================================================================================
    def convert(self) -> Builder:
        for v in self.graph.inputs:
            if v.const_value is None or v.is_graph_input():
                self._graph_input(v)
        for node in self.graph:
            if id(node) in self.done:
                continue
            self._node(node)
        for v in self.graph.outputs:
            self.b.outputs.append(self._graph_output(v))
        return self.b

    def _node(self, node: ir.Node) -> None:
        op = node.op_type
        if node.domain not in ("", "ai.onnx"):
            raise EdgecError(f"node '{node.name}': op '{node.domain}::{op}' has no TFLite mapping",
                             hint="only standard ONNX ops are converted")
        if op in ("QuantizeLinear", "DequantizeLinear") and self._quantize_node(node):
            return
        if self._fold(node):
            return
        handler = _HANDLERS.get(op)
        if handler is None:
            raise EdgecError(f"node '{node.name}': op '{op}' has no TFLite mapping",
                             hint="supported ops: " + ", ".join(sorted(_HANDLERS)))
        handler(self, node)

    # -- values ---------------------------------------------------------------------------------------
    def shape(self, v: ir.Value) -> tuple[int, ...]:
        s = static_shape(v)
        if s is None:
            c = self.const(v)
            if c is not None:
                return tuple(c.shape)
            raise EdgecError(f"value '{v.name}' has no static shape",
                             hint="TFLite needs static shapes: fix the input shape (samples set it) and run "
                                  "shape inference")
        return s

    def const(self, v: ir.Value | None) -> np.ndarray | None:
        """Float (or integer) array of a constant value; a DequantizeLinear of a constant is dequantized."""
        if v is None:
            return None
        if v in self._const_cache:
            return self._const_cache[v]
        arr = self._folded.get(v)
        if arr is None:
            arr = const_array(v)
        if arr is None:
            qc = self.qconst(v)
            if qc is not None:
                q, quant = qc
                shape = [1] * q.ndim
                if quant.per_channel:
                    shape[quant.axis] = -1
                s = np.asarray(quant.scale, dtype=np.float32).reshape(shape)
                z = np.asarray(quant.zero_point, dtype=np.float32).reshape(shape)
                arr = ((q.astype(np.float32) - z) * s).astype(np.float32)
        self._const_cache[v] = arr
        return arr

    def qconst(self, v: ir.Value) -> tuple[np.ndarray, Quant] | None:
        """(integer array, quantization) when ``v`` is DequantizeLinear(constant)."""
        p = v.producer()
        if p is None or p.op_type != "DequantizeLinear":
            return None
        data = const_array(p.inputs[0]) if p.inputs[0] is not None else None
        if data is None:
            data = self._folded.get(p.inputs[0])
        if data is None:
            return None
        scale = const_array(p.inputs[1])
        zp = const_array(p.inputs[2]) if len(p.inputs) > 2 and p.inputs[2] is not None else np.zeros((), data.dtype)
        axis = attr(p, "axis", 1)
        axis = axis % data.ndim if data.ndim else 0
        if data.dtype == np.uint8:
            data, zp = (data.astype(np.int16) - 128).astype(np.int8), np.asarray(zp, np.int32) - 128
        return data, Quant.of(scale, zp, axis)

    def is_act(self, v: ir.Value) -> bool:
        return self.const(v) is None

    def slot(self, v: ir.Value) -> Slot:
        if v not in self.slots:
            raise EdgecError(f"value '{v.name}' is used before it is produced",
                             hint="the graph must be topologically sorted")
        return self.slots[v]

    def dtype_of(self, v: ir.Value) -> np.dtype:
        return self.b.info[self.slot(v).index].dtype

    def quant_of(self, v: ir.Value) -> Quant | None:
        return self.b.info[self.slot(v).index].quant

    # -- tensors in a wanted layout / number type -------------------------------------------------------
    def act(self, v: ir.Value, perm: L.Perm | None = None, want: str | None = None) -> int:
        """Tensor index of activation ``v`` in layout ``perm`` and type ``want`` ('float', 'int8', None)."""
        s = self.slot(v)
        if s.flat is not None and perm is not None:
            raise EdgecError(f"value '{v.name}': a flattened NHWC map is read by a non-FullyConnected op")
        perm = s.perm if perm is None else tuple(perm)
        idx = s.index
        if perm != s.perm:
            key = ("T", s.index, perm)
            if key not in self._variants:
                self._variants[key] = self.transpose(s.index, L.between(s.perm, perm), v.name + "_t")
            idx = self._variants[key]
        if want == "float" and self.b.info[idx].dtype != F32:
            key = ("DQ", idx)
            if key not in self._variants:
                out = self.b.tensor(self.b.info[idx].name + "_f", self.b.info[idx].shape, F32)
                self.b.op(BuiltinOp.DEQUANTIZE, [idx], [out])
                self._variants[key] = out
            idx = self._variants[key]
        if want == "int8" and self.b.info[idx].dtype != I8:
            raise AssertionError(f"value {v.name} is not int8")
        return idx

    def transpose(self, idx: int, perm: L.Perm, name: str) -> int:
        info = self.b.info[idx]
        out = self.b.tensor(name, L.shape_in(perm, info.shape), info.dtype, info.quant)
        self.b.op(BuiltinOp.TRANSPOSE, [idx, self.b.i32(name + "_perm", perm)], [out], options("TransposeOptionsT"))
        return out

    def reshape(self, idx: int, shape: Sequence[int], name: str) -> int:
        info = self.b.info[idx]
        out = self.b.tensor(name, tuple(shape), info.dtype, info.quant)
        self.b.op(BuiltinOp.RESHAPE, [idx, self.b.i32(name + "_shape", shape)], [out],
                  options("ReshapeOptionsT", newShape=np.asarray(shape, dtype=np.int32)))
        return out

    def requantize(self, idx: int, quant: Quant, name: str) -> int:
        info = self.b.info[idx]
        if info.quant is not None and info.quant.same(quant):
            return idx
        out = self.b.tensor(name, info.shape, I8, quant)
        self.b.op(BuiltinOp.QUANTIZE, [idx], [out])
        return out

    def fconst(self, name: str, array: np.ndarray) -> int:
        """A float constant; in fp16 it is stored as fp16 and widened by DEQUANTIZE, as the TFLite
        converter's float16 quantization does (XNNPACK folds the pair into fp32 weights at load time)."""
        array = np.asarray(array, dtype=np.float32)
        if self.precision != "fp16":
            return self.b.const(name, array)
        half = self.b.const(name + "_fp16", array.astype(np.float16))
        if half not in self._f16:
            out = self.b.tensor(name, array.shape, F32)
            self.b.op(BuiltinOp.DEQUANTIZE, [half], [out])
            self._f16[half] = out
        return self._f16[half]

    def operand(self, v: ir.Value, perm: L.Perm, rank: int, q: Quant | None) -> int:
        """An input of an elementwise op, broadcast-ready in layout ``perm`` (rank ``rank``)."""
        c = self.const(v)
        if c is None:
            s = self.slot(v)
            if len(s.shape) == rank:
                return self.act(v, perm, "int8" if q else "float")
            idx = self.act(v, L.identity(len(s.shape)), "int8" if q else "float")
            full = (1,) * (rank - len(s.shape)) + s.shape
            idx = self.reshape(idx, full, v.name + "_r")
            return self.transpose(idx, perm, v.name + "_rt") if perm != L.identity(rank) else idx
        c = np.transpose(c.reshape((1,) * (rank - c.ndim) + c.shape), perm)
        name = v.name or "c"
        if q is None:
            return self.fconst(name, c)
        qc = self.qconst(v)
        if qc is not None and not qc[1].per_channel and qc[0].dtype == I8:
            arr = np.transpose(qc[0].reshape(c.shape if qc[0].size == c.size else (1,) * rank), perm) \
                if qc[0].ndim == rank else qc[0].reshape(c.shape)
            return self.b.const(name, arr, Quant(qc[1].scale, qc[1].zero_point))
        arr, quant = quantize_tensor(c)
        return self.b.const(name, arr, quant)

    # -- outputs --------------------------------------------------------------------------------------
    def emit(self, code: int, ins: list[int], out_v: ir.Value, perm: L.Perm, q: Quant | None, opts=None,
             required: Quant | None = None, shape: tuple[int, ...] | None = None) -> int:
        """Append op ``code`` writing ONNX value ``out_v`` (layout ``perm``; int8 with ``q`` or float).

        ``required``: the output quantization the int8 kernel insists on; when the QDQ graph chose
        another, the op writes ``required`` and a QUANTIZE converts to ``q``.
        """
        shape = shape or self.shape(out_v)
        tshape = L.shape_in(perm, shape)
        final = self.b.tensor(out_v.name or "t", tshape, I8 if q else F32, q)
        if q is not None and required is not None and not required.same(q):
            mid = self.b.tensor((out_v.name or "t") + "_k", tshape, I8, required)
            self.b.op(code, ins, [mid], opts)
            self.b.op(BuiltinOp.QUANTIZE, [mid], [final])
        else:
            self.b.op(code, ins, [final], opts)
        self.slots[out_v] = Slot(final, perm, shape)
        return final

    def out_quant(self, v: ir.Value) -> Quant | None:
        """The int8 quantization every reader of ``v`` applies (all readers are QuantizeLinear), else None."""
        if not self.int8 or v.is_graph_output():
            return None
        users = consumers(v)
        if not users:
            return None
        found: Quant | None = None
        for u in users:
            if u.op_type != "QuantizeLinear" or u.inputs[0] is not v:
                return None
            q = self.q_params(u)
            if q is None or (found is not None and not found.same(q)):
                return None
            found = q
        return found

    def q_params(self, qnode: ir.Node) -> Quant | None:
        scale = self.const(qnode.inputs[1])
        zp_v = qnode.inputs[2] if len(qnode.inputs) > 2 else None
        zp = self.const(zp_v) if zp_v is not None else np.zeros((), np.uint8)
        if scale is None or zp is None or scale.size != 1:
            return None
        if zp.dtype == np.uint8:
            return Quant.of(scale, int(zp) - 128)
        if zp.dtype != np.int8:
            return None
        return Quant.of(scale, zp)

    def quant_mode(self, acts: Sequence[ir.Value], out_v: ir.Value) -> Quant | None:
        """Output quantization when the op can run in int8, else None (run in float)."""
        if not self.int8:
            return None
        if not all(self.dtype_of(v) == I8 for v in acts):
            return None
        return self.out_quant(out_v)

    def fused_act(self, v: ir.Value) -> tuple[int, ir.Value, list[ir.Node]]:
        """An activation reading only ``v`` that TFLite can fuse into the producing op:
        (fused function, the value the fused op then writes, the nodes it absorbs). In a QDQ graph a
        Q -> DQ pair between the op and the activation is looked through."""
        node = only_consumer(v)
        chain: list[ir.Node] = []
        if node is not None and self.int8 and node.op_type == "QuantizeLinear":
            dq = only_consumer(node.outputs[0])
            nxt = only_consumer(dq.outputs[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if nxt is not None and activation_kind(self, nxt) is not None:
                chain, node = [node, dq], nxt
        kind = activation_kind(self, node) if node is not None else None
        if node is None or kind is None:
            return ActFn.NONE, v, []
        return kind, node.outputs[0], [*chain, node]

    def absorb(self, nodes: list[ir.Node]) -> None:
        self.done.update(id(n) for n in nodes)

    # -- graph boundary --------------------------------------------------------------------------------
    def _graph_input(self, v: ir.Value) -> None:
        shape = self.shape(v)
        if v.dtype != ir.DataType.FLOAT:
            raise EdgecError(f"graph input '{v.name}' is {v.dtype}; the TFLite backend takes float inputs")
        perm = L.identity(len(shape)) if self.keep_nchw_io else L.preferred(len(shape))
        q = self.out_quant(v) if self.io == "int8" else None
        idx = self.b.tensor(v.name, L.shape_in(perm, shape), I8 if q else F32, q)
        self.b.inputs.append(idx)
        self.slots[v] = Slot(idx, perm, shape)

    def _graph_output(self, v: ir.Value) -> int:
        s = self.slot(v)
        if s.flat is not None:
            raise EdgecError(f"graph output '{v.name}' is a flattened NHWC map")
        perm = L.identity(len(s.shape)) if self.keep_nchw_io else L.preferred(len(s.shape))
        want = "float" if (self.io == "float" or not self.int8) else None
        idx = self.act(v, perm, want)
        if idx in self.b.inputs or idx in self.b.outputs:
            # An output that is also an input (or listed twice) still needs its own tensor.
            info = self.b.info[idx]
            out = self.b.tensor(v.name, info.shape, info.dtype, info.quant)
            self.b.op(BuiltinOp.RESHAPE, [idx, self.b.i32(v.name + "_shape", info.shape)], [out],
                      options("ReshapeOptionsT", newShape=np.asarray(info.shape, dtype=np.int32)))
            idx = out
        self.b.tensors[idx].name = v.name
        return idx

    # -- constant folding ------------------------------------------------------------------------------
    def _fold(self, node: ir.Node) -> bool:
        """Evaluate a node whose inputs are all constant (shape arithmetic left by the exporter)."""
        if node.op_type == "Shape" and node.inputs[0] is not None and static_shape(node.inputs[0]) is not None:
            shape = np.asarray(static_shape(node.inputs[0]), dtype=np.int64)
            start, end = attr(node, "start", 0), attr(node, "end", None)
            self._folded[node.outputs[0]] = shape[start:end]
            return True
        if node.op_type in ("Constant",):
            self._folded[node.outputs[0]] = const_array(node.outputs[0])
            return True
        ins = [v for v in node.inputs if v is not None]
        if not ins or any(self.const(v) is None for v in ins):
            return False
        proto = ir.serde.serialize_node(node)
        names = [v.name or f"in{i}" for i, v in enumerate(node.inputs) if v is not None]
        feeds = {n: self.const(v) for n, v in zip(names, ins)}
        graph = onnx.helper.make_graph(
            [proto], "fold", [onnx.helper.make_tensor_value_info(n, onnx.helper.np_dtype_to_tensor_dtype(a.dtype),
                                                                 a.shape) for n, a in feeds.items()],
            [onnx.helper.make_tensor_value_info(o.name, onnx.TensorProto.UNDEFINED, None) for o in node.outputs])
        m = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", self.opset)])
        results = ReferenceEvaluator(m).run(None, feeds)
        for o, r in zip(node.outputs, results):
            self._folded[o] = np.asarray(r)
        return True

    # -- Q / DQ -----------------------------------------------------------------------------------------
    def _quantize_node(self, node: ir.Node) -> bool:
        x, out = node.inputs[0], node.outputs[0]
        if self.const(x) is not None and node.op_type == "DequantizeLinear":
            return True  # a quantized weight: its reader takes it through qconst()/const()
        if self.const(x) is not None:
            return False  # Q of a constant: fold it
        if node.op_type == "DequantizeLinear":
            self.slots[out] = self.slot(x)  # int8 activation read as its real value: an alias
            return True
        q = self.q_params(node)
        if q is None:
            raise EdgecError(f"node '{node.name}': QuantizeLinear to a non-int8 type or per-axis activation "
                             "scale has no TFLite full-integer form")
        s = self.slot(x)
        info = self.b.info[s.index]
        if info.dtype == I8 and info.quant is not None and info.quant.same(q):
            self.slots[out] = s
            return True
        if s.flat is not None:
            raise EdgecError(f"node '{node.name}': cannot quantize a flattened NHWC map")
        idx = self.b.tensor(out.name or "q", info.shape, I8, q)
        self.b.op(BuiltinOp.QUANTIZE, [s.index], [idx])
        self.slots[out] = Slot(idx, s.perm, s.shape)
        return True

    # -- weights ---------------------------------------------------------------------------------------
    def int8_weights(self, v: ir.Value, axis: int) -> tuple[np.ndarray, np.ndarray]:
        """Symmetric int8 weights with one scale per index of ``axis`` (TFLite requires zero point 0).

        The QDQ graph's own integers are kept when they already have that form; otherwise the real
        weights are requantized (e.g. per-tensor or asymmetric weights)."""
        qc = self.qconst(v)
        if qc is not None and qc[0].dtype == I8 and not any(qc[1].zero_point):
            arr, quant = qc
            if quant.per_channel and quant.axis == axis:
                return arr, np.asarray(quant.scale, dtype=np.float64)
            if not quant.per_channel:
                return arr, np.full(arr.shape[axis], quant.scale[0], dtype=np.float64)
        w = self.const(v)
        assert w is not None
        red = tuple(i for i in range(w.ndim) if i != axis)
        amax = np.max(np.abs(w), axis=red) if red else np.abs(w)
        scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float64)
        shape = [1] * w.ndim
        shape[axis] = -1
        arr = np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(np.int8)
        return arr, scale

    def bias(self, v: ir.Value | None, n: int, q_in: Quant | None, w_scale: np.ndarray | None,
             name: str) -> int:
        """Bias input: float (fp32/fp16) or int32 with scale s_in * s_w per channel, as TFLite requires."""
        if v is None:
            return -1
        real = self.const(v)
        if real is None:
            raise EdgecError(f"bias '{v.name}' is not constant")
        real = np.broadcast_to(real.reshape(-1), (n,)).astype(np.float32)
        if q_in is None or w_scale is None:
            return self.fconst(name, real)
        scale = q_in.scale[0] * w_scale
        qc = self.qconst(v)
        if qc is not None and qc[0].dtype == np.int32 and np.allclose(
                np.broadcast_to(np.asarray(qc[1].scale), (n,)), scale, rtol=1e-4):
            ints = np.broadcast_to(qc[0].reshape(-1), (n,)).astype(np.int32)
        else:
            ints = np.clip(np.round(real / scale), -(2**31), 2**31 - 1).astype(np.int32)
        return self.b.const(name, ints, Quant(tuple(scale.tolist()), (0,) * n, 0))

    def weight_tensor(self, v: ir.Value, q: bool, onnx_axis: int, perm: L.Perm, name: str,
                      transform: Callable[[np.ndarray], np.ndarray] | None = None) -> tuple[int, np.ndarray | None]:
        """Weights re-laid out by ``perm`` (then ``transform``, an index-only rewrite); int8 per channel
        along ONNX axis ``onnx_axis`` when ``q``. Returns (tensor index, per-channel scales or None)."""
        if q:
            arr, scale = self.int8_weights(v, onnx_axis)
            arr = np.transpose(arr, perm)
            if transform is not None:
                arr = transform(arr)
            quant = Quant(tuple(scale.tolist()), (0,) * len(scale), perm.index(onnx_axis))
            return self.b.const(name, np.ascontiguousarray(arr), quant), scale
        w = self.const(v)
        if w is None:
            raise EdgecError(f"weights '{v.name}' are not constant")
        arr = np.transpose(w, perm)
        if transform is not None:
            arr = transform(arr)
        return self.fconst(name, np.ascontiguousarray(arr)), None


# ================================================================================================
# helpers shared by handlers
def quantize_tensor(c: np.ndarray) -> tuple[np.ndarray, Quant]:
    """Per-tensor asymmetric int8 of a float constant (range widened to include 0, as TFLite requires)."""
    lo, hi = min(float(c.min()), 0.0), max(float(c.max()), 0.0)
    scale = (hi - lo) / 255.0 if hi > lo else 1.0
    zp = int(np.clip(round(-128 - lo / scale), -128, 127))
    arr = np.clip(np.round(c / scale) + zp, -128, 127).astype(np.int8)
    return arr, Quant((scale,), (zp,))


def clip_bounds(cv: Converter, node: ir.Node) -> tuple[float, float]:
    if cv.opset < 11:
        return float(attr(node, "min", -np.inf)), float(attr(node, "max", np.inf))
    lo = cv.const(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else None
    hi = cv.const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
    return (float(lo) if lo is not None else -np.inf), (float(hi) if hi is not None else np.inf)


def activation_kind(cv: Converter, node: ir.Node) -> int | None:
    """The TFLite fused activation equal to ``node``, or None."""
    if node.op_type == "Relu":
        return ActFn.RELU
    if node.op_type == "Clip":
        if len(node.inputs) > 1 and any(v is not None and cv.const(v) is None for v in node.inputs[1:]):
            return None
        bounds = clip_bounds(cv, node)
        return {(0.0, 6.0): ActFn.RELU6, (-1.0, 1.0): ActFn.RELU_N1_TO_1, (0.0, np.inf): ActFn.RELU}.get(bounds)
    return None


def ints(node: ir.Node, name: str, n: int, default: int) -> list[int]:
    v = attr(node, name, None)
    return [int(x) for x in v] if v is not None else [default] * n


# ================================================================================================
# handlers
def conv(cv: Converter, node: ir.Node) -> None:
    x, w = node.inputs[0], node.inputs[1]
    bias_v = node.inputs[2] if len(node.inputs) > 2 else None
    xs = cv.shape(x)
    wshape = cv.shape(w)
    if len(xs) != 4:
        raise EdgecError(f"node '{node.name}': Conv on a rank-{len(xs)} input has no TFLite mapping",
                         hint="only 2-D convolutions (NCHW) are converted")
    kernel = wshape[2:]
    strides, dil = ints(node, "strides", 2, 1), ints(node, "dilations", 2, 1)
    pads = L.onnx_pads(attr(node, "auto_pad", "NOTSET"), xs[2:], kernel, strides, dil, attr(node, "pads", None))
    group = attr(node, "group", 1)
    act_fn, out_v, fused = cv.fused_act(node.outputs[0])
    q = cv.quant_mode([x], out_v)
    q_in = cv.quant_of(x) if q else None
    xin = cv.act(x, L.NHWC, "int8" if q else "float")
    padding = L.tflite_padding(xs[2:], kernel, strides, dil, pads)
    if padding is None:
        xin = pad_nhwc(cv, xin, pads, node.name, None)
        padding = "VALID"
    pad_code = Padding.SAME if padding == "SAME" else Padding.VALID
    c_in, c_out = xs[1], wshape[0]
    if group == 1:
        wt, ws = cv.weight_tensor(w, bool(q), 0, (0, 2, 3, 1), f"{node.name}_w")
        bt = cv.bias(bias_v, c_out, q_in, ws, f"{node.name}_b")
        opts = options("Conv2DOptionsT", padding=pad_code, strideH=strides[0], strideW=strides[1],
                       dilationHFactor=dil[0], dilationWFactor=dil[1], fusedActivationFunction=act_fn)
        cv.emit(BuiltinOp.CONV_2D, [xin, wt, bt], out_v, L.NHWC, q, opts)
    elif group == c_in and c_out % c_in == 0:
        # Depthwise: ONNX [C*m, 1, kh, kw] -> TFLite [1, kh, kw, C*m], output channel c*m + j reads
        # input channel c in both (channel multiplier m).
        wt, ws = cv.weight_tensor(w, bool(q), 0, (1, 2, 3, 0), f"{node.name}_w")
        bt = cv.bias(bias_v, c_out, q_in, ws, f"{node.name}_b")
        opts = options("DepthwiseConv2DOptionsT", padding=pad_code, strideH=strides[0], strideW=strides[1],
                       dilationHFactor=dil[0], dilationWFactor=dil[1], depthMultiplier=c_out // c_in,
                       fusedActivationFunction=act_fn)
        cv.emit(BuiltinOp.DEPTHWISE_CONV_2D, [xin, wt, bt], out_v, L.NHWC, q, opts)
    else:
        grouped_conv(cv, node, xin, group, pad_code, strides, dil, act_fn, out_v, q, q_in)
    cv.absorb(fused)


def grouped_conv(cv: Converter, node: ir.Node, xin: int, group: int, pad_code: int, strides: list[int],
                 dil: list[int], act_fn: int, out_v: ir.Value, q: Quant | None, q_in: Quant | None) -> None:
    """Grouped convolution as SPLIT -> one CONV_2D per group -> CONCATENATION (XNNPACK and the
    reference kernels handle CONV_2D with groups unevenly, the split form everywhere)."""
    w, bias_v = node.inputs[1], node.inputs[2] if len(node.inputs) > 2 else None
    info = cv.b.info[xin]
    c_out = cv.shape(w)[0]
    og = c_out // group
    parts = [cv.b.tensor(f"{node.name}_in{g}", info.shape[:3] + (info.shape[3] // group,), info.dtype, info.quant)
             for g in range(group)]
    cv.b.op(BuiltinOp.SPLIT, [cv.b.i32(f"{node.name}_axis", 3), xin], parts, options("SplitOptionsT", numSplits=group))
    out_shape = L.shape_in(L.NHWC, cv.shape(out_v))
    w_full = cv.const(w)
    assert w_full is not None
    outs = []
    if q:
        w_int, w_scale = cv.int8_weights(w, 0)
    b_full = cv.const(bias_v) if bias_v is not None else None
    for g in range(group):
        sl = slice(g * og, (g + 1) * og)
        if q:
            wt = cv.b.const(f"{node.name}_w{g}", np.ascontiguousarray(np.transpose(w_int[sl], (0, 2, 3, 1))),
                            Quant(tuple(w_scale[sl].tolist()), (0,) * og, 0))
            scale = q_in.scale[0] * w_scale[sl]
            bq = np.zeros(og, np.int32) if b_full is None else np.round(b_full.reshape(-1)[sl] / scale).astype(np.int32)
            bt = cv.b.const(f"{node.name}_b{g}", bq, Quant(tuple(scale.tolist()), (0,) * og, 0))
        else:
            wt = cv.fconst(f"{node.name}_w{g}", np.ascontiguousarray(np.transpose(w_full[sl], (0, 2, 3, 1))))
            bt = -1 if b_full is None else cv.fconst(f"{node.name}_b{g}", b_full.reshape(-1)[sl])
        o = cv.b.tensor(f"{node.name}_out{g}", out_shape[:3] + (og,), I8 if q else F32, q)
        opts = options("Conv2DOptionsT", padding=pad_code, strideH=strides[0], strideW=strides[1],
                       dilationHFactor=dil[0], dilationWFactor=dil[1], fusedActivationFunction=act_fn)
        cv.b.op(BuiltinOp.CONV_2D, [parts[g], wt, bt], [o], opts)
        outs.append(o)
    cv.emit(BuiltinOp.CONCATENATION, outs, out_v, L.NHWC, q, options("ConcatenationOptionsT", axis=3))


def pad_nhwc(cv: Converter, idx: int, pads: list[tuple[int, int]], name: str, value: float | None) -> int:
    """Explicit PAD (zeros, i.e. the zero point in int8) or PADV2 (``value``) of an NHWC tensor's H, W."""
    info = cv.b.info[idx]
    paddings = [[0, 0], list(pads[0]), list(pads[1]), [0, 0]]
    shape = (info.shape[0], info.shape[1] + sum(pads[0]), info.shape[2] + sum(pads[1]), info.shape[3])
    out = cv.b.tensor(name + "_pad", shape, info.dtype, info.quant)
    ins = [idx, cv.b.i32(name + "_paddings", paddings)]
    if value is None:
        cv.b.op(BuiltinOp.PAD, ins, [out], options("PadOptionsT"))
    else:
        if info.dtype == I8:
            assert info.quant is not None
            qv = int(np.clip(np.round(value / info.quant.scale[0]) + info.quant.zero_point[0], -128, 127))
            cst = cv.b.const(name + "_padval", np.asarray([qv], np.int8), info.quant)
        else:
            cst = cv.b.const(name + "_padval", np.asarray([value], np.float32))
        cv.b.op(BuiltinOp.PADV2, [*ins, cst], [out], options("PadV2OptionsT"))
    return out


def conv_transpose(cv: Converter, node: ir.Node) -> None:
    x, w = node.inputs[0], node.inputs[1]
    bias_v = node.inputs[2] if len(node.inputs) > 2 else None
    xs, ws_ = cv.shape(x), cv.shape(w)
    if len(xs) != 4 or attr(node, "group", 1) != 1 or any(d != 1 for d in ints(node, "dilations", 2, 1)):
        raise EdgecError(f"node '{node.name}': ConvTranspose other than 2-D, group 1, dilation 1 has no "
                         "TFLite mapping")
    strides = ints(node, "strides", 2, 1)
    kernel = ws_[2:]
    out_shape = cv.shape(node.outputs[0])
    full = [(xs[2 + i] - 1) * strides[i] + kernel[i] for i in range(2)]
    pads = attr(node, "pads", None) or [0, 0, 0, 0]
    begins = [int(pads[0]), int(pads[1])]
    act_fn, out_v, fused = cv.fused_act(node.outputs[0])
    q = cv.quant_mode([x], out_v)
    q_in = cv.quant_of(x) if q else None
    xin = cv.act(x, L.NHWC, "int8" if q else "float")
    # ONNX ConvTranspose W is [C_in, C_out, kh, kw]; TFLite TRANSPOSE_CONV wants [C_out, kh, kw, C_in].
    wt, wsc = cv.weight_tensor(w, bool(q), 1, (1, 2, 3, 0), f"{node.name}_w")
    bt = cv.bias(bias_v, ws_[1], q_in, wsc, f"{node.name}_b")
    oh, ow = out_shape[2], out_shape[3]
    crop = None
    if begins == [0, 0] and [oh, ow] <= full:
        padding, tshape = Padding.VALID, (out_shape[0], oh, ow, out_shape[1])
    elif all(L.same_pads(o, k, s)[0] == b and L.same_pads(o, k, s)[2] == n for o, k, s, b, n in
             zip((oh, ow), kernel, strides, begins, xs[2:])):
        padding, tshape = Padding.SAME, (out_shape[0], oh, ow, out_shape[1])
    else:
        padding, tshape = Padding.VALID, (out_shape[0], full[0], full[1], out_shape[1])
        crop = begins
    opts = options("TransposeConvOptionsT", padding=padding, strideH=strides[0], strideW=strides[1],
                   fusedActivationFunction=act_fn)
    ins = [cv.b.i32(f"{node.name}_oshape", tshape), wt, xin, bt]
    if crop is None:
        cv.emit(BuiltinOp.TRANSPOSE_CONV, ins, out_v, L.NHWC, q, opts)
    else:
        mid = cv.b.tensor(f"{node.name}_full", tshape, I8 if q else F32, q)
        cv.b.op(BuiltinOp.TRANSPOSE_CONV, ins, [mid], opts)
        begin = [0, crop[0], crop[1], 0]
        size = [tshape[0], oh, ow, tshape[3]]
        cv.emit(BuiltinOp.SLICE, [mid, cv.b.i32(f"{node.name}_cb", begin), cv.b.i32(f"{node.name}_cs", size)],
                out_v, L.NHWC, q, options("SliceOptionsT"))
    cv.absorb(fused)


def gemm(cv: Converter, node: ir.Node) -> None:
    a, bv = node.inputs[0], node.inputs[1]
    c = node.inputs[2] if len(node.inputs) > 2 else None
    alpha, beta = float(attr(node, "alpha", 1.0)), float(attr(node, "beta", 1.0))
    if attr(node, "transA", 0) or cv.const(bv) is None:
        raise EdgecError(f"node '{node.name}': Gemm with transA or non-constant B has no TFLite mapping")
    trans_b = bool(attr(node, "transB", 0))
    fully_connected(cv, node, a, bv, n_axis=0 if trans_b else 1, w_perm=(0, 1) if trans_b else (1, 0),
                    bias_v=c, alpha=alpha, beta=beta)


def matmul(cv: Converter, node: ir.Node) -> None:
    a, bv = node.inputs
    if cv.const(bv) is not None and len(cv.shape(bv)) == 2:
        fully_connected(cv, node, a, bv, n_axis=1, w_perm=(1, 0), bias_v=None, alpha=1.0, beta=1.0)
        return
    out = node.outputs[0]
    acts = [v for v in (a, bv) if cv.is_act(v)]
    q = cv.quant_mode(acts, out)
    rank = len(cv.shape(out))
    ins = [cv.operand(v, L.identity(rank), rank, q) if len(cv.shape(v)) == rank else
           cv.act(v, L.identity(len(cv.shape(v))), "int8" if q else "float") for v in (a, bv)]
    cv.emit(BuiltinOp.BATCH_MATMUL, ins, out, L.identity(rank), q, options("BatchMatMulOptionsT"))


def fully_connected(cv: Converter, node: ir.Node, a: ir.Value, bv: ir.Value, n_axis: int, w_perm: L.Perm,
                    bias_v: ir.Value | None, alpha: float, beta: float) -> None:
    """FULLY_CONNECTED with weights [N, K]. A flattened NHWC input is read as is: the weight columns are
    permuted into the NHWC order instead of transposing the activation back to NCHW."""
    s = cv.slot(a)
    act_fn, out_v, fused = cv.fused_act(node.outputs[0])
    q = cv.quant_mode([a], out_v)
    q_in = cv.quant_of(a) if q else None
    rank = len(s.shape)
    if s.flat is not None:
        ain = s.index
        if q:
            assert cv.b.info[ain].dtype == I8
        elif cv.b.info[ain].dtype != F32:
            ain = cv.act(a, None, "float")
        flat = s.flat
    else:
        ain = cv.act(a, L.identity(rank), "int8" if q else "float")
        flat = None

    def cols(w: np.ndarray) -> np.ndarray:
        return w[:, flat] if flat is not None else w

    n = cv.shape(bv)[n_axis]
    if q and alpha != 1.0:
        q = None  # keep the arithmetic obvious: scaled weights go through the float path
        ain = cv.act(a, None if s.flat is not None else L.identity(rank), "float") if s.flat is None else ain
    if alpha != 1.0:
        wv = cv.const(bv)
        assert wv is not None
        wt = cv.fconst(f"{node.name}_w", np.ascontiguousarray(cols(np.transpose(wv, w_perm) * alpha)))
        ws = None
    else:
        wt, ws = cv.weight_tensor(bv, bool(q), n_axis, w_perm, f"{node.name}_w", cols)
    bias_real = None
    if bias_v is not None:
        real = cv.const(bias_v)
        if real is None or real.size not in (1, n):
            raise EdgecError(f"node '{node.name}': Gemm bias must be a constant of N values")
        bias_real = real
    bt = -1
    if bias_real is not None:
        if beta != 1.0 or cv.qconst(bias_v) is None:
            bias_const = np.broadcast_to(bias_real.reshape(-1) * beta, (n,)).astype(np.float32)
            tmp = ir.Value(name=f"{node.name}_bias")
            cv._const_cache[tmp] = bias_const
            bt = cv.bias(tmp, n, q_in, ws, f"{node.name}_b")
        else:
            bt = cv.bias(bias_v, n, q_in, ws, f"{node.name}_b")
    out_shape = cv.shape(out_v)
    opts = options("FullyConnectedOptionsT", fusedActivationFunction=act_fn, keepNumDims=len(out_shape) > 2)
    cv.emit(BuiltinOp.FULLY_CONNECTED, [ain, wt, bt], out_v, L.identity(len(out_shape)), q, opts)
    cv.absorb(fused)


_BINARY = {
    "Add": (BuiltinOp.ADD, "AddOptionsT"),
    "Sub": (BuiltinOp.SUB, "SubOptionsT"),
    "Mul": (BuiltinOp.MUL, "MulOptionsT"),
    "Div": (BuiltinOp.DIV, "DivOptionsT"),
    "Max": (BuiltinOp.MAXIMUM, "MaximumMinimumOptionsT"),
    "Min": (BuiltinOp.MINIMUM, "MaximumMinimumOptionsT"),
}


def binary(cv: Converter, node: ir.Node) -> None:
    code, opt_name = _BINARY[node.op_type]
    a, b = node.inputs[0], node.inputs[1]
    out = node.outputs[0]
    rank = len(cv.shape(out))
    acts = [v for v in (a, b) if cv.is_act(v)]
    perm = next((cv.slot(v).perm for v in acts if len(cv.slot(v).shape) == rank), L.preferred(rank))
    fusable = node.op_type in ("Add", "Sub", "Mul", "Div")
    act_fn, out_v, fused = cv.fused_act(out) if fusable else (ActFn.NONE, out, [])
    # TFLite has no int8 DIV kernel: Div runs in float between DEQUANTIZE and QUANTIZE.
    q = cv.quant_mode(acts, out_v) if node.op_type != "Div" else None
    ins = [cv.operand(v, perm, rank, q) for v in (a, b)]
    opts = options(opt_name, fusedActivationFunction=act_fn) if fusable else options(opt_name)
    cv.emit(code, ins, out_v, perm, q, opts)
    cv.absorb(fused)


def unary(code: int, opt: str | None = None, required: Quant | None = None, int8_ok: bool = True,
          **fields) -> Callable[[Converter, ir.Node], None]:
    def handler(cv: Converter, node: ir.Node) -> None:
        x, out = node.inputs[0], node.outputs[0]
        q = cv.quant_mode([x], out) if int8_ok else None
        s = cv.slot(x)
        opts = None
        if opt is not None:
            opts = options(opt, **{k: (f(node) if callable(f) else f) for k, f in fields.items()})
        cv.emit(code, [cv.act(x, s.perm, "int8" if q else "float")], out, s.perm, q, opts, required=required)
    return handler


def relu_like(cv: Converter, node: ir.Node) -> None:
    kind = activation_kind(cv, node)
    code = {ActFn.RELU: BuiltinOp.RELU, ActFn.RELU6: BuiltinOp.RELU6, ActFn.RELU_N1_TO_1: BuiltinOp.RELU_N1_TO_1}
    x, out = node.inputs[0], node.outputs[0]
    s = cv.slot(x)
    if kind is not None:
        q = cv.quant_mode([x], out)
        cv.emit(code[kind], [cv.act(x, s.perm, "int8" if q else "float")], out, s.perm, q)
        return
    lo, hi = clip_bounds(cv, node)
    idx = cv.act(x, s.perm, "float")
    if np.isfinite(hi):
        mid = cv.b.tensor(f"{node.name}_min", cv.b.info[idx].shape, F32) if np.isfinite(lo) else None
        target = mid if mid is not None else None
        if target is None:
            cv.emit(BuiltinOp.MINIMUM, [idx, cv.b.const(f"{node.name}_hi", np.asarray([hi], np.float32))],
                    out, s.perm, None, options("MaximumMinimumOptionsT"))
            return
        cv.b.op(BuiltinOp.MINIMUM, [idx, cv.b.const(f"{node.name}_hi", np.asarray([hi], np.float32))], [mid],
                options("MaximumMinimumOptionsT"))
        idx = mid
    cv.emit(BuiltinOp.MAXIMUM, [idx, cv.b.const(f"{node.name}_lo", np.asarray([lo], np.float32))],
            out, s.perm, None, options("MaximumMinimumOptionsT"))


def hard_sigmoid(cv: Converter, node: ir.Node) -> None:
    """max(0, min(1, a*x + b)) = relu6(6a*x + 6b) / 6: three ops XNNPACK runs natively (TFLite has no
    HARD_SIGMOID builtin)."""
    x, out = node.inputs[0], node.outputs[0]
    a, b = float(attr(node, "alpha", 0.2)), float(attr(node, "beta", 0.5))
    s = cv.slot(x)
    idx = cv.act(x, s.perm, "float")
    shape = cv.b.info[idx].shape
    t1 = cv.b.tensor(f"{node.name}_ax", shape, F32)
    cv.b.op(BuiltinOp.MUL, [idx, cv.fconst(f"{node.name}_6a", np.asarray([6 * a], np.float32))], [t1],
            options("MulOptionsT"))
    t2 = cv.b.tensor(f"{node.name}_r6", shape, F32)
    cv.b.op(BuiltinOp.ADD, [t1, cv.fconst(f"{node.name}_6b", np.asarray([6 * b], np.float32))], [t2],
            options("AddOptionsT", fusedActivationFunction=ActFn.RELU6))
    cv.emit(BuiltinOp.MUL, [t2, cv.fconst(f"{node.name}_sixth", np.asarray([1 / 6], np.float32))], out, s.perm,
            None, options("MulOptionsT"))


def prelu(cv: Converter, node: ir.Node) -> None:
    x, slope, out = node.inputs[0], node.inputs[1], node.outputs[0]
    if cv.const(slope) is None:
        raise EdgecError(f"node '{node.name}': PRelu with a non-constant slope has no TFLite mapping")
    s = cv.slot(x)
    q = cv.quant_mode([x], out)
    rank = len(s.shape)
    alpha = cv.operand(slope, s.perm, rank, q)
    cv.emit(BuiltinOp.PRELU, [cv.act(x, s.perm, "int8" if q else "float"), alpha], out, s.perm, q)


def pool(cv: Converter, node: ir.Node) -> None:
    x, out = node.inputs[0], node.outputs[0]
    xs, os_ = cv.shape(x), cv.shape(out)
    if len(xs) != 4:
        raise EdgecError(f"node '{node.name}': {node.op_type} on rank {len(xs)} has no TFLite mapping")
    is_max = node.op_type == "MaxPool"
    if is_max and len(node.outputs) > 1 and node.outputs[1] is not None and consumers(node.outputs[1]):
        raise EdgecError(f"node '{node.name}': MaxPool indices output has no TFLite mapping")
    kernel = ints(node, "kernel_shape", 2, 1)
    strides, dil = ints(node, "strides", 2, 1), ints(node, "dilations", 2, 1)
    if dil != [1, 1]:
        raise EdgecError(f"node '{node.name}': dilated pooling has no TFLite mapping")
    pads = L.onnx_pads(attr(node, "auto_pad", "NOTSET"), xs[2:], kernel, strides, dil, attr(node, "pads", None))
    # ceil_mode: the last window may start inside the input and run past the end pad; widen the end pad.
    pads = [(lo, hi + max(0, (o - 1) * st + k - (n + lo + hi)))
            for (lo, hi), o, st, k, n in zip(pads, os_[2:], strides, kernel, xs[2:])]
    act_fn, out_v, fused = cv.fused_act(out)
    padding = L.tflite_padding(xs[2:], kernel, strides, dil, pads)
    include_pad = bool(attr(node, "count_include_pad", 0))
    if padding == "SAME" and not is_max and include_pad:
        padding = None  # TFLite SAME averages over the valid elements only
    # Average over valid elements with pads SAME cannot express: zero-pad, average, then rescale each
    # output by window size / valid count (a constant map) -- done in float.
    rescale = padding is None and not is_max and not include_pad
    q = None if rescale else cv.quant_mode([x], out_v)
    xin = cv.act(x, L.NHWC, "int8" if q else "float")
    if padding is None:
        fill = float(np.finfo(np.float32).min) if is_max else None
        xin = pad_nhwc(cv, xin, pads, node.name, fill)
        padding = "VALID"
    opts = options("Pool2DOptionsT", padding=Padding.SAME if padding == "SAME" else Padding.VALID,
                   strideH=strides[0], strideW=strides[1], filterHeight=kernel[0], filterWidth=kernel[1],
                   fusedActivationFunction=ActFn.NONE if rescale else act_fn)
    code = BuiltinOp.MAX_POOL_2D if is_max else BuiltinOp.AVERAGE_POOL_2D
    if not rescale:
        cv.emit(code, [xin], out_v, L.NHWC, q, opts, required=cv.quant_of(x) if q else None)
        cv.absorb(fused)
        return
    tshape = L.shape_in(L.NHWC, os_)
    mid = cv.b.tensor(f"{node.name}_sum", tshape, F32)
    cv.b.op(code, [xin], [mid], opts)
    ratio = [(k / _valid_counts(n, k, st, lo, o)) for n, k, st, (lo, _), o in zip(xs[2:], kernel, strides, pads, os_[2:])]
    scale = np.outer(ratio[0], ratio[1]).astype(np.float32).reshape(1, os_[2], os_[3], 1)
    cv.emit(BuiltinOp.MUL, [mid, cv.fconst(f"{node.name}_count", scale)], out_v, L.NHWC, cv.out_quant(out_v),
            options("MulOptionsT", fusedActivationFunction=act_fn))
    cv.absorb(fused)


def _valid_counts(n: int, k: int, stride: int, begin: int, out: int) -> np.ndarray:
    """Per output position along one axis: how many window elements fall inside the input."""
    start = np.arange(out) * stride - begin
    return (np.minimum(start + k, n) - np.maximum(start, 0)).astype(np.float64)


def global_pool(cv: Converter, node: ir.Node) -> None:
    x, out = node.inputs[0], node.outputs[0]
    s = cv.slot(x)
    rank = len(s.shape)
    q = cv.quant_mode([x], out)
    axes = [L.axis_in(s.perm, a) for a in range(2, rank)]
    code = BuiltinOp.MEAN if node.op_type == "GlobalAveragePool" else BuiltinOp.REDUCE_MAX
    required = cv.quant_of(x) if (q and code == BuiltinOp.REDUCE_MAX) else None
    cv.emit(code, [cv.act(x, s.perm, "int8" if q else "float"), cv.b.i32(f"{node.name}_axes", sorted(axes))],
            out, s.perm, q, options("ReducerOptionsT", keepDims=True), required=required)


def reduce(cv: Converter, node: ir.Node) -> None:
    x, out = node.inputs[0], node.outputs[0]
    s = cv.slot(x)
    rank = len(s.shape)
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        axes_arr = cv.const(node.inputs[1])
        if axes_arr is None:
            raise EdgecError(f"node '{node.name}': {node.op_type} with non-constant axes has no TFLite mapping")
        axes = [int(a) % rank for a in axes_arr.reshape(-1)]
    else:
        axes = [int(a) % rank for a in attr(node, "axes", list(range(rank)))]
    if not axes:
        axes = [] if attr(node, "noop_with_empty_axes", 0) else list(range(rank))
    keep = bool(attr(node, "keepdims", 1))
    code = {"ReduceMean": BuiltinOp.MEAN, "ReduceMax": BuiltinOp.REDUCE_MAX, "ReduceSum": BuiltinOp.SUM}[node.op_type]
    q = cv.quant_mode([x], out) if code != BuiltinOp.SUM else None
    perm = s.perm if keep else L.after_reduce(s.perm, axes)
    taxes = sorted(L.axis_in(s.perm, a) for a in axes)
    required = cv.quant_of(x) if (q and code == BuiltinOp.REDUCE_MAX) else None
    cv.emit(code, [cv.act(x, s.perm, "int8" if q else "float"), cv.b.i32(f"{node.name}_axes", taxes)],
            out, perm, q, options("ReducerOptionsT", keepDims=keep), required=required)


def concat(cv: Converter, node: ir.Node) -> None:
    out = node.outputs[0]
    rank = len(cv.shape(out))
    axis = attr(node, "axis", 0) % rank
    ins_v = [v for v in node.inputs if v is not None]
    acts = [v for v in ins_v if cv.is_act(v)]
    perm = next((cv.slot(v).perm for v in acts), L.preferred(rank))
    act_fn, out_v, fused = cv.fused_act(out)
    q = cv.quant_mode(acts, out_v)
    ins = []
    for v in ins_v:
        if cv.is_act(v):
            idx = cv.act(v, perm, "int8" if q else "float")
            # TFLite's int8 CONCATENATION requires every input in the output's quantization.
            ins.append(cv.requantize(idx, q, f"{v.name}_rq") if q else idx)
        else:
            c = np.transpose(cv.const(v), perm)
            if q:
                qv = np.clip(np.round(c / q.scale[0]) + q.zero_point[0], -128, 127).astype(np.int8)
                ins.append(cv.b.const(v.name or "c", qv, q))
            else:
                ins.append(cv.fconst(v.name or "c", c))
    cv.emit(BuiltinOp.CONCATENATION, ins, out_v, perm, q,
            options("ConcatenationOptionsT", axis=L.axis_in(perm, axis), fusedActivationFunction=act_fn))
    cv.absorb(fused)


def reshape_like(cv: Converter, node: ir.Node) -> None:
    """Reshape, Flatten, Squeeze, Unsqueeze: the output shape comes from shape inference."""
    x, out = node.inputs[0], node.outputs[0]
    s = cv.slot(x)
    out_shape = cv.shape(out)
    q = cv.quant_mode([x], out)
    want = "int8" if q else "float"
    if (s.perm != L.identity(len(s.shape)) and not L.reshape_keeps_order(s.perm, s.shape)
            and len(out_shape) == 2 and s.perm[0] == 0 and out_shape[0] == s.shape[0]
            and all(_reads_as_fc(cv, u) for u in _readers(cv, out))):
        # Flatten of an NHWC map feeding FULLY_CONNECTED: flatten in NHWC order, permute the weights.
        flat = L.flatten_order(tuple(p - 1 for p in s.perm[1:]), s.shape[1:])
        idx = cv.reshape(cv.act(x, None, want), out_shape, out.name or "flat")
        if q is not None:
            idx = cv.requantize(idx, q, (out.name or "flat") + "_rq")
        cv.slots[out] = Slot(idx, L.identity(2), out_shape, flat)
        return
    perm = s.perm if L.reshape_keeps_order(s.perm, s.shape) else L.identity(len(s.shape))
    src = cv.act(x, perm, want)
    cv.emit(BuiltinOp.RESHAPE, [src, cv.b.i32(f"{node.name}_shape", out_shape)], out, L.identity(len(out_shape)),
            q, options("ReshapeOptionsT", newShape=np.asarray(out_shape, dtype=np.int32)),
            required=cv.quant_of(x) if q else None)


def _readers(cv: Converter, v: ir.Value) -> list[ir.Node]:
    """Readers of ``v``, looking through QDQ pairs (Q -> DQ) to the op that does arithmetic."""
    result = []
    for u in consumers(v):
        if u.op_type in ("QuantizeLinear", "DequantizeLinear"):
            result.extend(_readers(cv, u.outputs[0]))
        else:
            result.append(u)
    if v.is_graph_output():
        result.append(None)  # type: ignore[arg-type]
    return result


def _reads_as_fc(cv: Converter, node: ir.Node | None) -> bool:
    if node is None:
        return False
    if node.op_type == "Gemm":
        return not attr(node, "transA", 0) and cv.const(node.inputs[1]) is not None
    if node.op_type == "MatMul":
        return cv.const(node.inputs[1]) is not None and len(cv.shape(node.inputs[1])) == 2
    return False


def transpose(cv: Converter, node: ir.Node) -> None:
    """A Transpose only relabels the layout of the same tensor; a TRANSPOSE is made later if a reader
    needs another layout."""
    x, out = node.inputs[0], node.outputs[0]
    s = cv.slot(x)
    if s.flat is not None:
        raise EdgecError(f"node '{node.name}': Transpose of a flattened map")
    rank = len(s.shape)
    p = attr(node, "perm", None) or list(reversed(range(rank)))
    invp = L.inverse(p)
    cv.slots[out] = Slot(s.index, tuple(invp[s.perm[i]] for i in range(rank)), cv.shape(out))


def alias(cv: Converter, node: ir.Node) -> None:
    cv.slots[node.outputs[0]] = cv.slot(node.inputs[0])


def softmax(cv: Converter, node: ir.Node) -> None:
    x, out = node.inputs[0], node.outputs[0]
    s = cv.slot(x)
    rank = len(s.shape)
    axis = attr(node, "axis", -1 if cv.opset >= 13 else 1) % rank
    if cv.opset < 13 and axis != rank - 1 and any(d != 1 for d in s.shape[axis + 1:]):
        raise EdgecError(f"node '{node.name}': Softmax (opset < 13) over flattened trailing axes has no "
                         "TFLite mapping")
    perm = s.perm if s.perm[-1] == axis else tuple(p for p in s.perm if p != axis) + (axis,)
    q = cv.quant_mode([x], out)
    cv.emit(BuiltinOp.SOFTMAX, [cv.act(x, perm, "int8" if q else "float")], out, perm, q,
            options("SoftmaxOptionsT", beta=1.0), required=_Q_SIGMOID)


def pad(cv: Converter, node: ir.Node) -> None:
    x, out = node.inputs[0], node.outputs[0]
    s = cv.slot(x)
    rank = len(s.shape)
    mode = attr(node, "mode", "constant")
    if cv.opset >= 11:
        pads = cv.const(node.inputs[1])
        value = cv.const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
        axes_v = node.inputs[3] if len(node.inputs) > 3 else None
    else:
        pads, value, axes_v = np.asarray(attr(node, "pads")), np.asarray(attr(node, "value", 0.0)), None
    if pads is None:
        raise EdgecError(f"node '{node.name}': Pad with non-constant pads has no TFLite mapping")
    pads = pads.reshape(-1).astype(int)
    axes = list(range(rank))
    if axes_v is not None:
        axes = [int(a) % rank for a in cv.const(axes_v).reshape(-1)]
    per_axis = {a: (0, 0) for a in range(rank)}
    for i, a in enumerate(axes):
        per_axis[a] = (int(pads[i]), int(pads[i + len(axes)]))
    if any(p < 0 for pr in per_axis.values() for p in pr):
        raise EdgecError(f"node '{node.name}': negative Pad (cropping) has no TFLite mapping")
    paddings = [list(per_axis[p]) for p in s.perm]
    q = cv.quant_mode([x], out)
    src = cv.act(x, s.perm, "int8" if q else "float")
    ins = [src, cv.b.i32(f"{node.name}_paddings", paddings)]
    fill = float(value.reshape(-1)[0]) if value is not None and value.size else 0.0
    if mode == "constant" and fill == 0.0:
        cv.emit(BuiltinOp.PAD, ins, out, s.perm, q, options("PadOptionsT"), required=cv.quant_of(x) if q else None)
    elif mode == "constant":
        if q:
            iq = cv.quant_of(x)
            cst = cv.b.const(f"{node.name}_val", np.asarray(
                [np.clip(round(fill / iq.scale[0]) + iq.zero_point[0], -128, 127)], np.int8), iq)
        else:
            cst = cv.b.const(f"{node.name}_val", np.asarray([fill], np.float32))
        cv.emit(BuiltinOp.PADV2, [*ins, cst], out, s.perm, q, options("PadV2OptionsT"),
                required=cv.quant_of(x) if q else None)
    elif mode == "reflect":
        cv.emit(BuiltinOp.MIRROR_PAD, ins, out, s.perm, q, options("MirrorPadOptionsT", mode=0),
                required=cv.quant_of(x) if q else None)
    else:
        raise EdgecError(f"node '{node.name}': Pad mode '{mode}' has no TFLite mapping",
                         hint="constant and reflect pads are converted")


def resize(cv: Converter, node: ir.Node) -> None:
    x, out = node.inputs[0], node.outputs[0]
    xs, os_ = cv.shape(x), cv.shape(out)
    if len(xs) != 4 or xs[:2] != os_[:2]:
        raise EdgecError(f"node '{node.name}': Resize other than spatial (NCHW H, W) has no TFLite mapping")
    mode = attr(node, "mode", "nearest")
    ctm = attr(node, "coordinate_transformation_mode", "half_pixel" if cv.opset >= 11 else "asymmetric")
    nearest_mode = attr(node, "nearest_mode", "round_prefer_floor")
    q = cv.quant_mode([x], out)
    xin = cv.act(x, L.NHWC, "int8" if q else "float")
    size = cv.b.i32(f"{node.name}_size", os_[2:])
    flags = {"align_corners": (True, False), "asymmetric": (False, False),
             "half_pixel": (False, True), "pytorch_half_pixel": (False, True)}
    if ctm not in flags:
        raise EdgecError(f"node '{node.name}': Resize coordinate_transformation_mode '{ctm}' has no TFLite mapping")
    align, half = flags[ctm]
    if mode == "nearest":
        if (ctm == "asymmetric" and nearest_mode != "floor") or (ctm != "asymmetric" and nearest_mode == "floor"):
            ratio = [o / i for o, i in zip(os_[2:], xs[2:])]
            if not all(r == int(r) for r in ratio):
                raise EdgecError(f"node '{node.name}': Resize nearest with {ctm}/{nearest_mode} at a non-integer "
                                 "scale has no TFLite mapping")
            align, half = False, False  # an integer upscale picks the same source pixel under every rule
        opts = options("ResizeNearestNeighborOptionsT", alignCorners=align, halfPixelCenters=half)
        code = BuiltinOp.RESIZE_NEAREST_NEIGHBOR
    elif mode == "linear":
        opts = options("ResizeBilinearOptionsT", alignCorners=align, halfPixelCenters=half)
        code = BuiltinOp.RESIZE_BILINEAR
    else:
        raise EdgecError(f"node '{node.name}': Resize mode '{mode}' has no TFLite mapping",
                         hint="nearest and linear are converted")
    cv.emit(code, [xin, size], out, L.NHWC, q, opts, required=cv.quant_of(x) if q else None)


def split(cv: Converter, node: ir.Node) -> None:
    x = node.inputs[0]
    s = cv.slot(x)
    rank = len(s.shape)
    axis = attr(node, "axis", 0) % rank
    sizes = [cv.shape(o)[axis] for o in node.outputs]
    outs_q = [cv.quant_mode([x], o) for o in node.outputs]
    q_all = all(q is not None for q in outs_q)
    src = cv.act(x, s.perm, "int8" if q_all else "float")
    info = cv.b.info[src]
    taxis = L.axis_in(s.perm, axis)
    outs = [cv.b.tensor(o.name or "split", L.shape_in(s.perm, cv.shape(o)), info.dtype, info.quant)
            for o in node.outputs]
    cv.b.op(BuiltinOp.SPLIT_V, [src, cv.b.i32(f"{node.name}_sizes", sizes), cv.b.i32(f"{node.name}_axis", [taxis])],
            outs, options("SplitVOptionsT", numSplits=len(outs)))
    for o, idx, q in zip(node.outputs, outs, outs_q):
        if q_all and q is not None:
            idx = cv.requantize(idx, q, (o.name or "split") + "_rq")
        cv.slots[o] = Slot(idx, s.perm, cv.shape(o))


def slice_(cv: Converter, node: ir.Node) -> None:
    x, out = node.inputs[0], node.outputs[0]
    s = cv.slot(x)
    rank = len(s.shape)
    if cv.opset >= 10:
        vals = [cv.const(v) if i < len(node.inputs) and (v := node.inputs[i]) is not None else None
                for i in range(1, 5)]
        if any(v is None for v in vals[:2]) or any(i < len(node.inputs) and node.inputs[i] is not None
                                                   and vals[i - 1] is None for i in (3, 4)):
            raise EdgecError(f"node '{node.name}': Slice with non-constant bounds has no TFLite mapping")
        starts, ends = vals[0].reshape(-1), vals[1].reshape(-1)
        axes = vals[2].reshape(-1) if vals[2] is not None else np.arange(len(starts))
        steps = vals[3].reshape(-1) if vals[3] is not None else np.ones(len(starts), np.int64)
    else:
        starts, ends = np.asarray(attr(node, "starts")), np.asarray(attr(node, "ends"))
        axes = np.asarray(attr(node, "axes", list(range(len(starts)))))
        steps = np.ones(len(starts), np.int64)
    begin, end, stride = [0] * rank, list(s.shape), [1] * rank
    end_mask = 0
    for st, en, ax, sp in zip(starts, ends, axes, steps):
        ax = int(ax) % rank
        b, e, k = slice(int(max(min(st, 2**62), -2**62)), int(max(min(en, 2**62), -2**62)), int(sp)).indices(s.shape[ax])
        begin[ax], end[ax], stride[ax] = b, e, k
        if k < 0 and e < 0:
            end_mask |= 1 << L.axis_in(s.perm, ax)
    q = cv.quant_mode([x], out)
    tb, te, ts = ([v[p] for p in s.perm] for v in (begin, end, stride))
    ins = [cv.act(x, s.perm, "int8" if q else "float"), cv.b.i32(f"{node.name}_begin", tb),
           cv.b.i32(f"{node.name}_end", te), cv.b.i32(f"{node.name}_strides", ts)]
    cv.emit(BuiltinOp.STRIDED_SLICE, ins, out, s.perm, q, options("StridedSliceOptionsT", endMask=end_mask),
            required=cv.quant_of(x) if q else None)


def batchnorm(cv: Converter, node: ir.Node) -> None:
    """A BatchNormalization left standing (no Conv before it): y = x * s + t, in float."""
    x, out = node.inputs[0], node.outputs[0]
    gamma, beta, mean, var = (cv.const(v) for v in node.inputs[1:5])
    if any(a is None for a in (gamma, beta, mean, var)):
        raise EdgecError(f"node '{node.name}': BatchNormalization with non-constant statistics")
    scale = gamma / np.sqrt(var + float(attr(node, "epsilon", 1e-5)))
    shift = beta - mean * scale
    s = cv.slot(x)
    rank = len(s.shape)
    bshape = (1, -1) + (1,) * (rank - 2)
    sc = cv.fconst(f"{node.name}_scale", np.transpose(scale.reshape(bshape), s.perm))
    sh = cv.fconst(f"{node.name}_shift", np.transpose(shift.reshape(bshape), s.perm))
    mid = cv.b.tensor(f"{node.name}_mul", L.shape_in(s.perm, s.shape), F32)
    cv.b.op(BuiltinOp.MUL, [cv.act(x, s.perm, "float"), sc], [mid], options("MulOptionsT"))
    cv.emit(BuiltinOp.ADD, [mid, sh], out, s.perm, None, options("AddOptionsT"))


def _leaky_alpha(node: ir.Node) -> float:
    return float(attr(node, "alpha", 0.01))


_HANDLERS: dict[str, Callable[[Converter, ir.Node], None]] = {
    "Conv": conv,
    "ConvTranspose": conv_transpose,
    "Gemm": gemm,
    "MatMul": matmul,
    "Add": binary, "Sub": binary, "Mul": binary, "Div": binary, "Max": binary, "Min": binary,
    "Relu": relu_like,
    "Clip": relu_like,
    "Sigmoid": unary(BuiltinOp.LOGISTIC, required=_Q_SIGMOID),
    "Tanh": unary(BuiltinOp.TANH, required=_Q_TANH),
    "HardSwish": unary(BuiltinOp.HARD_SWISH, "HardSwishOptionsT"),
    "HardSigmoid": hard_sigmoid,
    "LeakyRelu": unary(BuiltinOp.LEAKY_RELU, "LeakyReluOptionsT", alpha=_leaky_alpha),
    "PRelu": prelu,
    "MaxPool": pool,
    "AveragePool": pool,
    "GlobalAveragePool": global_pool,
    "GlobalMaxPool": global_pool,
    "Concat": concat,
    "Reshape": reshape_like, "Flatten": reshape_like, "Squeeze": reshape_like, "Unsqueeze": reshape_like,
    "Transpose": transpose,
    "Identity": alias, "Dropout": alias,
    "Pad": pad,
    "Resize": resize,
    "Softmax": softmax,
    "Split": split,
    "Slice": slice_,
    "ReduceMean": reduce, "ReduceMax": reduce, "ReduceSum": reduce,
    "BatchNormalization": batchnorm,
}
