"""The ONNX -> TFLite converter core: values, layouts, number types; the per-op handlers are in ops_*.py
(one module per op family, found through registry.py).

Output is NHWC TFLite for fp32, fp16 (fp16 weights + DEQUANTIZE) and full-int8. The converter walks the (topologically sorted) ONNX graph once. Each ONNX value gets a ``Slot``: the
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
from edgec.graph import attr, const_array, consumers, only_consumer, opset_version, static_shape
from edgec.passes.quantize.rules import TFLITE

from . import layout as L
from .helpers import activation_kind, quantize_tensor
from .registry import HANDLERS
from .writer import ActFn, Builder, BuiltinOp, Quant, options

F32 = np.dtype(np.float32)
I8 = np.dtype(np.int8)

# Fixed output quantization of TFLite's int8 kernels for bounded functions (the kernels use lookup
# tables built for exactly these); a different QDQ scale gets a requantizing QUANTIZE after the op.
# Sigmoid/Softmax: the TFLite rule table's, which placement also gives those outputs.
Q_SIGMOID = Quant(*zip(TFLITE.fixed_outputs["Sigmoid"]))
Q_TANH = Quant((1.0 / 128,), (0,))


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
        handler = HANDLERS.get(op)
        if handler is None:
            raise EdgecError(f"node '{node.name}': op '{op}' has no TFLite mapping",
                             hint="supported ops: " + ", ".join(sorted(HANDLERS)))
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
        if arr is not None:  # a None may become known later (folded), so it is not remembered
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
        if s.flat is not None and perm is not None and perm != s.perm:
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
        if L.reshape_keeps_order(perm, info.shape):
            # Only size-1 axes move (e.g. NCHW <-> NHWC with C == 1): the bytes are already in order.
            return self.reshape(idx, L.shape_in(perm, info.shape), name)
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
        self.quantize_into(idx, out)
        return out

    def quantize_into(self, src: int, dst: int) -> None:
        """QUANTIZE ``src`` (float or int8) into int8 ``dst``. An int8 -> int8 step whose scale ratio XNNPACK
        does not take (input / output outside [2^-8, 2^7]) goes through float instead: DEQUANTIZE +
        QUANTIZE, both delegated, where one QUANTIZE would run outside XNNPACK and split the graph
        (YOLOv8n int8: a sigmoid's fixed 1/256 scale into its Concat's 1.24)."""
        si, di = self.b.info[src], self.b.info[dst]
        if si.dtype == I8 and si.quant is not None and di.quant is not None:
            ratio = si.quant.scale[0] / di.quant.scale[0]
            if not 2.0**-8 <= ratio <= 2.0**7:
                mid = self.b.tensor(si.name + "_f", si.shape, F32)
                self.b.op(BuiltinOp.DEQUANTIZE, [src], [mid])
                src = mid
        self.b.op(BuiltinOp.QUANTIZE, [src], [dst])

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

    def operand(self, v: ir.Value | np.ndarray, perm: L.Perm, rank: int, q: Quant | None) -> int:
        """An input of an elementwise op (a value or a constant array), broadcast-ready in layout
        ``perm`` (rank ``rank``)."""
        if isinstance(v, np.ndarray):
            c: np.ndarray | None = v.astype(np.float32)
            v = ir.Value(name="const")
        else:
            c = self.const(v)
        if c is None:
            s = self.slot(v)
            if len(s.shape) == rank:
                return self.act(v, perm, "int8" if q else "float")
            idx = self.act(v, L.identity(len(s.shape)), "int8" if q else "float")
            full = (1,) * (rank - len(s.shape)) + s.shape
            idx = self.reshape(idx, full, v.name + "_r")
            return self.transpose(idx, perm, v.name + "_rt") if perm != L.identity(rank) else idx
        def laid_out(a: np.ndarray) -> np.ndarray:
            return np.transpose(a.reshape((1,) * (rank - a.ndim) + a.shape), perm)

        name = v.name or "c"
        if q is None:
            return self.fconst(name, laid_out(c))
        qc = self.qconst(v) if v.producer() is not None else None
        if qc is not None and not qc[1].per_channel and qc[0].dtype == I8:
            return self.b.const(name, laid_out(qc[0]), Quant(qc[1].scale, qc[1].zero_point))
        arr, quant = quantize_tensor(laid_out(c))
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
        if q is not None and required is not None and required.same(q):
            # Within 1e-6: write the kernel's own quantization bit for bit. XNNPACK refuses e.g. an int8
            # RESHAPE whose output scale differs from its input's in the last digits.
            q = required
        final = self.b.tensor(out_v.name or "t", tshape, I8 if q else F32, q)
        if q is not None and required is not None and not required.same(q):
            mid = self.b.tensor((out_v.name or "t") + "_k", tshape, I8, required)
            self.b.op(code, ins, [mid], opts)
            self.quantize_into(mid, final)
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
        if v.const_value is not None:
            # An input with an initializer (old exporters list weights as inputs): a weight here.
            self._folded[v] = v.const_value.numpy()
            return
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
        self.quantize_into(s.index, idx)
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
             name: str, optional: bool = False, real: np.ndarray | None = None) -> int:
        """Bias input: float (fp32/fp16) or int32 with scale s_in * s_w per channel, as TFLite requires."""
        if v is None and real is None and optional:
            return -1
        # CONV_2D / DEPTHWISE_CONV_2D kernels require a bias tensor: a missing bias becomes zeros.
        if real is None:
            real = self.const(v) if v is not None else np.zeros(n, np.float32)
        if real is None:
            raise EdgecError(f"bias '{v.name}' is not constant")
        real = np.broadcast_to(real.reshape(-1), (n,)).astype(np.float32)
        if q_in is None or w_scale is None:
            return self.fconst(name, real)
        scale = q_in.scale[0] * w_scale
        qc = self.qconst(v) if v is not None else None
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
