"""Empirical bias correction after weight quantization (Nagel et al. 2019, section 4.2).   lossy

Quantizing a layer's weights W -> Wq shifts the mean of its output: E[y_q - y] = E[conv(x, Wq - W)],
which is not zero (rounding errors are not zero-mean per channel once they are summed over the kernel
and multiplied by the non-zero-mean post-ReLU input), and the shift is passed on through every later
layer. The pass measures that shift on the calibration data and subtracts it from the bias.

It runs AFTER ``quantize`` on the QDQ graph: Wq is read from the weight's DequantizeLinear, W from the
float model the quantize pass leaves in ``ctx.float_reference`` (matched by node name), and the
layer input x is the (fake-quantized) tensor the layer really reads. E[conv(x, Wq - W)] is measured
exactly - padding, strides and groups included - by adding a side Conv with weight Wq - W and a
ReduceMean over batch and space as extra graph outputs, one ONNX Runtime pass over the data for all
layers. An int32 bias (DequantizeLinear(int32, s_x * s_w)) is re-quantized with its own scale; a float
bias is replaced; a layer without a bias gets one (int32 when the scheme wants int32 biases and its input
and weight scales are known, else float). MatMul layers have no bias input and are left alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import numpy as np
import onnx
import onnx_ir as ir

from edgec import model_io, runtime
from edgec.errors import EdgecError
from edgec.graph import NameSource, add_initializer, attr, const_array, nodes_of, set_input_const
from edgec.pass_infra import Feed, Pass, PassContext, register


@register("bias-correct", exact=False)
class BiasCorrect(Pass):
    """Correct each quantized layer's bias by the mean output shift its weight quantization causes."""

    add_after = "quantize"  # where --add inserts it in a target's pipeline

    #: at most this many calibration feeds (the mean converges fast; each feed is one extra ORT run)
    limit: int = 64
    #: keep the correction only if it raises the output SQNR on the sample inputs (it can lower it when
    #: activation rounding shifts the mean the other way): measured, never assumed
    guard: bool = True

    def apply(self, model: ir.Model, ctx: PassContext) -> bool:
        # ctx.float_reference: serialized bytes or an ir.Model of the graph before quantize; or just
        # ctx.float_weights, {node name: float weight array} of the weighted nodes
        weights = ctx.float_weights
        ref = ctx.float_reference
        if weights is None and ref is None:
            raise EdgecError("bias-correct needs the float model from before quantization",
                             hint="run it right after the quantize pass (which leaves the float model in "
                                  "ctx.float_reference)")
        float_model = None
        if ref is not None:
            float_model = ref if isinstance(ref, ir.Model) else model_io.from_bytes(ref)
        if weights is None:
            weights = _float_weights(float_model)  # type: ignore[arg-type]
        feeds = _head(ctx.calibration_feeds(), self.limit)
        check = None
        if self.guard and ctx.samples:
            reference = ctx.reference_outputs
            if reference is None and float_model is not None:
                reference = runtime.run(runtime.session(float_model, optimization="basic"), ctx.samples)
            if reference is not None:
                check = (list(ctx.samples), list(reference))
            else:
                ctx.warn("bias-correct: no fp32 reference outputs, the correction is applied unchecked")
        summary: dict = {}
        rows = correct_biases(model, weights, feeds, int32_bias=ctx.scheme.get("bias", "int32") == "int32",
                              check=check, summary=summary)
        ctx.details["layers"] = rows
        ctx.details.update(summary)
        return any(r.get("corrected") for r in rows)


@dataclasses.dataclass
class _Layer:
    node: ir.Node
    w_float: np.ndarray
    w_quant: np.ndarray


