"""One rule table per runtime: which ops it runs in int8, which share scales, where it wants Q/DQ.

Data, read by both sides of the quantization room: placement.py BUILDS a model to a table (where Q/DQ
pairs go, which tensors share one scale), backends/tensorrt_lint.py CHECKS any model against the TensorRT
table (ours or a QAT export), and the TFLite converter takes its kernels' fixed Sigmoid/Softmax output
range from the TFLite table. The target's scheme names its table (targets.toml ``placement = "ort"``,
``QuantScheme.rules``), so a rule is written once, here, and a new runtime is one more table.

ort       ONNX Runtime CPU QDQ fusions (onnxruntime/core/optimizer/qdq_transformer/selectors_actions/
          qdq_selectors.cc): every input and output activation of an op with an int8 kernel is quantized;
          data-movement ops share their input's scale so ORT drops the DQ -> op -> Q around them;
          Relu/Clip after a quantized op are absorbed (ReluQuantFusion/ClipQuantFusion).
tensorrt  TensorRT explicit quantization (Developer Guide, "Explicit Quantization" and "Q/DQ
          Layer-Placement Recommendations"; ONNX parser: onnx/onnx-tensorrt docs/operators.md, branches
          8.6-GA and 10.1-GA): Q/DQ only on the inputs of weighted ops and on the residual input of an Add
          after a Conv; int8, symmetric, per-tensor activations, float bias.
tflite    TFLite full integer (XNNPACK / the reference int8 kernels): every float activation quantized,
          Relu/Clip fused, Sigmoid/Softmax outputs on the fixed 1/256 step, zero point -128.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# Ops whose output is a rearrangement (or max/nearest pick) of input values: same scale in and out.
PASS_THROUGH = ("Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "MaxPool", "Resize", "Slice",
                "Split", "Gather", "Identity", "DepthToSpace", "SpaceToDepth", "Pad")
ABSORBED = ("Relu", "Clip")  # the Q goes after them, its range starting at 0: the runtime fuses them
# The output-channel axis of each weighted op's weight (input 1): per-channel scales run along it.
# "transB": Gemm's is 0 with transB=1, else 1. -1: the last axis (MatMul's B is [..., K, N]).
WEIGHT_AXIS: dict[str, int | str] = {"Conv": 0, "ConvTranspose": 1, "Gemm": "transB", "MatMul": -1}


def weight_axis(op: str, trans_b: int = 0, rank: int = 2) -> int | None:
    """The output-channel axis of ``op``'s weight (rank ``rank``), or None for an op with no weight."""
    axis = WEIGHT_AXIS.get(op)
    if axis is None:
        return None
    if axis == "transB":
        return 0 if trans_b else 1
    assert isinstance(axis, int)
    return axis + rank if axis < 0 else axis


@dataclasses.dataclass(frozen=True)
class RuntimeRules:
    """What one runtime runs in int8 and where it wants the Q/DQ pairs. Activations are per tensor in every
    runtime here; weights per output channel on ``weight_axis``."""

    name: str  # the scheme's ``placement`` value naming this table
    runtime: str
    # Where Q/DQ go: "int8-ops" = inputs and outputs of every op in ``weighted`` + ``int8_ops``;
    # "weighted-inputs" = the data inputs of weighted ops only (plus the residual-Add and Concat rules);
    # "everywhere" = every float activation (full integer).
    qdq_at: Literal["int8-ops", "weighted-inputs", "everywhere"]
    weighted: tuple[str, ...] = WEIGHTED  # int8 weights, per output channel
    int8_ops: tuple[str, ...] = ()  # int8 kernels with their own output scale
    pass_through: tuple[str, ...] = ()  # output shares the input's scale
    absorbed: tuple[str, ...] = ()  # activations the Q moves after (fused into their producer)
    fused_activations: tuple[str, ...] = ()  # fused into the weighted op before them: no Q/DQ in between
    fixed_outputs: dict[str, tuple[float, int]] = dataclasses.field(default_factory=dict)  # op -> (scale, zp)
    float_outputs: tuple[str, ...] = ()  # ops whose graph output may stay float after an int8 kernel
    concat_shares_scale: bool = True  # the inputs and output of a quantized Concat share one scale
    residual_add: bool = False  # quantize an Add's residual input so the Add fuses into the Conv before it
    fold_scalar_mul: bool = False  # Mul/Div by a positive scalar read as a scaled DequantizeLinear
    symmetric_activations: bool = False  # the runtime demands zero point 0 (else the scheme chooses)
    int32_bias: bool = True  # a bias as DequantizeLinear(int32) is read
    explicit_zero_point: tuple[str, ...] = WEIGHTED  # ops whose weight/bias DQ carries its zero point input
    float_bias: tuple[str, ...] = ()  # ops whose int32 bias is left float in the file (quantized at load)
    a16: bool = False  # 16-bit activations (A16W8 mixed precision) run
    decompose_hard_activations: bool = False  # HardSwish/HardSigmoid rewritten into int8-runnable ops


