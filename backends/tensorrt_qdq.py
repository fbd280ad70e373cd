"""TensorRT's explicit-quantization checks: a model's Q/DQ nodes against rules.TENSORRT, the same table
placement builds jetson-int8 models to (Developer Guide, "Explicit Quantization" and "Q/DQ
Layer-Placement Recommendations"). Run by tensorrt_lint.lint; also home of the Finding record and the
read-only graph view every lint check uses.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from edgec.graph import attr, const_array
from edgec.passes.quantize import rules

TRT = rules.TENSORRT
CONV = ("Conv", "ConvTranspose")  # the layers a residual Add (and a pool) fuse into


@dataclasses.dataclass(frozen=True)
class Finding:
    """One broken rule: which rule, the node at fault (its name), what is wrong and how bad it is."""

    rule: str
    node: str
    message: str
    severity: str = "error"

    def to_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        return f"{self.severity}: [{self.rule}] {self.node}: {self.message}"


class Graph:
    """Read-only helpers over the main graph: node names, producers, Q/DQ chains."""

    def __init__(self, model: ir.Model) -> None:
        self.model = model
        self.nodes = list(model.graph)
        self._names = {id(n): self._label(n, i) for i, n in enumerate(self.nodes)}

    @staticmethod
    def _label(node: ir.Node, index: int) -> str:
        if node.name:
            return node.name
        out = next((o.name for o in node.outputs if o.name), None)
        return f"{node.op_type}({out})" if out else f"{node.op_type}#{index}"

    def name(self, node: ir.Node | None) -> str:
        if node is None:
            return "<graph>"
        return self._names.get(id(node)) or node.name or node.op_type


def _op(node: ir.Node | None, *ops: str) -> bool:
    return node is not None and node.domain in ("", "ai.onnx") and node.op_type in ops


def _producer(value: ir.Value | None) -> ir.Node | None:
    return value.producer() if value is not None else None


def _dq_of(value: ir.Value | None) -> ir.Node | None:
    """The DequantizeLinear producing ``value``, if any."""
    p = _producer(value)
    return p if _op(p, "DequantizeLinear") else None


def _q_of(dq: ir.Node | None) -> ir.Node | None:
    """The QuantizeLinear feeding a DequantizeLinear (a Q/DQ pair), if any."""
    p = _producer(dq.inputs[0]) if dq is not None else None
    return p if _op(p, "QuantizeLinear") else None


def _is_weight(value: ir.Value | None) -> bool:
    """A constant, or a constant seen through DQ, Q->DQ (or a Transpose/Reshape of one)."""
    if value is None:
        return False
    if const_array(value) is not None:
        return True
    p = _producer(value)
    if _op(p, "DequantizeLinear"):
        q = _q_of(p)
        return const_array(p.inputs[0]) is not None or (q is not None and const_array(q.inputs[0]) is not None)
    if _op(p, "Transpose", "Reshape", "Identity"):
        return _is_weight(p.inputs[0])
    return False


def _scale(node: ir.Node) -> np.ndarray | None:
    s = const_array(node.inputs[1]) if len(node.inputs) > 1 else None
    return None if s is None else np.asarray(s, dtype=np.float64)


def _same_scale(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    return a is not None and b is not None and a.size == b.size and bool(np.allclose(a, b, rtol=1e-6, atol=0))


def _fmt(s: np.ndarray | None) -> str:
    return "?" if s is None else (f"{float(s.ravel()[0]):.6g}" if s.size == 1 else f"[{s.size} scales]")


def _conv_group(value: ir.Value | None, through_qdq: bool = False) -> ir.Node | None:
    """The Conv/ConvTranspose that ``value`` is the output of, seen through its fusable activation chain
    (Relu, Clip, SiLU = x * Sigmoid(x), ...). With ``through_qdq`` a Q/DQ pair on the way is crossed."""
    seen = 0
    while value is not None and seen < 8:
        seen += 1
        p = _producer(value)
        if p is None:
            return None
        if _op(p, *CONV):
            return p
        if _op(p, *TRT.fused_activations):
            value = p.inputs[0]
        elif _op(p, "Mul") and len(p.inputs) == 2:
            a, b = p.inputs
            sa, sb = _producer(a), _producer(b)
            if _op(sb, "Sigmoid") and sb.inputs[0] is a:
                value = a
            elif _op(sa, "Sigmoid") and sa.inputs[0] is b:
                value = b
            else:
                return None
        elif through_qdq and _op(p, "DequantizeLinear") and _q_of(p) is not None:
            value = _q_of(p).inputs[0]  # type: ignore[union-attr]
        else:
            return None
    return None


def check_qdq_nodes(g: Graph, qdq: list[ir.Node]) -> list[Finding]:
    out = []
    for node in qdq:
        name = g.name(node)
        scale = _scale(node)
        zp_value = node.inputs[2] if len(node.inputs) > 2 else None
        zp = const_array(zp_value) if zp_value is not None else None
        if scale is None:
            out.append(Finding("qdq-scale", name, "scale is not a constant: TensorRT needs build-time scales", "error"))
        elif not (np.all(np.isfinite(scale)) and np.all(scale > 0)):
            out.append(Finding("qdq-scale", name, f"scale {_fmt(scale)} has non-positive or non-finite entries",
                               "error"))
        if node.op_type == "QuantizeLinear":
            out_dtype = attr(node, "output_dtype", 0)
            dtype = (ir.DataType(zp_value.const_value.dtype) if zp_value is not None and zp_value.const_value
                     is not None else ir.DataType(out_dtype) if out_dtype else None)
            if dtype is None and zp_value is not None:
                dtype = zp_value.dtype
            if dtype is None:
                out.append(Finding("qdq-dtype", name, "QuantizeLinear without a zero point: ONNX (and ONNX Runtime) "
                                   "quantize to uint8, TensorRT to int8, so our numerics would not be TensorRT's; "
                                   "add an int8 zero point 0", "error"))
                continue
        else:
            dtype = node.inputs[0].dtype if node.inputs[0] is not None else None
            if dtype == ir.DataType.INT32 and not TRT.int32_bias:
                out.append(Finding("qdq-dtype", name, "INT32 DequantizeLinear (an integer bias): TensorRT's ONNX "
                                   "parser rejects it; keep the bias in float", "error"))
                continue
        if dtype is not None and dtype != ir.DataType.INT8:
            out.append(Finding("qdq-dtype", name, f"{node.op_type} is {dtype.name}: TensorRT quantizes to INT8 only",
                               "error"))
        if zp is not None and np.any(zp != 0) and TRT.symmetric_activations:
            vals = np.unique(zp)
            out.append(Finding("qdq-dtype", name, f"zero point {vals[:4].tolist()} is not 0: TensorRT quantization "
                               "is symmetric (asymmetric zero points are rejected by the parser)", "error"))
        if scale is not None and scale.size > 1 and not _is_weight(node.inputs[0]):
            out.append(Finding("activation-per-tensor", name, f"activation '{node.inputs[0].name}' has {scale.size} "
                               "per-channel scales: TensorRT quantizes activations per tensor", "error"))
    return out


def check_weighted(g: Graph) -> list[Finding]:
    out = []
    for node in g.nodes:
        if not _op(node, *TRT.weighted) or len(node.inputs) < 2:
            continue
        name = g.name(node)
        ins = node.inputs[:2]
        quantized = [_dq_of(v) is not None for v in ins]
        weight_slots = [i for i, v in enumerate(ins) if _is_weight(v)]
        if not any(quantized):
            out.append(Finding("weighted-input", name, f"{node.op_type} has no Q/DQ on its inputs: it runs in "
                               "fp16/fp32", "info"))
            continue
        if not all(quantized):
            missing = ins[quantized.index(False)]
            role = "weight" if quantized.index(False) in weight_slots else "activation"
            out.append(Finding("weighted-input", name, f"{node.op_type} has Q/DQ on one input only: its {role} "
                               f"'{missing.name}' is float, so TensorRT cannot run it in int8", "error"))
        for slot in weight_slots:
            dq = _dq_of(ins[slot])
            if dq is None:
                continue
            scale = _scale(dq)
            w = const_array(dq.inputs[0])
            if w is None and _q_of(dq) is not None:
                w = const_array(_q_of(dq).inputs[0])  # type: ignore[union-attr]
            if scale is None or w is None:
                continue
            axis_expected = rules.weight_axis(node.op_type, attr(node, "transB", 0), w.ndim) if slot == 1 else None
            if axis_expected is None or (node.op_type == "MatMul" and w.ndim < 2):
                continue
            channels = w.shape[axis_expected]
            if scale.size == 1 and channels > 1:
                out.append(Finding("weight-per-channel", name, f"weight '{ins[slot].name}' is quantized per tensor "
                                   f"(one scale for {channels} output channels): quantize it per channel on axis "
                                   f"{axis_expected}", "error"))
                continue
            if scale.size > 1:
                axis = int(attr(dq, "axis", 1))
                axis = axis + w.ndim if axis < 0 else axis
                if axis != axis_expected or scale.size != channels:
                    out.append(Finding("weight-per-channel", name, f"weight '{ins[slot].name}' has {scale.size} "
                                       f"scales on axis {axis}; the output channels ({channels}) are axis "
                                       f"{axis_expected}", "error"))
    return out


def check_conv_activation(g: Graph, qdq: list[ir.Node]) -> list[Finding]:
    out = []
    for q in qdq:
        if q.op_type != "QuantizeLinear":
            continue
        src = _producer(q.inputs[0])
        if not _op(src, *TRT.weighted, "BatchNormalization"):
            continue
        for dq in (u for u, _ in q.outputs[0].uses() if _op(u, "DequantizeLinear")):
            for user, _ in dq.outputs[0].uses():
                silu = _op(user, "Mul") and any(_op(_producer(v), "Sigmoid") for v in user.inputs)
                if _op(user, *TRT.fused_activations) or silu:
                    act = "SiLU" if silu else user.op_type
                    out.append(Finding("qdq-conv-activation", g.name(q), f"Q/DQ between {src.op_type} "
                                       f"'{g.name(src)}' and its {act} '{g.name(user)}': TensorRT fuses the "
                                       f"activation into the {src.op_type}; quantize after the {act} instead",
                                       "error"))
                    break  # one finding per Q/DQ pair (SiLU reads it twice: Sigmoid and Mul)
            else:
                continue
            break
    return out


def check_residual_add(g: Graph) -> list[Finding]:
    out = []
    for node in g.nodes:
        if not _op(node, "Add") or len(node.inputs) != 2 or any(_is_weight(v) for v in node.inputs):
            continue
        a, b = node.inputs
        # TensorRT fuses the Add into the Conv only when the Conv's output feeds nothing else (else the
        # output is materialized anyway, e.g. the squeeze-excitation x + x * se(x) of PP-OCR's RSE-FPN).
        convs = [_conv_group(v) if len(v.uses()) == 1 and not v.is_graph_output() else None for v in (a, b)]
        dqs = [_dq_of(a), _dq_of(b)]
        name = g.name(node)
        if convs[0] is not None and convs[1] is not None:
            out.append(Finding("residual-add", name, f"Add of two Conv outputs ('{g.name(convs[0])}', "
                               f"'{g.name(convs[1])}') with neither quantized: quantize one (the residual) so the "
                               "Add fuses into the other Conv", "error"))
        elif convs[0] is not None or convs[1] is not None:
            i = 0 if convs[0] is not None else 1
            other = node.inputs[1 - i]
            if dqs[1 - i] is None:
                out.append(Finding("residual-add", name, f"Add after Conv '{g.name(convs[i])}': its residual input "
                                   f"'{other.name}' is not quantized, so TensorRT cannot fuse the Add into the Conv "
                                   "(and runs it in float)", "error"))
        elif all(d is not None for d in dqs):
            for d in dqs:
                conv = _conv_group(d.inputs[0] if _q_of(d) is None else _q_of(d).inputs[0])  # type: ignore[union-attr]
                if conv is not None:
                    out.append(Finding("residual-add", name, f"Q/DQ on the output of Conv '{g.name(conv)}' into this "
                                       "Add: TensorRT could fuse the Add into the Conv without it; quantize only the "
                                       "residual input", "warning"))
                    break
    return out


def check_concat(g: Graph) -> list[Finding]:
    out = []
    for node in g.nodes:
        if not _op(node, "Concat") or any(_is_weight(v) for v in node.inputs):
            continue
        name = g.name(node)
        dqs = [_dq_of(v) for v in node.inputs]
        scales = [_scale(d) if d is not None else None for d in dqs]
        quantized = [s for s in scales if s is not None]
        if quantized and len(quantized) < len(scales):
            floats = [v.name for v, d in zip(node.inputs, dqs) if d is None]
            out.append(Finding("concat-scales", name, f"Concat mixes quantized and float inputs (float: "
                               f"{', '.join(map(str, floats[:3]))}): TensorRT runs it in float and cannot write the "
                               "producers into the concatenation", "warning"))
        if len(quantized) >= 2 and not all(_same_scale(quantized[0], s) for s in quantized[1:]):
            out.append(Finding("concat-scales", name, "quantized Concat inputs have different scales ("
                               f"{', '.join(_fmt(s) for s in quantized[:4])}): they must share one scale "
                               "(the max of their ranges)", "error"))
        if quantized:
            for user, _ in node.outputs[0].uses():
                if _op(user, "QuantizeLinear") and not _same_scale(_scale(user), quantized[0]):
                    out.append(Finding("concat-scales", name, f"Q '{g.name(user)}' on the Concat output has scale "
                                       f"{_fmt(_scale(user))}, its inputs {_fmt(quantized[0])}: use the shared "
                                       "scale (a requantization breaks the Conv+Concat fusion)", "error"))
    return out


def check_pools(g: Graph) -> list[Finding]:
    out = []
    for node in g.nodes:
        if not _op(node, *rules.TRT_POOLS):
            continue
        dq = _dq_of(node.inputs[0])
        q = _q_of(dq)
        if q is None or _conv_group(q.inputs[0]) is None:
            continue
        for user, _ in node.outputs[0].uses():
            if _op(user, "QuantizeLinear") and not _same_scale(_scale(user), _scale(q)):
                conv = _conv_group(q.inputs[0])
                out.append(Finding("qdq-breaks-fusion", g.name(q), f"Q/DQ between Conv '{g.name(conv)}' and "
                                   f"{node.op_type} '{g.name(node)}' with scale {_fmt(_scale(q))}, requantized to "
                                   f"{_fmt(_scale(user))} after the pool: the extra pair separates Conv and pool; "
                                   "drop it (TensorRT moves the pool's Q before the pool)", "error"))
    return out