def correct_biases(model: ir.Model, float_model: ir.Model | dict[str, np.ndarray], feeds: Sequence[Feed], *,
                   int32_bias: bool = True, check: tuple[list[Feed], list[Feed]] | None = None,
                   summary: dict | None = None) -> list[dict]:
    """Correct the biases of every Conv/Gemm of ``model`` whose weight comes from a DequantizeLinear,
    in place. ``float_model``: the model before quantization, or {node name: float weight}.
    ``int32_bias``: a layer without a bias gets an int32 one (False: float, as TensorRT needs).
    ``check`` = (sample feeds, their fp32 outputs): the correction is tried on a copy first and kept only
    if the output SQNR on those samples does not fall; ``summary`` receives the two SQNRs and the verdict.
    Returns one row per layer: name, mean |shift| corrected, how the bias is stored."""
    float_weights = float_model if isinstance(float_model, dict) else _float_weights(float_model)
    layers: list[_Layer] = []
    rows: list[dict] = []
    for node in nodes_of(model.graph, "Conv", "Gemm"):
        wq = _dequantized_weight(node)
        if wq is None:
            continue
        wf = float_weights.get(node.name or "")
        wf = None if wf is None else np.asarray(wf, np.float64)
        if wf is None or wf.shape != wq.shape:
            rows.append({"node": node.name, "corrected": False, "reason": "no float weight of that name and shape"})
            continue
        if node.op_type == "Gemm" and attr(node, "transA", 0):
            rows.append({"node": node.name, "corrected": False, "reason": "Gemm with transA"})
            continue
        layers.append(_Layer(node, wf, wq))
    if not layers:
        return rows
    shifts = _measure_shifts(model, layers, feeds)
    if check is not None:
        samples, reference = check
        trial = model_io.clone(model)
        position = {id(n): i for i, n in enumerate(model.graph)}
        trial_nodes = list(trial.graph)
        trial_names = NameSource(trial.graph)
        for layer, shift in zip(layers, shifts):
            subtract_from_bias(trial.graph, trial_nodes[position[id(layer.node)]], shift, trial_names, int32_bias)
        before = _sqnr(model, samples, reference)
        after = _sqnr(trial, samples, reference)
        verdict = after >= before
        if summary is not None:
            summary.update({"sqnr_before_db": before, "sqnr_after_db": after, "kept": verdict})
        if not verdict:
            return rows + [{"node": layer.node.name, "corrected": False,
                            "reason": f"reverted: output SQNR on the samples would fall {before:.2f} -> {after:.2f} dB"}
                           for layer in layers]
    names = NameSource(model.graph)
    for layer, shift in zip(layers, shifts):
        how = subtract_from_bias(model.graph, layer.node, shift, names, int32_bias)
        rows.append({"node": layer.node.name, "corrected": True, "bias": how,
                     "mean_abs_shift": float(np.mean(np.abs(shift))), "max_abs_shift": float(np.max(np.abs(shift)))})
    return rows


def _sqnr(model: ir.Model, samples: list[Feed], reference: list[Feed]) -> float:
    from edgec import metrics

    return float(metrics.drift(reference, runtime.run(runtime.session(model, optimization="basic"), samples)).sqnr_db)


def _head(feeds: Iterable[Feed], n: int) -> list[Feed]:
    out = []
    for f in feeds:
        out.append(f)
        if len(out) >= n:
            break
    return out


def _float_weights(model: ir.Model) -> dict[str, np.ndarray]:
    out = {}
    for node in nodes_of(model.graph, "Conv", "Gemm"):
        w = const_array(node.inputs[1])
        if w is not None and node.name:
            out[node.name] = w.astype(np.float64)
    return out


def _dequantized_weight(node: ir.Node) -> np.ndarray | None:
    """Wq of a weight input produced by DequantizeLinear of constants, else None."""
    dq = node.inputs[1].producer() if node.inputs[1] is not None else None
    if dq is None or dq.op_type != "DequantizeLinear":
        return None
    return dequantize(dq)


def dequantize(dq: ir.Node) -> np.ndarray | None:
    """The float array a DequantizeLinear of constants computes (per-tensor or per-axis)."""
    q = const_array(dq.inputs[0])
    scale = const_array(dq.inputs[1])
    zp = const_array(dq.inputs[2]) if len(dq.inputs) > 2 and dq.inputs[2] is not None else None
    if q is None or scale is None:
        return None
    axis = int(attr(dq, "axis", 1))
    shape = [1] * q.ndim
    if scale.size > 1:
        shape[axis % q.ndim] = -1
    s = scale.astype(np.float64).reshape(shape) if scale.size > 1 else scale.astype(np.float64).reshape(())
    z = 0.0 if zp is None else (zp.astype(np.float64).reshape(shape) if zp.size > 1 else float(zp.reshape(())))
    return (q.astype(np.float64) - z) * s