ORT_CPU = RuntimeRules(
    "ort", "ONNX Runtime CPU", "int8-ops",
    int8_ops=("Add", "Mul", "Concat", "AveragePool", "GlobalAveragePool", "Sigmoid", "LeakyRelu"),
    pass_through=PASS_THROUGH, absorbed=ABSORBED,
    float_outputs=("Gemm", "MatMul"),  # QGemm / MatMulIntegerToFloat write float
    fold_scalar_mul=True,
    # QLinearConv fuses a zero-point-less weight DQ; QGemm/MatMulIntegerToFloat do not.
    explicit_zero_point=("Gemm", "MatMul"),
    # BiasQuantization (qdq_transformer/bias_quantization.cc) quantizes a QDQ Conv's float bias at load.
    float_bias=("Conv",),
    a16=True,  # com.microsoft QuantizeLinear/DequantizeLinear take uint16/int16
    decompose_hard_activations=True)  # no int8 HardSwish/HardSigmoid kernel

TENSORRT = RuntimeRules(
    "tensorrt", "TensorRT", "weighted-inputs",
    # Pointwise ops TensorRT fuses into a preceding Conv/Gemm (BatchNormalization: already folded by us).
    fused_activations=("Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Elu", "Selu",
                       "Tanh", "Softplus", "PRelu", "ThresholdedRelu", "Mish", "Gelu", "BatchNormalization"),
    residual_add=True, symmetric_activations=True, int32_bias=False)

TFLITE = RuntimeRules(
    "tflite", "TFLite (XNNPACK / int8 reference kernels)", "everywhere",
    pass_through=PASS_THROUGH, absorbed=ABSORBED,
    fixed_outputs={"Sigmoid": (1.0 / 256.0, -128), "Softmax": (1.0 / 256.0, -128)})

RULES: dict[str, RuntimeRules] = {r.name: r for r in (ORT_CPU, TENSORRT, TFLITE)}

# ------------------------------------------------------------------ TensorRT's ONNX parser (lint only)
# A Conv/ConvTranspose output into one of these pools: TensorRT fuses the pair when the pool keeps the
# Conv output's scale (it moves the pool's Q before the pool).
TRT_POOLS = ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool")
def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Ops marked N (not supported) in onnx-tensorrt docs/operators.md: TensorRT 8.6 (branch 8.6-GA, opset <= 17)
# and TensorRT 10.x (branch 10.1-GA, opset 9..20). Ops newer than the parser's opset are caught separately.
TRT_UNSUPPORTED = {
    8: _words(
        "Bernoulli BitShift BlackmanWindow Compress ConcatFromSequence ConvInteger DFT Det DynamicQuantizeLinear "
        "HammingWindow HannWindow Hardmax MatMulInteger MaxRoiPool MaxUnpool MelWeightMatrix Multinomial "
        "NegativeLogLikelihoodLoss Optional OptionalGetElement OptionalHasElement QLinearConv QLinearMatMul STFT "
        "SequenceAt SequenceConstruct SequenceEmpty SequenceErase SequenceInsert SequenceLength SequenceMap "
        "SoftmaxCrossEntropyLoss SplitToSequence StringNormalizer TfIdfVectorizer Unique"),
    10: _words(
        "AffineGrid Bernoulli BitShift BitwiseAnd BitwiseNot BitwiseOr BitwiseXor BlackmanWindow Col2Im "
        "CenterCropPad Compress ConcatFromSequence ConvInteger DFT Det DynamicQuantizeLinear HammingWindow "
        "HannWindow ImageDecoder MatMulInteger MaxRoiPool MaxUnpool MelWeightMatrix Multinomial "
        "NegativeLogLikelihoodLoss Optional OptionalGetElement OptionalHasElement QLinearConv QLinearMatMul "
        "RegexFullMatch STFT SequenceAt SequenceConstruct SequenceEmpty SequenceErase SequenceInsert SequenceLength "
        "SequenceMap SoftmaxCrossEntropyLoss SplitToSequence StringConcat StringNormalizer StringSplit "
        "TfIdfVectorizer Unique"),
}
TRT_MAX_OPSET = {8: 17, 10: 20}
# Input slots that hold shapes, axes or indices: INT64 there is plumbing the parser handles.
TRT_SHAPE_SLOTS: dict[str, tuple[int, ...]] = {
    "Reshape": (1,), "Expand": (1,), "Tile": (1,), "Slice": (1, 2, 3, 4), "Unsqueeze": (1,), "Squeeze": (1,),
    "ConstantOfShape": (0,), "Resize": (1, 2, 3), "Upsample": (1,), "Pad": (1, 3), "Split": (1,),
    "ReduceSum": (1,), "ReduceMean": (1,), "ReduceMax": (1,), "ReduceMin": (1,), "ReduceProd": (1,),
    "ReduceL2": (1,), "Gather": (1,), "GatherElements": (1,), "GatherND": (1,), "ScatterND": (1,),
    "ScatterElements": (1,), "TopK": (1,), "OneHot": (1,), "Range": (0, 1, 2), "CumSum": (1,),
    "NonMaxSuppression": (2,), "Trilu": (1,),
}
TRT_RESIZE_MODES = ("nearest", "linear")
TRT_RESIZE_COORDINATES = ("half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners")
