"""TensorRT lint: the rules a model must obey to build as the engine we promise, each finding naming a node.

``edgec lint --target jetson-int8 model.onnx`` and the end of every TensorRT compile run these rules on
any model, ours or a user's (for example a QAT export). They are TensorRT's explicit-quantization rules
and the ONNX parser's operator table, stated once as data in edgec.passes.quantize.rules (TENSORRT, the
table placement builds jetson-int8 models to, and the TRT_* parser tables); RULES below names each check.

Severity: ``error`` (the engine will not build, or not as intended), ``warning`` (it builds, slower or
less exact than it could), ``info`` (a fact worth knowing, e.g. a layer deliberately left in float).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx.defs
import onnx_ir as ir

from edgec.backends.tensorrt_qdq import (
    Finding,
    Graph,
    check_concat,
    check_conv_activation,
    check_pools,
    check_qdq_nodes,
    check_residual_add,
    check_weighted,
)
from edgec.graph import attr, opset_version
from edgec.passes.quantize import rules

__all__ = ["RULES", "SEVERITIES", "Finding", "exit_code", "format_findings", "fp16_overflow", "lint", "lint_file"]

SEVERITIES = ("error", "warning", "info")

# Each check, as the findings name it. The table it reads: T = rules.TENSORRT, P = the TRT_* parser tables.
RULES: dict[str, str] = {
    "qdq-dtype": "Q/DQ int8 with zero point 0 (T.symmetric_activations): the parser rejects a non-zero zero "
                 "point and an INT32 DequantizeLinear (T.int32_bias); a Q without a zero point is uint8 in ONNX",
    "qdq-scale": "Q/DQ scales are constant, positive and finite",
    "qdq-opset": "Q/DQ need opset >= 13 (per-channel axis)",
    "weight-per-channel": "weights of T.weighted quantized per output channel on rules.weight_axis",
    "activation-per-tensor": "activations quantized per tensor (TensorRT has no per-channel activations)",
    "weighted-input": "activation and weight of a weighted op quantized together (neither: fp16/fp32, info)",
    "qdq-conv-activation": "no Q/DQ between a weighted op and its T.fused_activations (or SiLU)",
    "residual-add": "T.residual_add: an Add after a Conv has its residual input quantized, the Conv side not",
    "concat-scales": "T.concat_shares_scale: quantized Concat inputs (and its output Q) share one scale",
    "qdq-breaks-fusion": "no requantizing Q/DQ pair between a Conv and a pool (P.TRT_POOLS)",
    "unsupported-op": "op supported by TensorRT's ONNX parser (P.TRT_UNSUPPORTED), no custom domains",
    "resize-mode": "Resize mode supported by TensorRT (P.TRT_RESIZE_MODES, P.TRT_RESIZE_COORDINATES)",
    "opset": "opset readable by TensorRT's ONNX parser (P.TRT_MAX_OPSET: 8.6 reads 17, 10.x 20)",
    "dynamic-shape": "dynamic inputs need an optimization profile (min/opt/max shapes)",
    "int64-weights": "INT64 data initializers (cast to INT32 by TensorRT 8.x; P.TRT_SHAPE_SLOTS are fine)",
    "fp16-overflow": "(jetson-fp16) activation range within fp16's 65504",
}

FP16_MAX = 65504.0
_INT32 = np.iinfo(np.int32)


# ------------------------------------------------------------------------------------------------ entry points
def lint(model: ir.Model, target: Any = None, *, profile: Mapping[str, Sequence[Sequence[int]]] | None = None,
         trt_version: str | None = None, ranges: Mapping[str, tuple[float, float]] | None = None) -> list[Finding]:
    """Every TensorRT rule on ``model``, errors first. ``target`` (a Target or its name) only decides
    whether a model without Q/DQ is worth a warning (int8 targets). ``profile`` maps a dynamic input to
    (min, opt, max) shapes; ``ranges`` (tensor -> (min, max)) enables the fp16-overflow check."""
    from edgec.backends.tensorrt_cache import DEFAULT_TRT_VERSION, version_number

    number = version_number(trt_version or DEFAULT_TRT_VERSION)  # EdgecError naming a malformed version
    major = number // (10000 if number >= 100000 else 1000)
    ctx = Graph(model)
    found: list[Finding] = []
    found += _check_ops(model, ctx, major)
    found += _check_inputs(model, profile or {})
    found += _check_int64(ctx)
    qdq = [n for n in ctx.nodes if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    precision = _precision(target)
    if qdq:
        if opset_version(model) < 13:
            found.append(Finding("qdq-opset", ctx.name(qdq[0]), f"model opset {opset_version(model)} < 13: "
                                 "per-channel Q/DQ (axis) and TensorRT's explicit quantization need opset 13",
                                 "error"))
        found += check_qdq_nodes(ctx, qdq)
        found += check_weighted(ctx)
        found += check_conv_activation(ctx, qdq)
        found += check_residual_add(ctx)
        found += check_concat(ctx)
        found += check_pools(ctx)
    elif precision == "int8":
        found.append(Finding("weighted-input", "<model>", "no QuantizeLinear/DequantizeLinear: TensorRT builds this "
                             "model in float; compile it with --target jetson-int8 to quantize it", "warning"))
    if ranges:
        found += fp16_overflow(model, ranges)
    order = {s: i for i, s in enumerate(SEVERITIES)}
    return sorted(dict.fromkeys(found), key=lambda f: order.get(f.severity, 9))


def lint_file(path: str | os.PathLike, target_name: str | None = "jetson-int8", *,
              shapes: dict[str, tuple[int, ...]] | None = None,
              profile: Mapping[str, Sequence[Sequence[int]]] | None = None,
              target_file: str | os.PathLike | None = None, trt_version: str | None = None) -> list[Finding]:
    """``edgec lint --target NAME MODEL``: load the file (shapes pinned if given) and lint it."""
    from edgec import api, targets

    tgt = targets.get(target_name, target_file) if target_name else None
    model = api.load_model(path, shapes)
    return lint(model, tgt, profile=profile, trt_version=trt_version)


def format_findings(findings: Iterable[Finding], *, source: str = "") -> str:
    """The lint report as text: one line per finding, then a count line (what ``edgec lint`` prints)."""
    findings = list(findings)
    lines = [str(f) for f in findings]
    counts = {s: sum(f.severity == s for f in findings) for s in SEVERITIES}
    head = f"{source}: " if source else ""
    if not findings:
        lines.append(f"{head}lint clean (TensorRT rules)")
    else:
        lines.append(f"{head}{counts['error']} error(s), {counts['warning']} warning(s), {counts['info']} info")
    return "\n".join(lines)


def exit_code(findings: Iterable[Finding]) -> int:
    """1 when any finding is an error (for ``edgec lint`` in CI), else 0."""
    return 1 if any(f.severity == "error" for f in findings) else 0


def fp16_overflow(model: ir.Model, ranges: Mapping[str, tuple[float, float]]) -> list[Finding]:
    """Activations whose calibrated range leaves fp16 (|x| > 65504 becomes inf, then NaN downstream),
    each named with the layer that produces it."""
    producers = {o.name: n for n in model.graph.all_nodes() for o in n.outputs if o.name}
    names = Graph(model)
    out = []
    for tensor, (lo, hi) in ranges.items():
        amax = max(abs(float(lo)), abs(float(hi)))
        if amax <= FP16_MAX:
            continue
        node = producers.get(tensor)
        where = names.name(node) if node is not None else tensor
        kind = f"{node.op_type} output" if node is not None else "input"
        out.append(Finding("fp16-overflow", where, f"{kind} '{tensor}' reaches {amax:.4g} on the calibration "
                           f"data, beyond fp16's {FP16_MAX:g}: it becomes inf in an fp16 engine (NaN outputs); "
                           "keep this layer in fp32 (trtexec --precisionConstraints=obey "
                           f"--layerPrecisions={where}:fp32) or rescale the weights", "warning"))
    return out


def _precision(target: Any) -> str:
    if target is None:
        return ""
    if isinstance(target, str):
        from edgec import targets

        try:
            return targets.get(target).precision
        except Exception:  # noqa: BLE001 - an unknown name only loses the "no Q/DQ" warning
            return ""
    return str(getattr(target, "precision", ""))



# ------------------------------------------------------------------------------------------------ rules
def _check_ops(model: ir.Model, g: Graph, major: int) -> list[Finding]:
    out = []
    table = rules.TRT_UNSUPPORTED[8 if major < 10 else 10]
    limit = rules.TRT_MAX_OPSET[8 if major < 10 else 10]
    opset = opset_version(model)
    tag = "8.6" if major < 10 else "10.x"
    if opset > limit:
        out.append(Finding("opset", "<model>", f"opset {opset}: TensorRT {tag}'s ONNX parser reads opsets up to "
                           f"{limit}; export with --opset {limit} or lower", "error"))
    if opset < 9:
        out.append(Finding("opset", "<model>", f"opset {opset}: TensorRT's ONNX parser needs opset >= 9", "error"))
    for node in model.graph.all_nodes():
        name = g.name(node)
        if node.domain not in ("", "ai.onnx"):
            out.append(Finding("unsupported-op", name, f"{node.domain}.{node.op_type}: custom-domain op, TensorRT "
                               "needs a plugin for it", "error"))
            continue
        if node.op_type in table:
            hint = (" (a QOperator-format quantized model: export QDQ instead)"
                    if node.op_type in ("QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger",
                                        "DynamicQuantizeLinear") else "")
            out.append(Finding("unsupported-op", name, f"{node.op_type} is not supported by TensorRT {tag}'s ONNX "
                               f"parser{hint}", "error"))
            continue
        try:
            onnx.defs.get_schema(node.op_type, min(opset, limit), "")
        except onnx.defs.SchemaError:
            out.append(Finding("unsupported-op", name, f"{node.op_type}: not an ONNX op at opset "
                               f"{min(opset, limit)}, which TensorRT {tag} reads", "error"))
            continue
        if node.op_type == "Resize":
            mode = attr(node, "mode", "nearest")
            mode = mode.decode() if isinstance(mode, bytes) else mode
            ctm = attr(node, "coordinate_transformation_mode", "half_pixel")
            ctm = ctm.decode() if isinstance(ctm, bytes) else ctm
            if mode not in rules.TRT_RESIZE_MODES:
                out.append(Finding("resize-mode", name, f"Resize mode '{mode}': TensorRT supports nearest and "
                                   "linear", "error"))
            if ctm not in rules.TRT_RESIZE_COORDINATES:
                out.append(Finding("resize-mode", name, f"Resize coordinate_transformation_mode '{ctm}' is not "
                                   "supported by TensorRT", "error"))
            if attr(node, "antialias", 0):
                out.append(Finding("resize-mode", name, "antialiased Resize is not supported by TensorRT", "error"))
        if node.op_type == "MaxPool" and len(node.outputs) > 1 and node.outputs[1].uses():
            out.append(Finding("unsupported-op", name, "MaxPool's Indices output is not supported by TensorRT",
                               "error"))
    return out


def _check_inputs(model: ir.Model, profile: Mapping[str, Sequence[Sequence[int]]]) -> list[Finding]:
    out = []
    for v in model.graph.inputs:
        if v.is_initializer() or v.shape is None:
            if v.shape is None and not v.is_initializer():
                out.append(Finding("dynamic-shape", v.name or "<input>", "input has no shape at all; give "
                                   "--shapes or an optimization profile", "error"))
            continue
        dims = list(v.shape)
        dynamic = [i for i, d in enumerate(dims) if not isinstance(d, int) or d < 0]
        if not dynamic:
            continue
        shown = "x".join(str(d) if isinstance(d, int) else str(d.value or "?") for d in dims)
        if v.name not in profile:
            out.append(Finding("dynamic-shape", v.name or "<input>", f"dynamic input [{shown}] and no optimization "
                               f"profile: pin it (--shape {v.name}=1,3,...) or give min/opt/max shapes "
                               "(--min-shape/--opt-shape/--max-shape)", "error"))
            continue
        shapes = [tuple(int(x) for x in s) for s in profile[v.name]]
        if len(shapes) != 3 or any(len(s) != len(dims) for s in shapes):
            out.append(Finding("dynamic-shape", v.name or "<input>", f"profile {shapes} must be (min, opt, max) "
                               f"shapes of rank {len(dims)}", "error"))
            continue
        lo, opt, hi = (np.array(s) for s in shapes)
        fixed = [i for i, d in enumerate(dims) if isinstance(d, int) and d >= 0]
        if not (np.all(lo <= opt) and np.all(opt <= hi)) or any(
                not (lo[i] == opt[i] == hi[i] == dims[i]) for i in fixed):
            out.append(Finding("dynamic-shape", v.name or "<input>", f"profile {shapes} must satisfy min <= opt <= "
                               f"max and keep the static dims of [{shown}]", "error"))
    return out


def _check_int64(g: Graph) -> list[Finding]:
    out = []
    for value in g.model.graph.initializers.values():
        t = value.const_value
        if t is None or t.dtype != ir.DataType.INT64:
            continue
        data_users = [(n, i) for n, i in value.uses() if i not in rules.TRT_SHAPE_SLOTS.get(n.op_type, ())]
        if not data_users:
            continue
        arr = t.numpy()
        node, _ = data_users[0]
        slicing = all(n.op_type == "Slice" for n, _ in data_users)
        if arr.size and (arr.min() < _INT32.min or arr.max() > _INT32.max) and not slicing:
            out.append(Finding("int64-weights", g.name(node), f"INT64 initializer '{value.name}' holds values outside "
                               "int32; TensorRT 8.x casts INT64 weights to INT32 and clamps them", "error"))
        else:
            out.append(Finding("int64-weights", g.name(node), f"INT64 initializer '{value.name}' is used as data by "
                               f"{node.op_type}: TensorRT 8.x casts it to INT32 (values fit, so only a warning "
                               "in the build log)", "info"))
    return out

