"""The depthwise pass's end-to-end budget (``min_sqnr`` / --dw-min-sqnr) and its "nothing pays" record (#23).

On the YOLO-style detector exported from PyTorch (tools/depthwise_compare.py) with real photos: the recorded
end-to-end drift is the model's real drift on the held-out calibration feeds, a budget keeps it above the
bound (and below what the unbounded pass does), held-aside photos stay close to it; and when no pair pays
(floor unreachable, the runtime slower, or every pair breaking the budget) the model is unchanged and the
record and warnings say why.
"""

from __future__ import annotations

import numpy as np
from test_depthwise import conv_graph, detector, detector_feeds, outputs, photo_feeds, run  # noqa: F401

from edgec import model_io
from edgec.metrics import drift

# Many replacements, so their errors add up at the outputs; 6 feeds (3 held out for the drift) and no ALS
# rounds keep the default run cheap (the fits are tests/test_depthwise.py's business).
LOW_FLOOR = "depthwise:max_error=12:max_feeds=6:als_rounds=0"


def test_budget_bounds_the_end_to_end_drift(detector, detector_feeds):  # noqa: F811
    calib, evaluation = detector_feeds
    base = model_io.load(detector)
    ref_eval = outputs(base, evaluation)
    free, rec_free, _ = run(model_io.clone(base), LOW_FLOOR, calib[:2], calib=calib)
    e2e_free = rec_free.details["end_to_end"]
    n_free = rec_free.details["replaced"]
    assert n_free >= 6 and e2e_free["min_sqnr"] is None
    # The record is the model's real drift on the held-out calibration feeds (the odd ones of the 16 taken).
    held = calib[:: len(calib) // 6][:6][1::2]
    measured = drift(outputs(base, held), outputs(free, held))
    assert e2e_free["feeds"] == 3 and abs(measured.sqnr_db - e2e_free["sqnr_db"]) < 0.05

    budget = e2e_free["sqnr_db"] + 6.0  # unreachable with every pair: the budget must drop some
    out, rec, _ = run(model_io.clone(base), LOW_FLOOR, calib[:2], calib=calib, options={"dw_min_sqnr": budget})
    e2e = rec.details["end_to_end"]
    kept = rec.details["replaced"]
    assert 0 < kept < n_free, (kept, n_free)
    assert e2e["min_sqnr"] == budget and e2e["sqnr_db"] >= budget and e2e["evaluations"] >= 2
    assert drift(outputs(base, held), outputs(out, held)).sqnr_db >= budget - 0.05
    rejected = [d for d in rec.details["layers"] if d.get("budget_rejected")]
    assert len(rejected) == n_free - kept and all("end-to-end budget" in d["reason"] for d in rejected)
    # Held-aside photos (another seed) were never used: they land near the budget, far above the free run.
    eval_db = drift(ref_eval, outputs(out, evaluation)).sqnr_db
    free_db = drift(ref_eval, outputs(free, evaluation)).sqnr_db
    assert eval_db >= budget - 3.0 and eval_db > free_db + 3.0, (eval_db, free_db, budget)
    assert f"{kept} of" in rec.details["summary"] and "end-to-end outputs" in rec.details["summary"]


def test_nothing_pays_leaves_the_model_unchanged_and_says_so(detector, detector_feeds):  # noqa: F811
    calib, _ = detector_feeds
    base = model_io.load(detector)
    before = [(n.op_type, n.name) for n in base.graph]
    # A 60 dB floor: no rank below break-even reaches it on a trained-like 3x3 conv.
    out, rec, ctx = run(model_io.clone(base), "depthwise:max_error=60:max_feeds=4:als_rounds=0", calib[:2],
                        calib=calib)
    assert not rec.changed and rec.details["replaced"] == 0
    s = rec.details["summary"]
    assert s.startswith("depthwise: no layer pays") and "miss the 60 dB floor" in s and "model unchanged" in s
    assert s in ctx.warnings and rec.details["end_to_end"] is None
    assert [(n.op_type, n.name) for n in out.graph] == before
    # Every pair meets a low floor but the budget is beyond reach: all rejected, nothing changes, the reason given.
    out, rec, ctx = run(model_io.clone(base), LOW_FLOOR, calib[:2], calib=calib, options={"dw_min_sqnr": 300})
    assert not rec.changed and rec.details["replaced"] == 0
    assert "would take the outputs below min_sqnr 300 dB" in rec.details["summary"]
    assert [n.op_type for n in out.graph].count("Conv") == [n.op_type for n in base.graph].count("Conv")


def test_runtime_slower_everywhere_is_said(photo_images):
    """Full rank on a small conv: more MACs and an extra kernel, the runtime finds the pair slower (as in
    test_depthwise's latency test): no change, and the summary names the runtime."""
    feeds = photo_feeds(photo_images[:2], cin=8, hw=16)
    out, rec, ctx = run(conv_graph(cin=8, cout=16, hw=16), "depthwise:rank=9:latency=true", feeds[:1], calib=feeds)
    assert not rec.changed and [n.op_type for n in out.graph] == ["Conv"]
    assert ("of 1 eligible convs: 0 miss the 25 dB floor below break-even; 1 meet it but ONNX Runtime runs "
            "the pair slower") in rec.details["summary"]
    assert rec.details["summary"] in ctx.warnings
    np.testing.assert_array_equal(outputs(out, feeds[:1])[0]["y"], outputs(conv_graph(cin=8, cout=16, hw=16),
                                                                           feeds[:1])[0]["y"])


def test_full_rank_passes_any_budget(detector, detector_feeds):  # noqa: F811
    """Full rank replaces every layer exactly: a budget keeps all of them, with nothing to measure (the exact
    SVD needs no data), while a lossy rank with the same budget is measured and bounded."""
    calib, _ = detector_feeds
    _, rec, _ = run(model_io.load(detector), "depthwise:rank=9:max_feeds=4", calib[:2], calib=calib,
                    options={"dw_min_sqnr": 60.0})
    assert rec.details["replaced"] == 11 and rec.details["end_to_end"] is None and rec.exact


def test_cli_budget_flag_reaches_the_pass_and_is_met(tmp_path):
    """`--add depthwise --dw-min-sqnr` on the bundled digits CNN (trained, real samples): the report's depthwise
    record carries the budget and an end-to-end drift at or above it."""
    import json

    from edgec.api import example_paths
    from edgec.cli import main as cli

    model, samples = example_paths()
    out = tmp_path / "o"
    assert cli(["compile", str(model), "--target", "cpu-fp32", "--calib", str(samples), "--add", "depthwise",
                "--dw-max-error", "15", "--dw-min-sqnr", "30", "-o", str(out), "-q"]) == 0
    rec = next(r for r in json.loads((out / "report.json").read_text())["passes"] if r["name"] == "depthwise")
    e2e = rec["details"]["end_to_end"]
    assert rec["details"]["settings"]["min_sqnr"] == 30.0
    # Two convs meet the 15 dB floor with fewer MACs; together they take the outputs below 30 dB, so the one
    # with the larger MAC saving is kept and the other is rejected by the budget (measured: 32.1 dB, 3 runs).
    rejected = [d for d in rec["details"]["layers"] if d.get("budget_rejected")]
    assert rec["details"]["replaced"] == 1 and len(rejected) == 1 and e2e["evaluations"] == 3
    assert e2e["min_sqnr"] == 30.0 and e2e["sqnr_db"] >= 30.0 and e2e["cosine"] > 0.999
    assert rec["details"]["summary"].startswith("depthwise: 1 of 4 eligible convs replaced")


def test_latency_mode_checks_the_whole_model_too(photo_images):
    """After the per-pair checks, the whole model is timed with and without the pairs in the target runtime
    (LiteRT here); the pairs stay only if it is faster, else none does and each layer says why."""
    from test_depthwise import low_rank_weight

    import edgec

    feeds = photo_feeds(photo_images[:2], cin=64, hw=40)
    model = conv_graph(cin=64, cout=64, hw=40, weight=low_rank_weight(64, 64, 1))
    res = edgec.compile(model, target="tflite-fp32", passes="depthwise:rank=1:latency=true", calib=feeds,
                        samples=feeds[:1], options={"bench_runs": 0})
    d = next(r for r in res.records if r.name == "depthwise").details
    (layer,) = d["layers"]
    if layer["latency"]["ratio"] >= 1.0:  # the pair lost alone: no whole-model timing needed
        assert "whole_model_latency" not in d and layer["decision"] == "kept"
        return
    whole = d["whole_model_latency"]
    assert whole["runtime"] == "LiteRT (XNNPACK)" and len(whole["ratios"]) == 2 and whole["ratio"] == max(
        whole["ratios"])
    if whole["ratio"] < 1.0:
        assert layer["decision"] == "replaced" and d["replaced"] == 1
    else:
        assert layer["decision"] == "kept" and layer["whole_model_rejected"] and d["replaced"] == 0
        assert "whole model runs" in layer["reason"] and "pairs faster alone" in d["summary"]
