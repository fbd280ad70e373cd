"""tools/bench.py smoke tests on the bundled digits model (marked bench; together well under a minute on a quiet
machine): every row kind (anchors, ORT, LiteRT, TensorRT-without-TensorRT), the summary table and the plot."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

REPO = Path(__file__).resolve().parent.parent
# columns after the variant name
SIZE, NODES, LATENCY, XFP32, SQNR, TOP1, ACC, BUILD, RSS, NOTE = range(10)


def _rows(text: str) -> dict[str, list[str]]:
    return {m.group(1): m.group(2).split(" | ")
            for m in re.finditer(r"^\| (fp32|onnxsim|onnxslim|ort-quant|edgec:\S+) \| (.+) \|$", text, re.MULTILINE)}


@pytest.mark.bench
def test_bench_digits_every_row_kind(tmp_path: Path) -> None:
    out = tmp_path / "B.md"
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "bench.py"), "--quick", "--models", "digits",
                           "--targets", "cpu-int8", "tflite-fp32", "jetson-int8", "--out", str(out)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = out.read_text()
    rows = _rows(text)
    assert {"fp32", "onnxsim", "onnxslim", "ort-quant", "edgec:cpu-int8", "edgec:tflite-fp32",
            "edgec:jetson-int8"} <= set(rows)
    # Node counts: the digits graph has BatchNormalization nodes that a simplifier or edgec folds away.
    nodes = {k: int(r[NODES]) for k, r in rows.items()}
    assert nodes["onnxsim"] < nodes["fp32"] and nodes["onnxslim"] < nodes["fp32"]
    assert nodes["ort-quant"] > nodes["fp32"]  # Q/DQ pairs
    assert 3 <= nodes["edgec:tflite-fp32"] < nodes["fp32"]  # TFLite operators, BN folded into the convs
    # LiteRT really ran the .tflite: an exact conversion agrees to float rounding, and is timed.
    lite = rows["edgec:tflite-fp32"]
    assert float(lite[SQNR]) > 80
    assert float(lite[ACC]) >= 0.75  # 4 held-out digits in --quick
    assert float(lite[LATENCY].split()[0]) > 0
    # TensorRT is not installed: numerics of the explicit-quantization ONNX, no latency, the reason said.
    trt = rows["edgec:jetson-int8"]
    assert trt[LATENCY].startswith("–") and "engine not built: TensorRT not available" in trt[NOTE]
    assert "lint" in trt[NOTE]
    assert 15 < float(trt[SQNR]) < 80 and float(trt[SIZE]) < 0.7 * float(rows["fp32"][SIZE])
    assert 5 < float(rows["ort-quant"][SQNR]) < 60  # int8 is lossy but not broken
    assert 20 < float(rows["ort-quant"][RSS]) < 4000  # a plausible peak RSS of the build process, in MB
    # Summary: one line for the model with the edgec / ORT-quant ratios and the node counts.
    line = next(ln for ln in text.splitlines() if ln.startswith("| digits |"))
    cells = line.strip("|").split(" | ")
    assert re.fullmatch(r"x\d+\.\d\d", cells[1].strip())  # int8 latency ratio
    assert re.fullmatch(r"x\d+\.\d\d", cells[4].strip())  # int8 size / fp32 size
    # Calibration time and memory, edgec's default and edgec with ORT's method (MinMax), both against ORT.
    assert re.fullmatch(r"x\d+\.\d\d \(x\d+\.\d\d\)", cells[5].strip()), cells[5]
    assert "edgec:cpu-int8@minmax" in rows
    assert cells[8].strip().startswith(str(nodes["fp32"]))
    assert cells[9].strip().startswith("tflite-fp32 x")
    png = out.with_suffix(".png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000


@pytest.mark.bench
def test_refused_conversion_is_a_row_with_the_reason(tmp_path: Path) -> None:
    """An op the TFLite emitter has no mapping for: the build reports the one-line error, nothing crashes."""
    sys.path.insert(0, str(REPO / "tools"))
    import bench

    # Det (matrix determinant): no TFLite builtin computes it, so no emitter will ever map it.
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [])
    model = helper.make_model(helper.make_graph([helper.make_node("Det", ["x"], ["y"])], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    src = tmp_path / "det.onnx"
    onnx.save(model, src)
    feeds = [{"x": np.array([[2, 0, 1], [1, 3, 0], [0, 1, 4]], dtype=np.float32)}]
    bench.save_feeds(feeds, tmp_path / "calib.npz")
    v = bench.build("edgec:tflite-fp32", src, tmp_path / "out", tmp_path / "calib.npz")
    assert v.path is None
    assert v.note.startswith("refused: EdgecError:") and "Det" in v.note and "\n" not in v.note
