"""equalize-act: the channels of a per-channel affine's output are evened out, the reading convs absorb it."""

from __future__ import annotations

import graphs
import numpy as np
import onnx_ir as ir
import pytest
from onnx import helper
from test_passes_core import assert_close, ops, outputs, run_passes

import edgec
from edgec import runtime
from edgec.metrics import sqnr_db


def lab_block(seed: int = 0):
    """Conv -> HardSwish -> Mul(a) -> Add(b) -> {depthwise 3x3 (padded), 1x1 conv}: PP-LCNetV3's pattern,
    with the affine's scales spread over two decades (the conv before it is quantized with even channels)
    and the depthwise weights bringing them back to one size (as a BatchNorm folded into it would), so
    every channel's error counts at the output."""
    r = graphs.rng(seed)
    spread = np.geomspace(0.02, 2.0, 8)
    w0 = r.normal(0, 0.3, (8, 3, 3, 3))
    nodes = [helper.make_node("Conv", ["x", "w0"], ["y"], pads=[1, 1, 1, 1], name="conv0"),
             helper.make_node("HardSwish", ["y"], ["h"]),
             helper.make_node("Mul", ["h", "a"], ["ha"], name="lab_mul"),
             helper.make_node("Add", ["ha", "b"], ["t"], name="lab_add"),
             helper.make_node("Conv", ["t", "wd"], ["d"], group=8, pads=[1, 1, 1, 1], name="dw"),
             helper.make_node("Conv", ["t", "wp"], ["p"], name="pw"),
             helper.make_node("Add", ["d", "p"], ["out"])]
    return graphs.make(nodes, [graphs.vi("x", [1, 3, 12, 12])], [graphs.vi("out", [1, 8, 12, 12])],
                       [graphs.init("w0", w0.astype(np.float32)), graphs.init("a", spread.reshape(1, 8, 1, 1).astype(np.float32)),
                        graphs.init("b", np.float32(0.05)),
                        graphs.init("wd", (r.normal(0, 0.5, (8, 1, 3, 3)) / spread[:, None, None, None])
                                    .astype(np.float32)),
                        graphs.init("wp", r.normal(0, 0.02, (8, 8, 1, 1)).astype(np.float32))], opset=14)


def _feeds(n: int, seed: int):
    r = np.random.default_rng(seed)
    return [{"x": r.normal(0, 1, (1, 3, 12, 12)).astype(np.float32)} for _ in range(n)]


def test_exact_and_even_ranges():
    model = lab_block()
    feeds = _feeds(8, 1)
    ref = outputs(model, feeds)
    out, recs = run_passes(model, "equalize-act", feeds)
    assert ops(out) == ops(model)  # nothing added: the affine's constants become per-channel vectors
    assert_close(ref, outputs(out, feeds))
    (row,) = recs[1].details["equalized"]
    assert row["readers"] == ["dw", "pw"]
    assert row["spread_before"] > 50 and row["spread_after"] < row["spread_before"] / 10


def test_reader_that_is_not_a_conv_blocks_the_site():
    model = lab_block()
    t = next(n for n in model.graph if n.name == "lab_add").outputs[0]
    model.graph.append(ir.node("Relu", [t]))  # a third reader, which could not absorb the scales
    _, recs = run_passes(model, "equalize-act", _feeds(4, 1))
    assert recs[1].details["equalized"] == [] and recs[1].changed is False


@pytest.mark.zoo
def test_ppocr_rec_int8_gains(zoo, zoo_path, line_images, tmp_path):
    # PP-OCRv4 rec's PP-LCNetV3 backbone: learnable affine blocks in front of every depthwise conv.
    path = zoo_path("ppocr-rec")
    feeds = zoo.preprocess(zoo.images("lines", 16, (48, 320), seed=0), "ppocr-rec")
    evals = zoo.preprocess(line_images, "ppocr-rec")
    shape = {"x": tuple(feeds[0]["x"].shape)}
    ref = runtime.run(runtime.session(path), evals)
    a = np.concatenate([next(iter(r.values())).ravel() for r in ref])
    base = ["lift-constants", "fold", "dce", "fuse-bias", "fuse-bn", "fuse-activation", "fuse-affine", "dce",
            "shape-infer"]
    scores = {}
    for extra in ([], ["equalize-act"]):
        res = edgec.compile(path, passes=[*base, *extra, "quantize"], target="cpu-int8", calib=feeds,
                            samples=evals[:2], shapes=shape, out_dir=tmp_path / str(len(extra)))
        got = runtime.run(runtime.session(res.model, optimization="basic"), evals)
        scores[len(extra)] = sqnr_db(a, np.concatenate([next(iter(g.values())).ravel() for g in got]))
    # cpu-int8 pins 7-bit weights (its scheme), so this holds on any host. With 8-bit weights the gain is
    # gone (measured on an AVX-512 VNNI host: 8.28 dB with equalize-act vs 8.32 without).
    # 7.7 -> 8.9 dB on the held-out lines. (The old +1.5 dB floor was met while the quantize pass chose its
    # range rule on evals[:2], the lines scored here; it now chooses on calibration samples only.)
    assert scores[1] > scores[0] + 1.0, scores