def _measure_shifts(model: ir.Model, layers: list[_Layer], feeds: Sequence[Feed]) -> list[np.ndarray]:
    """E over the data of conv(x, Wq - W) per output channel, for every layer, in one ORT pass."""
    proto = model_io.to_proto(model)
    g = proto.graph
    by_name = {n.name: n for n in g.node if n.name}
    opset = max([op.version for op in proto.opset_import if op.domain in ("", "ai.onnx")] or [13])
    outs = []
    for k, layer in enumerate(layers):
        n = layer.node
        x = n.inputs[0].name
        delta = (layer.w_quant - layer.w_float).astype(np.float32)
        dname, oname, mname = f"_bc{k}_dw", f"_bc{k}_y", f"_bc{k}_mean"
        if n.op_type == "Conv":
            g.initializer.append(onnx.numpy_helper.from_array(delta, dname))
            side = onnx.helper.make_node("Conv", [x, dname], [oname], name=f"_bc{k}_conv")
            side.attribute.extend(by_name[n.name].attribute)  # same pads, strides, dilations, group
            axes = [0, *range(2, delta.ndim)]
        else:
            alpha = float(attr(n, "alpha", 1.0))
            w = delta.T if attr(n, "transB", 0) else delta
            g.initializer.append(onnx.numpy_helper.from_array((alpha * w).astype(np.float32), dname))
            side = onnx.helper.make_node("MatMul", [x, dname], [oname], name=f"_bc{k}_mm")
            axes = [0]
        g.node.append(side)
        if opset >= 18:  # ReduceMean takes its axes as an input from opset 18
            g.initializer.append(onnx.numpy_helper.from_array(np.array(axes, np.int64), f"_bc{k}_axes"))
            g.node.append(onnx.helper.make_node("ReduceMean", [oname, f"_bc{k}_axes"], [mname], keepdims=0))
        else:
            g.node.append(onnx.helper.make_node("ReduceMean", [oname], [mname], axes=axes, keepdims=0))
        g.output.append(onnx.helper.make_tensor_value_info(mname, onnx.TensorProto.FLOAT, None))
        outs.append(mname)
    sess = runtime.session(proto.SerializeToString(), optimization="basic")
    sums = [None] * len(outs)
    for feed in feeds:
        for i, arr in enumerate(sess.run(outs, runtime.input_feed(sess, feed))):
            a = np.asarray(arr, np.float64).reshape(-1)
            sums[i] = a if sums[i] is None else sums[i] + a  # type: ignore[operator]
    if not feeds:
        raise EdgecError("bias-correct: no calibration feeds")
    return [s / len(feeds) for s in sums]  # type: ignore[operator]


def subtract_from_bias(graph: ir.Graph, node: ir.Node, shift: np.ndarray, names: NameSource,
                        int32_bias: bool = True) -> str:
    gemm = node.op_type == "Gemm"
    beta = float(attr(node, "beta", 1.0)) if gemm else 1.0
    bias_v = node.inputs[2] if len(node.inputs) > 2 else None
    producer = bias_v.producer() if bias_v is not None else None
    if bias_v is not None and producer is not None and producer.op_type == "DequantizeLinear":
        q = const_array(producer.inputs[0])
        scale = const_array(producer.inputs[1])
        if q is not None and scale is not None and q.dtype == np.int32:
            b = dequantize(producer)
            assert b is not None
            b_new = np.broadcast_to(b.reshape(-1), shift.shape) - shift / beta
            q_new = np.clip(np.round(b_new / scale.astype(np.float64).reshape(-1)), -(2**31), 2**31 - 1)
            set_input_const(producer, 0, q_new.astype(np.int32).reshape(q.shape if q.size == shift.size else -1))
            return "int32"
        raise EdgecError(f"bias-correct: bias of '{node.name}' comes from a DequantizeLinear of non-constants")
    if bias_v is not None:
        b = const_array(bias_v)
        if b is None:
            raise EdgecError(f"bias-correct: bias of '{node.name}' is not constant")
        if gemm and b.size not in (1, shift.size):
            raise EdgecError(f"bias-correct: Gemm '{node.name}' has a full [M, N] bias")
        b_new = np.broadcast_to(b.astype(np.float64).reshape(-1), shift.shape) - shift / beta
        set_input_const(node, 2, b_new.astype(b.dtype))
        return "float"
    # No bias: an int32 one when both scales are per-tensor/per-channel constants (keeps ORT's QLinear
    # fusion, which wants an int32 DequantizeLinear bias), else float.
    x_dq = node.inputs[0].producer() if node.inputs[0] is not None else None
    w_dq = node.inputs[1].producer()
    s_x = const_array(x_dq.inputs[1]) if x_dq is not None and x_dq.op_type == "DequantizeLinear" else None
    s_w = const_array(w_dq.inputs[1]) if w_dq is not None else None
    b_new = -shift / beta
    if gemm:
        node.attributes["beta"] = ir.AttrFloat32("beta", 1.0)
        b_new = -shift
    if int32_bias and s_x is not None and s_w is not None and s_x.size == 1 and not gemm:
        scale = (float(s_x.reshape(())) * s_w.astype(np.float64).reshape(-1)) * np.ones(shift.size)
        q = np.clip(np.round(b_new / scale), -(2**31), 2**31 - 1).astype(np.int32)
        qv = add_initializer(graph, q, f"{node.name}_bias_q", names)
        sv = add_initializer(graph, scale.astype(np.float32), f"{node.name}_bias_scale", names)
        dq = ir.node("DequantizeLinear", [qv, sv], attributes={"axis": 0}, name=names(f"{node.name}_bias_dq"))
        dq.outputs[0].name = names(f"{node.name}_bias")
        dq.outputs[0].type = ir.TensorType(ir.DataType.FLOAT)
        dq.outputs[0].shape = ir.Shape([shift.size])
        graph.insert_before(node, dq)
        node.resize_inputs(3)
        node.replace_input_with(2, dq.outputs[0])
        return "int32 (new)"
    set_input_const(node, 2, b_new.astype(np.float32), name=f"{node.name}_bias")
    return "float (new)"
