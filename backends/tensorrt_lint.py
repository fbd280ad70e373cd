"""TensorRT lint: the rules a model must obey to build as the engine we promise, each finding naming a node.

``edgec lint --target jetson-int8 model.onnx`` and the end of every TensorRT compile run these rules on
any model, ours or a user's (for example a QAT export). They are TensorRT's explicit-quantization rules
(Developer Guide, "Explicit Quantization" and "Q/DQ Layer-Placement Recommendations") and the ONNX
parser's operator table (onnx/onnx-tensorrt docs/operators.md, branches 8.6-GA and 10.1-GA):

  qdq-dtype            Q/DQ are int8 with zero point 0: TensorRT quantization is symmetric, the parser
                       rejects a non-zero zero point and an INT32 DequantizeLinear (the bias); a Q
                       without a zero point is uint8 in ONNX (and in ONNX Runtime), int8 in TensorRT
  qdq-scale            scales are constant, positive and finite
  qdq-opset            Q/DQ need opset >= 13 (per-channel ``axis``)
  weight-per-channel   weights of Conv/ConvTranspose/Gemm/MatMul are quantized per output channel, on the
                       output-channel axis (Conv 0, ConvTranspose 1, Gemm 0 or 1 by transB, MatMul last)
  activation-per-tensor activations are quantized per tensor (TensorRT has no per-channel activations)
  weighted-input       both the activation and the weight input of a weighted op are quantized (or
                       neither: the layer then runs in fp16/fp32, reported as info)
  qdq-conv-activation  no Q/DQ between a weighted op and its activation (Relu, Clip, SiLU...): TensorRT
                       fuses Conv+activation and a Q/DQ pair in between prevents it
  residual-add         an Add after a Conv has its residual (other) input quantized so the Add fuses
                       into the Conv; a Q/DQ on the Conv side of the Add prevents that fusion
  concat-scales        the quantized inputs of a Concat share one scale, and a Q on its output uses it
                       (TensorRT then writes each producer straight into the concatenation)
  qdq-breaks-fusion    no Q/DQ pair on a Conv output feeding a pool with a scale other than the pool's
                       output scale (an extra requantization that separates Conv and pool)
  unsupported-op       ops the TensorRT ONNX parser does not implement (and custom domains)
  resize-mode          Resize modes/transformations TensorRT does not implement (cubic, antialias...)
  opset                opsets the parser does not read (TensorRT 8.6 reads up to 17, 10.x up to 20)
  dynamic-shape        a dynamic input needs an optimization profile (min/opt/max shapes)
  int64-weights        INT64 initializers used as data: TensorRT 8.x casts them to INT32 (values outside
                       int32 are clamped: error), shape operands are fine
  fp16-overflow        (jetson-fp16) activations whose calibrated range exceeds fp16's 65504

Severity: ``error`` (the engine will not build, or not as intended), ``warning`` (it builds, slower or
less exact than it could), ``info`` (a fact worth knowing, e.g. a layer deliberately left in float).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx.defs
import onnx_ir as ir

from edgec.graph import attr, const_array, opset_version

SEVERITIES = ("error", "warning", "info")

RULES: dict[str, str] = {
    "qdq-dtype": "Q/DQ must be int8 with zero point 0 (symmetric); no INT32 DequantizeLinear",
    "qdq-scale": "Q/DQ scales must be constant, positive and finite",
    "qdq-opset": "Q/DQ need opset >= 13",
    "weight-per-channel": "weights quantized per output channel on the output-channel axis",
    "activation-per-tensor": "activations quantized per tensor",
    "weighted-input": "activation and weight of a weighted op quantized together",
    "qdq-conv-activation": "no Q/DQ between a weighted op and its activation",
    "residual-add": "residual input of an Add after a Conv quantized, Conv side not",
    "concat-scales": "quantized Concat inputs (and its output Q) share one scale",
    "qdq-breaks-fusion": "no requantizing Q/DQ pair between a Conv and a pool",
    "unsupported-op": "op supported by TensorRT's ONNX parser",
    "resize-mode": "Resize mode supported by TensorRT",
    "opset": "opset readable by TensorRT's ONNX parser",
    "dynamic-shape": "dynamic inputs need an optimization profile",
    "int64-weights": "INT64 data initializers (cast to INT32 by TensorRT 8.x)",
    "fp16-overflow": "activation range within fp16",
}

WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")
CONV = ("Conv", "ConvTranspose")
# Pointwise ops TensorRT fuses into a preceding Conv/Gemm (with BatchNormalization, already folded by us).
ACTIVATIONS = ("Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Elu", "Selu", "Tanh",
               "Softplus", "PRelu", "ThresholdedRelu", "Mish", "Gelu", "BatchNormalization")
POOLS = ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool")
FP16_MAX = 65504.0

# Ops marked N (not supported) in onnx-tensorrt docs/operators.md: TensorRT 8.6 (branch 8.6-GA, opset <= 17)
# and TensorRT 10.x (branch 10.1-GA, opset 9..20). Ops newer than the parser's opset are caught separately.
def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


UNSUPPORTED_8 = _words(
    "Bernoulli BitShift BlackmanWindow Compress ConcatFromSequence ConvInteger DFT Det DynamicQuantizeLinear "
    "HammingWindow HannWindow Hardmax MatMulInteger MaxRoiPool MaxUnpool MelWeightMatrix Multinomial "
    "NegativeLogLikelihoodLoss Optional OptionalGetElement OptionalHasElement QLinearConv QLinearMatMul STFT "
    "SequenceAt SequenceConstruct SequenceEmpty SequenceErase SequenceInsert SequenceLength SequenceMap "
    "SoftmaxCrossEntropyLoss SplitToSequence StringNormalizer TfIdfVectorizer Unique")
UNSUPPORTED_10 = _words(
    "AffineGrid Bernoulli BitShift BitwiseAnd BitwiseNot BitwiseOr BitwiseXor BlackmanWindow Col2Im "
    "CenterCropPad Compress ConcatFromSequence ConvInteger DFT Det DynamicQuantizeLinear HammingWindow "
    "HannWindow ImageDecoder MatMulInteger MaxRoiPool MaxUnpool MelWeightMatrix Multinomial "
    "NegativeLogLikelihoodLoss Optional OptionalGetElement OptionalHasElement QLinearConv QLinearMatMul "
    "RegexFullMatch STFT SequenceAt SequenceConstruct SequenceEmpty SequenceErase SequenceInsert SequenceLength "
    "SequenceMap SoftmaxCrossEntropyLoss SplitToSequence StringConcat StringNormalizer StringSplit "
    "TfIdfVectorizer Unique")
MAX_OPSET = {8: 17, 10: 20}

# Input slots that hold shapes, axes or indices: INT64 there is plumbing the parser handles.
_SHAPE_SLOTS: dict[str, tuple[int, ...]] = {
    "Reshape": (1,), "Expand": (1,), "Tile": (1,), "Slice": (1, 2, 3, 4), "Unsqueeze": (1,), "Squeeze": (1,),
    "ConstantOfShape": (0,), "Resize": (1, 2, 3), "Upsample": (1,), "Pad": (1, 3), "Split": (1,),
    "ReduceSum": (1,), "ReduceMean": (1,), "ReduceMax": (1,), "ReduceMin": (1,), "ReduceProd": (1,),
    "ReduceL2": (1,), "Gather": (1,), "GatherElements": (1,), "GatherND": (1,), "ScatterND": (1,),
    "ScatterElements": (1,), "TopK": (1,), "OneHot": (1,), "Range": (0, 1, 2), "CumSum": (1,),
    "NonMaxSuppression": (2,), "Trilu": (1,),
}
_INT32 = np.iinfo(np.int32)


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


# ------------------------------------------------------------------------------------------------ entry points
def lint(model: ir.Model, target: Any = None, *, profile: Mapping[str, Sequence[Sequence[int]]] | None = None,
         trt_version: str | None = None, ranges: Mapping[str, tuple[float, float]] | None = None) -> list[Finding]:
    """Every TensorRT rule on ``model``, errors first. ``target`` (a Target or its name) only decides
    whether a model without Q/DQ is worth a warning (int8 targets). ``profile`` maps a dynamic input to
    (min, opt, max) shapes; ``ranges`` (tensor -> (min, max)) enables the fp16-overflow check."""
    from edgec.backends.tensorrt_cache import DEFAULT_TRT_VERSION, version_number

    number = version_number(trt_version or DEFAULT_TRT_VERSION)  # EdgecError naming a malformed version
    major = number // (10000 if number >= 100000 else 1000)
    ctx = _Graph(model)
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
        found += _check_qdq_nodes(ctx, qdq)
        found += _check_weighted(ctx)
        found += _check_conv_activation(ctx, qdq)
        found += _check_residual_add(ctx)
        found += _check_concat(ctx)
        found += _check_pools(ctx)
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
    names = _Graph(model)
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


# ------------------------------------------------------------------------------------------------ graph view
class _Graph:
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
        if _op(p, *ACTIVATIONS):
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
def _check_ops(model: ir.Model, g: _Graph, major: int) -> list[Finding]:
    out = []
    table = UNSUPPORTED_8 if major < 10 else UNSUPPORTED_10
    limit = MAX_OPSET[8 if major < 10 else 10]
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
            if mode not in ("nearest", "linear"):
                out.append(Finding("resize-mode", name, f"Resize mode '{mode}': TensorRT supports nearest and "
                                   "linear", "error"))
            if ctm not in ("half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric",
                           "align_corners"):
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


def _check_int64(g: _Graph) -> list[Finding]:
    out = []
    for value in g.model.graph.initializers.values():
        t = value.const_value
        if t is None or t.dtype != ir.DataType.INT64:
            continue
        data_users = [(n, i) for n, i in value.uses() if i not in _SHAPE_SLOTS.get(n.op_type, ())]
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


def _check_qdq_nodes(g: _Graph, qdq: list[ir.Node]) -> list[Finding]:
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
            if dtype == ir.DataType.INT32:
                out.append(Finding("qdq-dtype", name, "INT32 DequantizeLinear (an integer bias): TensorRT's ONNX "
                                   "parser rejects it; keep the bias in float", "error"))
                continue
        if dtype is not None and dtype != ir.DataType.INT8:
            out.append(Finding("qdq-dtype", name, f"{node.op_type} is {dtype.name}: TensorRT quantizes to INT8 only",
                               "error"))
        if zp is not None and np.any(zp != 0):
            vals = np.unique(zp)
            out.append(Finding("qdq-dtype", name, f"zero point {vals[:4].tolist()} is not 0: TensorRT quantization "
                               "is symmetric (asymmetric zero points are rejected by the parser)", "error"))
        if scale is not None and scale.size > 1 and not _is_weight(node.inputs[0]):
            out.append(Finding("activation-per-tensor", name, f"activation '{node.inputs[0].name}' has {scale.size} "
                               "per-channel scales: TensorRT quantizes activations per tensor", "error"))
    return out


def _weight_axis(node: ir.Node, slot: int, rank: int) -> int | None:
    """The output-channel axis of a weighted op's weight input, or None when there is none to check."""
    if node.op_type == "Conv" and slot == 1:
        return 0
    if node.op_type == "ConvTranspose" and slot == 1:
        return 1
    if node.op_type == "Gemm" and slot == 1:
        return 0 if attr(node, "transB", 0) else 1
    if node.op_type == "MatMul" and slot == 1 and rank >= 2:
        return rank - 1
    return None


def _check_weighted(g: _Graph) -> list[Finding]:
    out = []
    for node in g.nodes:
        if not _op(node, *WEIGHTED) or len(node.inputs) < 2:
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
            axis_expected = _weight_axis(node, slot, w.ndim)
            if axis_expected is None:
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


def _check_conv_activation(g: _Graph, qdq: list[ir.Node]) -> list[Finding]:
    out = []
    for q in qdq:
        if q.op_type != "QuantizeLinear":
            continue
        src = _producer(q.inputs[0])
        if not _op(src, *WEIGHTED, "BatchNormalization"):
            continue
        for dq in (u for u, _ in q.outputs[0].uses() if _op(u, "DequantizeLinear")):
            for user, _ in dq.outputs[0].uses():
                silu = _op(user, "Mul") and any(_op(_producer(v), "Sigmoid") for v in user.inputs)
                if _op(user, *ACTIVATIONS) or silu:
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


def _check_residual_add(g: _Graph) -> list[Finding]:
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


def _check_concat(g: _Graph) -> list[Finding]:
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


def _check_pools(g: _Graph) -> list[Finding]:
    out = []
    for node in g.nodes:
        if not _op(node, *POOLS):
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
