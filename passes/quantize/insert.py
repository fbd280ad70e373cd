"""Q/DQ insertion: the placement's activations get QuantizeLinear/DequantizeLinear pairs with the ranges
ranges.py derived; weights and biases are quantized here.

Weights: int8, symmetric, per output channel (the axis is rules.weight_axis: Conv 0, ConvTranspose 1,
Gemm 0 if transB else 1, MatMul the last), stored as int8 initializers read through a DequantizeLinear,
so the file shrinks ~4x; the width (7 or 8 bits) is the scheme's ``weight_bits``. Where a runtime wants
explicit zero points and which biases stay float in the file: the scheme's rule table (rules.py).
Bias (scheme bias=int32): int32 with scale = s_in * s_w per channel, zero point 0, which is exactly what
ONNX Runtime's QLinearConv/QGemm fusions expect; optionally bias-corrected for the expected shift the
weight rounding causes (Nagel et al. 2019), from per-channel input means collected in the same pass.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx_ir as ir

from edgec import calib
from edgec.graph import NameSource, add_initializer, attr, const_array, drop_orphan
from edgec.passes.quantize.placement import WEIGHTED, Placement
from edgec.passes.quantize.ranges import rounded
from edgec.passes.quantize.rules import weight_axis
from edgec.passes.quantize.scheme import QuantScheme

INT32_MAX = 2**31 - 1
MS_DOMAIN = "com.microsoft"
_WIDE_NP: dict[type[np.integer], type[np.integer]] = {np.uint8: np.uint16, np.int8: np.int16}
_IR_TYPE = {np.uint8: ir.DataType.UINT8, np.int8: ir.DataType.INT8, np.uint16: ir.DataType.UINT16,
            np.int16: ir.DataType.INT16}


def insert_qdq(model: ir.Model, plan: Placement, params: dict[str, dict[str, Any]], scheme: QuantScheme,
               weight_bits: int = 8, stats: dict[str, calib.TensorStats] | None = None) -> list[dict[str, Any]]:
    graph = model.graph
    names = NameSource(graph)
    rules = scheme.rules
    act_np = scheme.act_np
    qmax = 2 ** (weight_bits - 1) - 1
    rows: list[dict[str, Any]] = []
    act_scale: dict[int, float] = {}
    # One initializer per distinct scalar scale / zero point: tensors sharing a range (Concat groups,
    # MaxPool, Relu-absorbed) and every zero point 0 read the same one (~600 fewer on PP-OCRv4 det).
    shared: dict[tuple[str, bytes], ir.Value] = {}
    for t in plan.tensors:
        p = params[t.name or ""]
        act_scale[id(t)] = p["scale"]
        producer = t.producer()
        rows.append({"tensor": t.name, "kind": "activation", "op": producer.op_type if producer else "input", **p})
        wide = (t.name or "") in plan.wide
        _insert_pair(graph, t, p["scale"], p["zero_point"], _WIDE_NP[act_np] if wide else act_np, names, shared)
        if wide:
            model.opset_imports.setdefault(MS_DOMAIN, 1)
    for node, i in plan.consts:
        _quantize_const_input(graph, node, i, scheme, names, shared)
    for node in plan.scaled:
        _fold_scalar_mul(graph, node, names, shared)
    weights_cache: dict[tuple[int, int], tuple[ir.Value, np.ndarray, np.ndarray]] = {}
    for node in plan.nodes:
        if node.op_type not in WEIGHTED:
            continue
        w_index = 1
        if const_array(node.inputs[w_index]) is None:
            continue  # MatMul of two activations: both are quantized as activations
        w = const_array(node.inputs[w_index])
        assert w is not None
        axis = weight_axis(node.op_type, int(attr(node, "transB", 0)), w.ndim)
        assert axis is not None  # every weighted op has a weight axis
        x = node.inputs[0]
        # The activation feeding this op is now a DQ output; its scale is the one we inserted.
        dq = x.producer() if x is not None else None
        s_in = None
        if dq is not None and dq.op_type == "DequantizeLinear":
            s_in = float(const_array(dq.inputs[1]))  # type: ignore[arg-type]
        key = (id(node.inputs[w_index]), axis)
        bias = const_array(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
        w_scale = _weight_scale(w, axis if scheme.per_channel else None, qmax)
        if bias is not None and s_in is not None and scheme.bias == "int32":
            # int32 bias scale s_in*s_w must hold the bias: grow s_w where it would overflow (rare).
            need = np.abs(bias.astype(np.float64).reshape(-1)) / (INT32_MAX * 0.5 * s_in)
            if w_scale.size == need.size or w_scale.size == 1:
                w_scale = np.maximum(w_scale, need.max() if w_scale.size == 1 else need).astype(np.float32)
        mean = _input_mean(x, stats)
        if mean is not None:
            # Bias correction (Nagel et al., "Data-Free Quantization", 2019): the rounding error of the
            # weights shifts each output by err . E[x]; subtract that expected shift from the bias.
            shift = _expected_shift(node, w, w_scale, axis, qmax, mean)
            if shift is not None:
                n_out = shift.size
                base_b = np.zeros(n_out, np.float32) if bias is None else bias.astype(np.float32).reshape(-1)
                if base_b.size == n_out:
                    bias = (base_b - shift).astype(np.float32)
                    if len(node.inputs) < 3 or node.inputs[2] is None:
                        node.resize_inputs(3)
                    # Our NameSource, not set_input_const's: that one rescans the whole graph per call.
                    old_b = node.inputs[2]
                    node.replace_input_with(2, add_initializer(graph, bias, f"{_short(node)}_bc", names))
                    drop_orphan(graph, old_b)
        if key in weights_cache and bias is None:
            dq_w, w_scale, w_int = weights_cache[key]
        else:
            # ORT fuses a zero-point-less weight DQ into QLinearConv but not into QGemm/MatMulIntegerToFloat.
            explicit_zp = node.op_type in rules.explicit_zero_point
            w_int = _quantize_weight(w, w_scale, axis, qmax)
            dq_w = _dequantized_weight(graph, node, w_int, w_scale, axis, names, explicit_zp)
            weights_cache[key] = (dq_w, w_scale, w_int)
        old_w = node.inputs[w_index]
        node.replace_input_with(w_index, dq_w)
        drop_orphan(graph, old_w)
        row: dict[str, Any] = {"tensor": old_w.name if old_w is not None else None, "kind": "weight", "op": node.op_type,
                               "node": node.name, "axis": axis if w_scale.size > 1 else None,
                               "channels": int(w_scale.size), "sqnr_db": rounded(_weight_sqnr(w, w_int, w_scale, axis))}
        if bias is not None and s_in is not None and scheme.bias == "int32" and node.op_type in rules.float_bias:
            # ORT's BiasQuantization (qdq_transformer/bias_quantization.cc) turns the float bias of a QDQ
            # Conv into exactly this int32 (round(b / (s_in * s_w))) when it loads the model, and
            # QLinearConv still fuses: storing it float saves the per-channel int32 scale array and a node.
            # (QGemm does not fuse with a float bias: Gemm keeps the explicit int32 DQ.)
            row["bias"] = "int32 (float in the file, quantized by ORT at load)"
        elif bias is not None and s_in is not None and scheme.bias == "int32" and node.op_type != "MatMul":
            _quantize_bias(graph, node, bias, np.float32(s_in) * w_scale.astype(np.float32), names,
                           node.op_type in rules.explicit_zero_point)
            row["bias"] = "int32"
        rows.append(row)
    return rows


def _input_mean(x: ir.Value | None, stats: dict[str, calib.TensorStats] | None) -> np.ndarray | None:
    """Per-channel mean of the float tensor behind ``x`` (a DQ output after insertion)."""
    if stats is None or x is None:
        return None
    dq = x.producer()
    q = dq.inputs[0].producer() if dq is not None and dq.op_type == "DequantizeLinear" and dq.inputs[0] else None
    src = q.inputs[0] if q is not None and q.op_type == "QuantizeLinear" else x
    st = stats.get(src.name or "") if src is not None else None
    mean = st.channel_mean() if st is not None else None
    if mean is not None and q is not None and q.op_type == "QuantizeLinear":
        # A folded scalar Mul reads the same integers with a scaled DQ (HardSwish's 1/6): same factor.
        mean = mean * (float(const_array(dq.inputs[1])) / float(const_array(q.inputs[1])))  # type: ignore[union-attr,arg-type]
    return mean


def _expected_shift(node: ir.Node, w: np.ndarray, scale: np.ndarray, axis: int, qmax: int,
                    mean: np.ndarray) -> np.ndarray | None:
    """E[(W_q - W) x] per output channel, from the per-input-channel means of x."""
    s = _bshape(w, axis, scale).astype(np.float64)
    err = np.clip(np.round(w / s), -qmax, qmax) * s - w.astype(np.float64)
    op = node.op_type
    if op == "Conv":
        group = int(node.attributes["group"].value) if "group" in node.attributes else 1
        cin_g = w.shape[1]
        if mean.size != cin_g * group:
            return None
        m = mean.reshape(group, cin_g)  # input channels of each group
        e = err.reshape(group, w.shape[0] // group, cin_g, -1).sum(axis=3)  # [g, out/g, cin/g]
        return np.einsum("goc,gc->go", e, m).reshape(-1)
    if op == "Gemm" and w.ndim == 2:
        trans_b = int(node.attributes["transB"].value) if "transB" in node.attributes else 0
        if (w.shape[1] if trans_b else w.shape[0]) != mean.size:
            return None
        return err @ mean if trans_b else mean @ err
    return None


def _weight_scale(w: np.ndarray, axis: int | None, qmax: int) -> np.ndarray:
    if axis is None:
        amax = np.array([np.abs(w).max()], dtype=np.float64)
    else:
        amax = np.abs(np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)).max(axis=1).astype(np.float64)
    # An all-zero channel still needs a positive scale; 1e-8 keeps s_in*s_w a normal float32.
    return np.maximum(amax / qmax, 1e-8).astype(np.float32)


def _bshape(w: np.ndarray, axis: int, scale: np.ndarray) -> np.ndarray:
    if scale.size == 1:
        return scale.reshape(())
    shape = [1] * w.ndim
    shape[axis] = -1
    return scale.reshape(shape)


def _quantize_weight(w: np.ndarray, scale: np.ndarray, axis: int, qmax: int) -> np.ndarray:
    return np.clip(np.round(w.astype(np.float64) / _bshape(w, axis, scale)), -qmax, qmax).astype(np.int8)


def _weight_sqnr(w: np.ndarray, q: np.ndarray, scale: np.ndarray, axis: int) -> float:
    # float32 is plenty for a reported figure, and 3x cheaper than float64 on ResNet-18's 11 M weights.
    err = w - q.astype(np.float32) * _bshape(w, axis, scale).astype(np.float32)
    e = float(np.dot(err.ravel(), err.ravel()))
    sig = float(np.dot(w.ravel(), w.ravel()))
    return 10 * math.log10(sig / e) if e > 0 else math.inf


def _dequantized_weight(graph: ir.Graph, node: ir.Node, q: np.ndarray, scale: np.ndarray, axis: int,
                        names: NameSource, explicit_zp: bool = False) -> ir.Value:
    base = node.inputs[1].name or f"{node.name}_W"
    qv = add_initializer(graph, q, f"{base}_q", names)
    sv = add_initializer(graph, scale if scale.size > 1 else scale.reshape(()), f"{base}_s", names)
    attrs = {"axis": axis} if scale.size > 1 else {}
    # No zero-point input: it defaults to 0 of the int8 input's type (symmetric), and per-channel zero
    # arrays would cost 5 bytes per output channel for nothing.
    ins = [qv, sv]
    if explicit_zp:  # TensorRT/TFLite converters read the zero point input; give it to them
        ins.append(add_initializer(graph, np.zeros(scale.shape if scale.size > 1 else (), np.int8), f"{base}_zp", names))
    dq = ir.node("DequantizeLinear", ins, attrs, name=names("dq"))
    dq.outputs[0].name = names(f"{base}_dq")
    dq.outputs[0].dtype = ir.DataType.FLOAT
    dq.outputs[0].shape = ir.Shape(q.shape)
    graph.insert_before(node, dq)
    return dq.outputs[0]


def _quantize_bias(graph: ir.Graph, node: ir.Node, bias: np.ndarray, scale: np.ndarray, names: NameSource,
                   explicit_zp: bool = False) -> None:
    b = bias.astype(np.float64).reshape(-1)
    s = np.broadcast_to(scale.astype(np.float64).reshape(-1), b.shape) if scale.size in (1, b.size) else None
    if s is None:
        return
    q = np.clip(np.round(b / s), -INT32_MAX, INT32_MAX).astype(np.int32)
    base = node.inputs[2].name or f"{node.name}_B"
    qv = add_initializer(graph, q, f"{base}_q", names)
    sv = add_initializer(graph, np.asarray(s, np.float32).copy(), f"{base}_s", names)
    ins = [qv, sv]
    if explicit_zp:
        ins.append(add_initializer(graph, np.zeros(b.shape, np.int32), f"{base}_zp", names))
    dq = ir.node("DequantizeLinear", ins, {"axis": 0}, name=names("dq"))
    dq.outputs[0].name = names(f"{base}_dq")
    dq.outputs[0].dtype = ir.DataType.FLOAT
    dq.outputs[0].shape = ir.Shape(b.shape)
    graph.insert_before(node, dq)
    old = node.inputs[2]
    node.replace_input_with(2, dq.outputs[0])
    drop_orphan(graph, old)


def _quantize_const_input(graph: ir.Graph, node: ir.Node, index: int, scheme: QuantScheme,
                          names: NameSource, shared: dict[tuple[str, bytes], ir.Value]) -> None:
    """A constant operand of Add/Mul/Concat: stored in the activation dtype with its own min/max scale."""
    c = const_array(node.inputs[index])
    if c is None:
        return
    lv = scheme.act_levels
    scale, zp = calib.scale_zero_point(float(c.min()), float(c.max()), lv)
    q = np.clip(np.round(c.astype(np.float64) / scale) + zp, lv.qmin, lv.qmax).astype(scheme.act_np)
    base = node.inputs[index].name or f"{node.name}_in{index}"
    qv = add_initializer(graph, q, f"{base}_q", names)
    sv = _scalar(graph, np.asarray(scale, np.float32), f"{base}_s", names, shared)
    zv = _scalar(graph, np.asarray(zp, scheme.act_np), f"{base}_zp", names, shared)
    dq = ir.node("DequantizeLinear", [qv, sv, zv], name=names("dq"))
    dq.outputs[0].name = names(f"{base}_dq")
    dq.outputs[0].dtype, dq.outputs[0].shape = ir.DataType.FLOAT, ir.Shape(c.shape)
    graph.insert_before(node, dq)
    old = node.inputs[index]
    node.replace_input_with(index, dq.outputs[0])
    drop_orphan(graph, old)


def _fold_scalar_mul(graph: ir.Graph, node: ir.Node, names: NameSource,
                     shared: dict[tuple[str, bytes], ir.Value]) -> None:
    """Mul(DQ(q, s, z), c) == DQ(q, s*c, z): read the same integers with a scaled DequantizeLinear."""
    from edgec.passes.quantize.placement import scalar_factor

    found = scalar_factor(node)
    if found is None:
        return
    k, c = found
    dq = node.inputs[1 - k].producer() if node.inputs[1 - k] is not None else None
    if dq is None or dq.op_type != "DequantizeLinear":
        return
    s = const_array(dq.inputs[1])
    base = node.outputs[0].name or node.name or "mul"
    sv = _scalar(graph, (np.asarray(s, np.float32) * np.float32(c)).astype(np.float32), f"{base}_s", names, shared)
    new = ir.node("DequantizeLinear", [dq.inputs[0], sv, dq.inputs[2]], name=names("dq"), domain=dq.domain)
    out = node.outputs[0]
    new.outputs[0].dtype, new.outputs[0].shape = ir.DataType.FLOAT, out.shape
    graph.insert_after(dq, new)
    ir.convenience.replace_all_uses_with(out, new.outputs[0], replace_graph_outputs=True)
    name = out.name
    out.name = None
    new.outputs[0].name = name
    const = node.inputs[k]
    graph.remove(node, safe=True)
    drop_orphan(graph, const)
    if not dq.outputs[0].uses() and not dq.outputs[0].is_graph_output():
        graph.remove(dq, safe=True)  # ORT would still run a DequantizeLinear nobody reads


def _insert_pair(graph: ir.Graph, t: ir.Value, scale: float, zp: int, dtype: type[np.integer],
                 names: NameSource, shared: dict[tuple[str, bytes], ir.Value]) -> None:
    """t -> QuantizeLinear -> DequantizeLinear -> every former reader of t (graph outputs keep their name)."""
    base = t.name or "t"
    uses = [(n, i) for n, i in t.uses()]  # before the QuantizeLinear becomes a reader too
    sv = _scalar(graph, np.asarray(scale, np.float32), f"{base}_s", names, shared)
    zv = _scalar(graph, np.asarray(zp, dtype), f"{base}_zp", names, shared)
    # Short node names ("q_12": left unnamed, the serializer writes "node_QuantizeLinear_12") and short
    # suffixes: on a detector with ~500 quantized tensors the names were ~10 % of the int8 file. The
    # Q output only links the pair, so it takes a short name too; the DQ output keeps the tensor's.
    # 16-bit: ONNX Runtime's com.microsoft Q/DQ (opset-21 ONNX Q/DQ would force an opset upgrade).
    domain = MS_DOMAIN if dtype in (np.uint16, np.int16) else ""
    q = ir.node("QuantizeLinear", [t, sv, zv], name=names("q"), domain=domain)
    dq = ir.node("DequantizeLinear", [q.outputs[0], sv, zv], name=names("dq"), domain=domain)
    q.outputs[0].name = names("i")
    q.outputs[0].dtype = _IR_TYPE[dtype]
    q.outputs[0].shape = t.shape
    out = dq.outputs[0]
    out.name = names(f"{base}_dq")
    out.dtype, out.shape = ir.DataType.FLOAT, t.shape
    producer = t.producer()
    if producer is not None:
        graph.insert_after(producer, [q, dq])
    else:
        first = next(iter(graph), None)
        if first is None:
            graph.extend([q, dq])
        else:
            graph.insert_before(first, [q, dq])
    for n, i in uses:
        n.replace_input_with(i, out)
    if t.is_graph_output():
        # The interface keeps its name: the DQ output takes it, the float tensor is renamed.
        name = t.name
        idx = [k for k, o in enumerate(graph.outputs) if o is t]
        t.name = names(f"{name}_float")
        out.name = name
        for k in idx:
            graph.outputs[k] = out


def _short(node: ir.Node) -> str:
    return node.name or node.op_type


def _scalar(graph: ir.Graph, value: np.ndarray, name: str, names: NameSource,
            shared: dict[tuple[str, bytes], ir.Value]) -> ir.Value:
    """A scalar initializer, reused when the same dtype and value was already added by this pass."""
    key = (value.dtype.str, value.tobytes())
    found = shared.get(key)
    if found is None or found.graph is not graph or found.name not in graph.initializers:
        found = shared[key] = add_initializer(graph, value, name, names)
    return found
