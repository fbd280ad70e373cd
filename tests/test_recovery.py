"""Accuracy recovery: cross-layer equalization, bias correction, sensitivity analysis, budgeted mixed precision.

Real data throughout: the trained digits CNN with its held-out digits (labelled: accuracy is a real task
metric), and a MobileNetV2-style export calibrated on real photos. The MobileNetV2-style model gets a
few depthwise channels with tiny BatchNorm variance (as trained MobileNets have: folded into the conv
they make a few channels ~100x larger than the rest), which is what makes naive per-tensor int8 collapse.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper

from edgec import metrics, model_io, runtime, targets
from edgec import mixed_precision as MP
from edgec import sensitivity as S
from edgec.graph import const_array, set_input_const
from edgec.manager import Manager
from edgec.pass_infra import PassContext, parse_pipeline, parse_spec
from edgec.passes.bias_correct import correct_biases
from edgec.passes.equalize import find_pairs

REPO = Path(__file__).resolve().parent.parent
DIGITS = REPO / "compiler" / "assets" / "digits.onnx"


# ------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def digits_data() -> tuple[list[dict], list[dict], np.ndarray]:
    """Calibration feeds (64 held-out digits) and held-aside evaluation feeds + labels (the last 120)."""
    s = np.load(REPO / "compiler" / "assets" / "digits_samples.npz")
    feeds = [{"input": x} for x in s["input"]]
    return feeds[:64], feeds[240:], s["labels"][240:]


def _seed_outlier(model, channel: int = 3, factor: float = 100.0) -> tuple[str, str]:
    """Scale one output channel of the first Conv -> Relu -> Conv pair by ``factor`` and the next conv's
    matching input weights by 1/factor: exact in fp32 (Relu commutes with s > 0), awful for int8."""
    pair = find_pairs(model.graph)[0][0]
    wa, ba = const_array(pair.a.inputs[1]).copy(), const_array(pair.a.inputs[2]).copy()
    wb = const_array(pair.b.inputs[1]).copy()
    wa[channel] *= factor
    ba[channel] *= factor
    wb[:, channel] /= factor
    set_input_const(pair.a, 1, wa)
    set_input_const(pair.a, 2, ba)
    set_input_const(pair.b, 1, wb)
    return pair.a.name, pair.b.name


@pytest.fixture(scope="module")
def digits_outlier(digits_data):
    calib, ev, _ = digits_data
    fm = S.prepare_float(DIGITS, targets.get("cpu-int8"), calib[:4])
    ref = runtime.run(runtime.session(fm), ev[:32])
    producer, consumer = _seed_outlier(fm)
    # The seeded model must compute the same function in fp32.
    assert metrics.drift(ref, runtime.run(runtime.session(fm), ev[:32])).max_rel < 1e-4
    return fm, producer, consumer


@pytest.fixture(scope="module")
def digits_quantizer(digits_outlier, digits_data) -> S.Quantizer:
    """One quantizer for the cpu-int8 tests: calibrates once, remembers every configuration it built."""
    return S.Quantizer(digits_outlier[0], targets.get("cpu-int8").scheme, digits_data[0])


def _accuracy_metric(labels: np.ndarray):
    def accuracy(outputs, _reference) -> float:
        return 100.0 * float(np.mean([o["logits"].argmax() == y for o, y in zip(outputs, labels)]))

    return accuracy


@pytest.fixture(scope="module")
def photo_feeds(zoo) -> list[dict]:
    imgs = zoo.images("photos", n=56, size=(64, 64), seed=0)
    mean, std = np.array(zoo.IMAGENET_MEAN, np.float32), np.array(zoo.IMAGENET_STD, np.float32)
    return [{"input": ((im / 255.0 - mean) / std).transpose(2, 0, 1)[None].astype(np.float32)} for im in imgs]


@pytest.fixture(scope="module")
def imbalanced_mobilenet(test_models: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    module, shape = test_models.build("mobilenetv2")
    gen = torch.Generator().manual_seed(5)
    convs = [m for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
    bns = [m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for conv, bn in zip(convs, bns):
            if conv.groups > 1:  # ~15 % of depthwise channels with a 1e-4 variance: 100x after folding
                pick = torch.rand(bn.num_features, generator=gen) < 0.15
                bn.running_var[pick] = bn.running_var[pick] * 1e-4
    return test_models.export_onnx(module, shape, tmp_path_factory.mktemp("recovery") / "mnv2_imbalanced.onnx")


# ------------------------------------------------------------------------------------------- equalize
def _chain_model(seed: int = 0):
    """Conv 3x3 -> Relu -> depthwise 3x3 -> Clip(0, 6) -> Conv 1x1, with channel ranges spread 1e-2..1e2."""
    r = np.random.default_rng(seed)
    spread = np.geomspace(1e-2, 1e2, 8)[r.permutation(8)].astype(np.float32)
    w1 = (r.normal(0, 1, (8, 4, 3, 3)) * spread[:, None, None, None]).astype(np.float32)
    w2 = (r.normal(0, 1, (8, 1, 3, 3)) / spread[:, None, None, None]).astype(np.float32)
    w3 = r.normal(0, 1, (6, 8, 1, 1)).astype(np.float32)
    inits = [onnx.numpy_helper.from_array(a, n) for a, n in (
        (w1, "w1"), ((r.normal(0, 1, 8) * spread).astype(np.float32), "b1"), (w2, "w2"),
        (r.normal(0, 0.1, 8).astype(np.float32), "b2"), (w3, "w3"), (r.normal(0, 1, 6).astype(np.float32), "b3"),
        (np.array(0.0, np.float32), "lo"), (np.array(6.0, np.float32), "hi"))]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="dw", group=8, pads=[1, 1, 1, 1]),
             helper.make_node("Clip", ["c2", "lo", "hi"], ["r2"], name="relu6"),
             helper.make_node("Conv", ["r2", "w3", "b3"], ["y"], name="conv3")]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 6, 8, 8])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    proto.ir_version = 8
    return model_io.from_proto(proto)


def _run_pass(model, spec: str, feeds):
    mgr = Manager(PassContext(samples=feeds))
    out = mgr.run(model, [parse_spec(spec)])
    return out, mgr.records[-1]


def test_equalize_chain_exact_and_balanced():
    r = np.random.default_rng(1)
    feeds = [{"x": r.normal(0, 1, (1, 4, 8, 8)).astype(np.float32)} for _ in range(4)]
    model, rec = _run_pass(_chain_model(), "equalize:clip=split", feeds)
    pairs = rec.details["pairs"]
    assert [(p["a"], p["b"]) for p in pairs] == [("conv1", "dw"), ("dw", "conv3")]
    assert rec.drift.max_rel < 1e-4  # exact in fp32 (the manager also enforces it)
    for p in pairs:
        # ranges were 1e4 apart across channels; after equalization r1_i == r2_i per channel
        assert p["max_log_range_ratio_before"] > 1.0
        assert p["max_log_range_ratio_after"] < 1e-2
    assert pairs[0]["utilization_a_after"] > 3 * pairs[0]["utilization_a_before"]
    ops = [n.op_type for n in model.graph]
    assert "Clip" not in ops and ops.count("Min") == 1  # ReLU6 became Relu + per-channel Min

    # Default clip=skip: the ReLU6 pair is left alone and reported.
    model2, rec2 = _run_pass(_chain_model(), "equalize", feeds)
    assert [(p["a"], p["b"]) for p in rec2.details["pairs"]] == [("conv1", "dw")]
    assert rec2.details["skipped"][0]["b"] == "conv3"
    assert "Clip" in [n.op_type for n in model2.graph]
    assert not parse_spec("equalize:clip=relu").is_exact()


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 10_000), act=st.sampled_from(["", "Relu", "LeakyRelu", "PRelu", "Clip", "ClipMin"]),
       depthwise=st.booleans(), bias=st.booleans(), k=st.sampled_from([1, 3]))
def test_equalize_exact_property(seed: int, act: str, depthwise: bool, bias: bool, k: int):
    """Conv -> [act] -> Conv (dense or depthwise B), random channel spreads: outputs unchanged within 1e-4."""
    r = np.random.default_rng(seed)
    c = int(r.integers(2, 9))
    spread = np.exp(r.uniform(-4, 4, c)).astype(np.float32)
    wa = (r.normal(0, 1, (c, 3, k, k)) * spread[:, None, None, None]).astype(np.float32)
    wb = r.normal(0, 1, (c, 1, 3, 3) if depthwise else (5, c, 3, 3)).astype(np.float32)
    inits = [onnx.numpy_helper.from_array(wa, "wa"), onnx.numpy_helper.from_array(wb, "wb")]
    a_in = ["x", "wa"]
    if bias:
        inits.append(onnx.numpy_helper.from_array((r.normal(0, 1, c) * spread).astype(np.float32), "ba"))
        a_in.append("ba")
    nodes = [helper.make_node("Conv", a_in, ["h"], name="a", pads=[k // 2] * 4)]
    mid = "h"
    if act:
        extra = []
        if act == "PRelu":
            inits.append(onnx.numpy_helper.from_array(r.uniform(0, 0.5, (c, 1, 1)).astype(np.float32), "slope"))
            extra = ["slope"]
        if act.startswith("Clip"):
            inits += [onnx.numpy_helper.from_array(np.array(v, np.float32), n) for v, n in ((0.0, "lo"), (6.0, "hi"))]
            extra = ["lo", "hi"] if act == "Clip" else ["lo"]  # ClipMin: Clip(0, inf) is a Relu
        nodes.append(helper.make_node(act[:4] if act.startswith("Clip") else act, ["h", *extra], ["g"], name="act"))
        mid = "g"
    nodes.append(helper.make_node("Conv", [mid, "wb"], ["y"], name="b", pads=[1, 1, 1, 1],
                                  group=c if depthwise else 1))
    cout = c if depthwise else 5
    graph = helper.make_graph(nodes, "p", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 6, 6])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, cout, 6, 6])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    proto.ir_version = 8
    feeds = [{"x": r.normal(0, 2, (1, 3, 6, 6)).astype(np.float32)} for _ in range(3)]
    # ReLU6 needs clip=split; everything else must pair up under the default (clip=skip).
    _, rec = _run_pass(model_io.from_proto(proto), "equalize:clip=split" if act == "Clip" else "equalize", feeds)
    assert rec.drift.max_rel < 1e-4
    assert len(rec.details["pairs"]) == 1 and rec.details["pairs"][0]["max_log_range_ratio_after"] < 1e-2


def _channel_weight_sqnr(model) -> float:
    """Mean over Conv layers and their output channels of the per-channel SQNR (dB) of PER-TENSOR int8
    weights: low when a few channels dwarf the others (they set the one scale, the rest get few levels)."""
    out = []
    for node in model.graph:
        w = const_array(node.inputs[1]) if node.op_type == "Conv" else None
        if w is None:
            continue
        w = w.astype(np.float64)
        s = np.abs(w).max() / 127
        err = ((w - np.clip(np.round(w / s), -127, 127) * s) ** 2).reshape(w.shape[0], -1).sum(1)
        sig = (w**2).reshape(w.shape[0], -1).sum(1)
        out.append(np.mean(10 * np.log10(np.maximum(sig, 1e-30) / np.maximum(err, 1e-30))))
    return float(np.mean(out))


@pytest.fixture(scope="module")
def mobilenet_float(imbalanced_mobilenet, photo_feeds):
    return S.prepare_float(imbalanced_mobilenet, targets.get("cpu-int8"), photo_feeds[:4])


@pytest.mark.slow
def test_equalize_mobilenet_exact(mobilenet_float, photo_feeds):
    fm = model_io.clone(mobilenet_float)
    n_conv = sum(n.op_type == "Conv" for n in fm.graph)
    before = _channel_weight_sqnr(fm)
    eq, rec = _run_pass(fm, "equalize:clip=split", photo_feeds[:4])
    assert rec.drift.max_rel < 1e-4, rec.drift  # exact in fp32 on real photos
    pairs = rec.details["pairs"]
    assert len(pairs) >= n_conv // 2  # every inverted block contributes its Conv1x1 -> DW -> Conv1x1 pairs
    assert max(p["max_log_range_ratio_after"] for p in pairs) < 0.1
    assert min(p["max_log_range_ratio_before"] for p in pairs) > 0.5
    after = _channel_weight_sqnr(eq)
    print(f"per-tensor int8 weight SQNR, mean over channels: {before:.2f} -> {after:.2f} dB")
    assert after > before + 2.0


# ------------------------------------------------------------------------------------- bias correction
def test_bias_correct_removes_weight_rounding_shift(zoo):
    """A conv fed a positive-mean input with per-tensor int8 weights: its output mean shifts by
    dW @ E[x]; after bias-correct (int32 bias re-quantized) the per-channel shift is gone."""
    r = np.random.default_rng(0)
    spread = np.geomspace(1e-2, 1, 16).astype(np.float32)
    w = (r.normal(0, 1, (16, 8, 3, 3)) * spread[:, None, None, None]).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", pads=[1, 1, 1, 1])], "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 8, 12, 12])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 16, 12, 12])],
        [onnx.numpy_helper.from_array(w, "w"), onnx.numpy_helper.from_array(r.normal(0, 0.1, 16).astype(np.float32), "b")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    proto.ir_version = 8
    fm = model_io.from_proto(proto)
    # Real positive-mean inputs: photo pixels in [0, 1] (as after a ReLU), 8 channels from 8 crops.
    imgs = np.stack(zoo.images("photos", n=64, size=(12, 12), seed=3)).astype(np.float32) / 255.0
    feeds = [{"x": imgs[i:i + 8].mean(-1)[None]} for i in range(56)]
    calib, ev = feeds[:40], feeds[40:]
    scheme = {**targets.get("cpu-int8").scheme, "per_channel": False}
    no_bc = {"bias_correction": False}  # the quantize pass's own correction off: this tests ours
    qm, _ = S.Quantizer(fm, scheme, calib, no_bc)([])
    ref = np.stack([o["y"] for o in runtime.run(runtime.session(fm), ev)])

    def shift(model) -> np.ndarray:
        out = np.stack([o["y"] for o in runtime.run(runtime.session(model), ev)])
        return (out - ref).mean(axis=(0, 1, 3, 4))

    before = np.abs(shift(qm))
    ctx = PassContext(samples=calib[:2], calib=calib, float_reference=model_io.to_bytes(fm))
    mgr = Manager(ctx)
    corrected = mgr.run(qm, [parse_spec("bias-correct")])
    details = mgr.records[-1].details
    rows = details["layers"]
    assert rows[0]["corrected"] and rows[0]["bias"] == "float"  # cpu-int8 Conv bias: float, ORT quantizes at load
    assert details["kept"] and details["sqnr_after_db"] > details["sqnr_before_db"]  # the guard measured it
    after = np.abs(shift(corrected))
    assert before.max() > 1e-2, before  # the shift is real before correction ...
    assert after.mean() < 0.2 * before.mean(), (before.mean(), after.mean())  # ... and mostly gone after
    # The lighter hand-over (only the float weights by node name) gives the same correction.
    qm2, _ = S.Quantizer(fm, scheme, calib, no_bc)([])
    ctx2 = PassContext(samples=calib[:2], calib=calib, float_weights={"conv": w})
    np.testing.assert_allclose(np.abs(shift(Manager(ctx2).run(qm2, [parse_spec("bias-correct")]))), after, atol=1e-6)
    # The guard reverts a correction that lowers the SQNR: against the quantized model's own outputs as
    # the reference, any change is a loss, so nothing may change.
    qm3, _ = S.Quantizer(fm, scheme, calib, no_bc)([])
    own = runtime.run(runtime.session(qm3), calib[:4])
    summary: dict = {}
    rows3 = correct_biases(qm3, fm, calib, check=(calib[:4], own), summary=summary)
    assert not summary["kept"] and not any(r["corrected"] for r in rows3)
    assert np.array_equal(np.stack([o["y"] for o in runtime.run(runtime.session(qm3), calib[:4])]),
                          np.stack([o["y"] for o in own]))


def test_bias_correct_needs_float_model(digits_data):
    calib, _, _ = digits_data
    fm = S.prepare_float(DIGITS, targets.get("cpu-int8"), calib[:2])
    qm, _ = S.Quantizer(fm, targets.get("cpu-int8").scheme, calib[:16])([])
    from edgec.errors import EdgecError

    with pytest.raises(EdgecError, match="float model"):
        parse_spec("bias-correct").apply(qm, PassContext(calib=calib[:16]))


@pytest.mark.slow
def test_equalize_and_bias_correct_recover_mobilenet(mobilenet_float, photo_feeds):
    """Acceptance: naive per-tensor int8 of the MobileNetV2-style export drifts badly; equalization +
    bias correction raise the output SQNR (on held-aside photos) by a measured amount."""
    calib, ev = photo_feeds[:40], photo_feeds[40:]
    tgt = targets.get("cpu-int8")
    scheme = {**tgt.scheme, "per_channel": False}
    sqnr = {}
    for eq in (False, True):
        fm = model_io.clone(mobilenet_float)
        if eq:
            fm, _ = _run_pass(fm, "equalize:clip=split", calib[:2])
        evaluator = S.Evaluator(fm, ev, "sqnr")
        qm, _ = S.Quantizer(fm, scheme, calib, {"bias_correction": False})([])
        sqnr[("eq" if eq else "naive")] = evaluator.score(qm).sqnr_db
        correct_biases(qm, fm, calib)
        sqnr[("eq+bc" if eq else "bc")] = evaluator.score(qm).sqnr_db
        # For comparison (not asserted): the quantize pass's own analytic bias correction.
        sqnr[("eq+" if eq else "") + "quantize-builtin-bc"] = evaluator.score(S.Quantizer(fm, scheme, calib)([])[0]).sqnr_db
    print("per-tensor int8 output SQNR (dB):", {k: round(v, 2) for k, v in sqnr.items()})
    assert sqnr["naive"] < 20.0  # drifts badly
    assert sqnr["bc"] > sqnr["naive"] + 1.0
    assert sqnr["eq+bc"] > sqnr["naive"] + 2.5


# ----------------------------------------------------------------------------------------- sensitivity
def test_sensitivity_ranks_seeded_outlier_first(digits_outlier, digits_data, digits_quantizer, tmp_path):
    fm, producer, consumer = digits_outlier
    calib, ev, labels = digits_data
    res = S.analyze(fm, targets.get("cpu-int8").scheme, calib, ev, quantizer=digits_quantizer)
    assert res.ranking[0] == consumer, res.table()
    row = res.rows[0]
    others = [r.only_sqnr_db for r in res.rows[1:] if r.layer != producer]
    assert row.only_sqnr_db < min(others) - 15  # not a close call
    assert res.int8_sqnr_db < 15.0  # the outlier wrecks the all-int8 model
    assert set(res.ranking) == set(S.candidates(fm))
    table = res.table()
    assert consumer in table.splitlines()[1]
    svg = res.bar_plot(tmp_path / "sens.svg").read_text()
    assert svg.startswith("<svg") and svg.count("<rect") == len(res.rows)
    # Labelled data, user metric (accuracy %): the same layer comes first.
    res_acc = S.analyze(fm, targets.get("cpu-int8").scheme, calib, ev, metric=_accuracy_metric(labels),
                        quantizer=digits_quantizer)
    assert res_acc.ranking[0] == consumer
    assert res_acc.fp32_metric == 100.0


# ------------------------------------------------------------------------------------ mixed precision
def test_search_meets_budget_on_held_aside_data(digits_outlier, digits_data, digits_quantizer, tmp_path):
    fm, _, consumer = digits_outlier
    calib, ev, labels = digits_data
    acc = _accuracy_metric(labels)
    res = MP.search(fm, "cpu-int8", calib, ev, max_drop=0.5, metric=acc, out_dir=tmp_path, latency_runs=5,
                   quantizer=digits_quantizer)
    all_int8 = res.table[0]
    assert all_int8.float_layers == [] and all_int8.drop > 0.5  # the budget is not met by plain int8
    assert res.met, res.message
    best = next(st for st in res.table if st.exclude == res.exclude)
    assert best.float_layers[0] == consumer and len(best.float_layers) < len(S.candidates(fm))
    # Re-measure the written model independently on the held-aside data.
    written = tmp_path / "mixed_precision.onnx"
    outs = runtime.run(runtime.session(written), ev)
    assert acc(outs, None) >= 100.0 - 0.5
    assert sum(n.op_type == "DequantizeLinear" for n in onnx.load(written).graph.node) > 0  # still int8 elsewhere
    assert (tmp_path / "pareto.json").exists() and "budget met" in (tmp_path / "pareto.txt").read_text()
    assert any(s.pareto for s in res.table)


def test_search_unreachable_budget_still_writes_best(digits_outlier, digits_data, digits_quantizer, tmp_path):
    fm, _, _ = digits_outlier
    calib, ev, _ = digits_data
    # Keeping every candidate float is the fp32 model (infinite SQNR), so the budget is made unreachable by
    # allowing at most 3 float layers.
    res = MP.search(fm, "cpu-int8", calib, ev, min_sqnr=200.0, max_steps=3, out_dir=tmp_path, latency_runs=5,
                   quantizer=digits_quantizer)
    assert not res.met
    assert "NOT met" in res.message and "3 of 7" in res.message and res.gap > 100
    assert max(len(s.float_layers) for s in res.table + res.rejected) == 3  # never more than max_steps
    assert not any(s.meets for s in res.table + res.rejected)
    best_sqnr = max(s.sqnr_db for s in res.table)
    assert math.isclose(next(st for st in res.table if st.exclude == res.exclude).sqnr_db, best_sqnr)
    assert (tmp_path / "mixed_precision.onnx").exists()
    assert "NOT met" in (tmp_path / "pareto.txt").read_text()


@pytest.mark.parametrize("target", ["jetson-int8", "tflite-int8"])
def test_search_other_int8_targets(digits_outlier, digits_data, target):
    fm, _, consumer = digits_outlier
    calib, ev, _ = digits_data
    res = MP.search(fm, target, calib, ev, min_sqnr=30.0, latency_runs=5)
    assert res.met, res.message
    assert res.fallback_precision == "fp16"
    assert res.table[0].sqnr_db < 30.0 and consumer in res.exclude


def test_search_refuses_float_target_and_missing_budget(digits_data):
    from edgec.errors import EdgecError

    calib, ev, _ = digits_data
    with pytest.raises(EdgecError, match="not an int8 target"):
        MP.search(DIGITS, "cpu-fp32", calib, ev, min_sqnr=30)
    with pytest.raises(EdgecError, match="budget"):
        MP.search(DIGITS, "cpu-int8", calib, ev)
    assert parse_pipeline("equalize,bias-correct")  # both passes are registered


def test_cli_entry_points_write_their_files(tmp_path):
    """What `edgec sensitivity` and `--min-sqnr` call: data split into calibration + held-aside eval."""
    npz = REPO / "compiler" / "assets" / "digits_samples.npz"
    res = S.run_sensitivity(DIGITS, "cpu-int8", npz, limit=16, out_dir=tmp_path / "sens")
    assert {p.name for p in (tmp_path / "sens").iterdir()} == {"sensitivity.json", "sensitivity.txt", "sensitivity.svg"}
    assert res.int8_sqnr_db < 60 and len(res.rows) == 7  # 5 weighted layers, the residual Add, the pooling
    found = MP.run_search(DIGITS, "cpu-int8", npz, limit=16, min_sqnr=10.0, out_dir=tmp_path / "mp")
    assert found.met and len(found.table) == 1  # plain int8 already meets 10 dB: no layer kept float
    assert (tmp_path / "mp" / "mixed_precision.onnx").exists()
    cal, ev, _ = S.split_feeds(model_io.load(DIGITS), npz, limit=16)
    assert (len(cal), len(ev)) == (12, 4)


def test_equalize_undoes_seeded_outlier_and_bias_correct_runs_for_tensorrt(digits_outlier, digits_data,
                                                                            digits_quantizer):
    """The outlier channel is exactly what equalization balances away: int8 SQNR comes back. With the
    TensorRT scheme (float biases) bias correction keeps the biases float."""
    fm, _, _ = digits_outlier
    calib, ev, _ = digits_data
    evaluator = S.Evaluator(fm, ev)
    plain = evaluator.score(digits_quantizer([])[0]).sqnr_db
    eq, rec = _run_pass(model_io.clone(fm), "equalize", calib[:4])
    assert rec.drift.max_rel < 1e-4
    recovered = evaluator.score(S.Quantizer(eq, targets.get("cpu-int8").scheme, calib)([])[0]).sqnr_db
    print(f"seeded-outlier digits, all-int8 output SQNR: {plain:.2f} dB -> equalized {recovered:.2f} dB")
    assert recovered > plain + 15
    trt = targets.get("jetson-int8").scheme
    qm, _ = S.Quantizer(fm, trt, calib, {"bias_correction": False})([])
    rows = correct_biases(qm, fm, calib, int32_bias=trt["bias"] == "int32")
    assert rows and all(r["bias"].startswith("float") for r in rows if r["corrected"])
    assert not any(n.op_type == "DequantizeLinear" and const_array(n.inputs[0]) is not None
                   and const_array(n.inputs[0]).dtype == np.int32 for n in qm.graph)
