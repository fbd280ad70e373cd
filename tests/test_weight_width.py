"""The weight width is the target's, chosen for the machine that RUNS the model (issue #24).

cpu-int8 writes 7-bit weights everywhere (portable: MLAS without VNNI sums pairs of u8*s8 products in a
saturating int16); cpu-int8-vnni and ``--set weight_bits=8`` write the full 8 bits. The key quantization
checks run with the width forced each way, scored so that no figure depends on the CPU running the tests:
- 7-bit models run in ONNX Runtime's fused int8 kernels (they cannot saturate on any x86);
- 8-bit models are scored with ORT's reference numerics (optimization "basic": DequantizeLinear feeds a
  float op, what an int32-accumulating VNNI/AMX/ARM kernel computes, up to float rounding), because on a
  host without VNNI the fused kernels saturate them (digits: 9.7 dB fused vs 38.4 dB reference, measured).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import edgec
from edgec import metrics, model_io, runtime
from edgec.graph import const_array

DIGITS, DIGITS_SAMPLES = edgec.example_paths()

# numerics each width is scored with (see the module docstring)
SCORING = {7: "all", 8: "basic"}


def _digits() -> tuple[list[dict], list[dict]]:
    x = np.load(DIGITS_SAMPLES)["input"]
    return [{"input": a} for a in x[:64]], [{"input": a} for a in x[200:360]]


def _max_weight(model) -> int:
    """The largest |q| over every int8 weight read through a DequantizeLinear."""
    out = 0
    for node in model.graph:
        if node.op_type == "DequantizeLinear" and node.inputs[0].const_value is not None:
            q = const_array(node.inputs[0])
            if q.dtype == np.int8:
                out = max(out, int(np.abs(q.astype(np.int16)).max()))
    return out


@pytest.mark.parametrize("bits, how", [(7, {"target": "cpu-int8"}),
                                       (8, {"target": "cpu-int8-vnni"}),
                                       (8, {"target": "cpu-int8", "options": {"weight_bits": 8}})])
def test_digits_each_width(bits: int, how: dict) -> None:
    calib, held = _digits()
    res = edgec.compile(str(DIGITS), calib=calib, target=how["target"],
                        options={"bench_runs": 0, **how.get("options", {})})
    q = next(r for r in res.records if r.name == "quantize")
    assert q.details["weight_bits"] == bits and f"{bits}-bit" in q.details["weight_bits_why"]
    # Per-channel symmetric scales put every channel's largest weight on the top level.
    assert _max_weight(res.model) == 2 ** (bits - 1) - 1
    ref = runtime.run(runtime.session(str(DIGITS), optimization="basic"), held)
    got = runtime.run(runtime.session(model_io.to_bytes(res.model), optimization=SCORING[bits]), held)
    d = metrics.drift(ref, got)
    # measured on 160 held-out digits: 7-bit 35.8 dB, 8-bit 38.4 dB; top-1 agreement 1.0 both
    assert d.sqnr_db >= (33.0 if bits == 7 else 36.0), d.sqnr_db
    assert d.top1 is not None and d.top1 >= 0.99


def test_bad_weight_bits_is_a_user_error() -> None:
    calib, _ = _digits()
    for bad in (6, "eight"):
        with pytest.raises(edgec.EdgecError, match="weight_bits"):
            edgec.compile(str(DIGITS), calib=calib[:8], target="cpu-int8", options={"bench_runs": 0, "weight_bits": bad})


def _photo_feeds(zoo, n: int, size: int, seed: int) -> list[dict[str, np.ndarray]]:
    imgs = zoo.images("photos", n=n, size=(size, size), seed=seed)
    mean, std = np.array(zoo.IMAGENET_MEAN, np.float32), np.array(zoo.IMAGENET_STD, np.float32)
    return [{"input": ((im / np.float32(255) - mean) / std).transpose(2, 0, 1)[None].astype(np.float32)}
            for im in imgs]


@pytest.mark.parametrize("bits", [7, 8])
def test_beats_ort_quantize_static_at_the_same_width(bits: int, resnet_onnx: Path, mobilenet_onnx: Path, zoo,
                                                     tmp_path: Path) -> None:
    """Like for like: edgec's portable 7-bit target against ORT's portable setting (reduce_range=True, 7-bit
    weights), both in fused kernels; edgec's 8-bit target against ORT's default 8-bit weights, both in
    reference numerics. Same calibration images, held-out photos."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    calib = _photo_feeds(zoo, 32, 64, seed=0)
    evals = _photo_feeds(zoo, 12, 64, seed=99)
    target = "cpu-int8" if bits == 7 else "cpu-int8-vnni"
    for src in (resnet_onnx, mobilenet_onnx):
        # samples=evals: edgec calibrates on all 32 images like ORT (one set alone would lose every 4th to
        # its held-aside scoring set).
        ours = edgec.compile(src, target=target, calib=calib, samples=evals, options={"bench_runs": 0}).model

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.it = iter(calib)

            def get_next(self):
                return next(self.it, None)

        ort_path = tmp_path / f"{Path(src).stem}_{bits}.onnx"
        quantize_static(str(src), str(ort_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=bits == 7, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        ref = runtime.run(runtime.session(str(src), optimization="basic"), evals)
        s_ours = metrics.drift(ref, runtime.run(runtime.session(model_io.to_bytes(ours), optimization=SCORING[bits]),
                                                evals)).sqnr_db
        s_ort = metrics.drift(ref, runtime.run(runtime.session(ort_path, optimization=SCORING[bits]), evals)).sqnr_db
        margin = MARGIN[(Path(src).stem, bits)]
        floor = 15 if "resnet" in str(src) else 4
        assert s_ours >= s_ort + margin and s_ours > floor, (src, bits, s_ours, s_ort)
        # Test-size nets (width 16) carry relatively more scales/names; the 224 px ResNet-18 is 0.25x.
        fp32 = len(model_io.to_bytes(edgec.compile(src, target="cpu-fp32").model))
        assert len(model_io.to_bytes(ours)) <= 0.28 * fp32 or "mobilenet" in str(src)


# dB edgec must lead ORT by, per (model, width). Measured (12 held-out photos, 64 px): ResNet-18 7-bit 19.6 vs
# 16.2, 8-bit 20.9 vs 17.7; the untrained random-BN MobileNetV2 7-bit 6.1 vs 4.1, 8-bit 6.4 vs 3.8. The
# earlier test asked +3 dB on MobileNetV2 of edgec's 7-bit model against ORT's 8-bit one in fused kernels:
# met only on hosts without VNNI, where ORT's 8-bit weights saturate; like for like the lead is 2.0-2.5 dB.
MARGIN = {("resnet18", 7): 3.0, ("resnet18", 8): 3.0, ("mobilenetv2", 7): 1.5, ("mobilenetv2", 8): 2.0}
