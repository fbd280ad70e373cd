"""The depthwise pass: exact at full rank, errors that match ONNX Runtime, decisions that follow the rules.

Hand-built single Conv graphs cover the geometry (stride 2, dilation, asymmetric and auto padding, Cout
smaller than K) and the refusals (groups > 1); real photos drive the data-based errors; the ResNet-18
topology and a YOLO-style detector show the pass in a pipeline after fuse-bn and before quantize.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgec import model_io, runtime, settings
from edgec.errors import EdgecError
from edgec.manager import Manager
from edgec.metrics import drift, sqnr_db
from edgec.pass_infra import PassContext, parse_pipeline, parse_spec

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True, scope="module")
def _single_threaded_blas():
    """The refit's normal equations run 3-5x faster on one BLAS thread when the 2 cores are shared (ORT's pool,
    parallel test workers); oversubscribed OpenBLAS threads spin against each other."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _tool():
    if "edgec_depthwise_compare" not in sys.modules:
        spec = importlib.util.spec_from_file_location("edgec_depthwise_compare", REPO / "tools" / "depthwise_compare.py")
        mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        sys.modules["edgec_depthwise_compare"] = mod
        spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return sys.modules["edgec_depthwise_compare"]


def conv_graph(cin=3, cout=16, k=3, stride=1, dil=1, pads=(1, 1, 1, 1), group=1, hw=32, bias=True,
               auto_pad=None, weight=None, seed=0, name="conv"):
    """x [1, cin, hw, hw] -> Conv -> y (the conv output is the graph output, so drift is the layer's error)."""
    r = np.random.default_rng(seed)
    w = weight if weight is not None else r.normal(0, 0.3, (cout, cin // group, k, k)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w")]
    inputs = ["x", "w"]
    if bias:
        inits.append(numpy_helper.from_array(r.normal(0, 0.5, w.shape[0]).astype(np.float32), "b"))
        inputs.append("b")
    attrs = {"kernel_shape": [k, k], "strides": [stride] * 2, "dilations": [dil] * 2, "group": group}
    if auto_pad:
        attrs["auto_pad"] = auto_pad
    else:
        attrs["pads"] = list(pads)
    node = helper.make_node("Conv", inputs, ["y"], name=name, **attrs)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, hw, hw])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return model_io.from_proto(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]))


def photo_feeds(images, cin=3, hw=32):
    """Real photos, resized to hw, /255; channels beyond RGB are shifted copies (spatially real content)."""
    from PIL import Image

    feeds = []
    for im in images:
        x = np.asarray(Image.fromarray(im).resize((hw, hw), Image.BILINEAR), np.float32).transpose(2, 0, 1) / 255
        chans = [np.roll(x, shift=c // 3, axis=2)[c % 3] for c in range(cin)]
        feeds.append({"x": np.stack(chans)[None].astype(np.float32)})
    return feeds


def run(model, spec, samples, calib=None, options=None):
    user = settings.resolve(options)  # --dw-* settings fill the depthwise pass's unset fields
    ctx = user.context(samples=samples, calib=calib)
    mgr = Manager(ctx)
    out = mgr.run(model, user.configure(parse_pipeline(spec)))
    return out, mgr.records[-1], ctx


def outputs(model, feeds):
    return runtime.run(runtime.session(model, optimization="disable"), feeds)


GEOMETRIES = {
    "plain": {},
    "stride2": {"stride": 2},
    "dilation2": {"dil": 2, "pads": (2, 2, 2, 2)},
    "asym-pads": {"pads": (0, 1, 2, 0)},
    "same-upper-stride2": {"auto_pad": "SAME_UPPER", "stride": 2},
    "cout<k-no-bias": {"cout": 4, "bias": False},
    "5x5": {"k": 5, "pads": (2, 2, 2, 2), "cout": 32},
}


@pytest.mark.parametrize("geom", GEOMETRIES)
def test_full_rank_is_exact(geom, photo_images):
    kwargs = {"cin": 8, **GEOMETRIES[geom]}
    model = conv_graph(**kwargs)
    feeds = photo_feeds(photo_images[:4], cin=8)
    ref = outputs(model, feeds)
    k = kwargs.get("k", 3)
    out, rec, _ = run(model, f"depthwise:rank={k * k}", feeds)
    ops = [(n.op_type, n.attributes["group"].value if "group" in n.attributes else 1) for n in out.graph]
    assert ops == [("Conv", 8), ("Conv", 1)]
    dw, pw = list(out.graph)
    assert pw.name == "conv" and pw.outputs[0].name == "y"  # the original node became the pointwise conv
    assert list(pw.attributes["kernel_shape"].value) == [1, 1]
    full = min(kwargs.get("cout", 16), k * k)
    assert dw.inputs[1].const_value.shape == (8 * full, 1, k, k)
    assert rec.exact and rec.details["layers"][0]["rank"] == full
    d = drift(ref, outputs(out, feeds))
    assert d.max_rel < 1e-5


@pytest.mark.parametrize("geom", ["plain", "stride2", "dilation2", "asym-pads", "same-upper-stride2"])
def test_layer_error_matches_onnx_runtime(geom, photo_images):
    """The SQNR the pass reports (sampled patches, held-out feeds) is the one ORT measures on those feeds."""
    model = conv_graph(cin=3, cout=16, **GEOMETRIES[geom])
    feeds = photo_feeds(photo_images[:12])
    ref = outputs(model, feeds)
    out, rec, _ = run(model, "depthwise:rank=2", feeds[:1], calib=feeds)
    layer = rec.details["layers"][0]
    assert layer["decision"] == "replaced" and layer["rank"] == 2
    held_out = [1, 3, 5, 7, 9, 11]  # the pass fits on even feeds and measures on odd ones
    got = outputs(out, [feeds[i] for i in held_out])
    measured = sqnr_db(np.concatenate([ref[i]["y"].ravel() for i in held_out]),
                       np.concatenate([g["y"].ravel() for g in got]))
    assert abs(layer["sqnr_db"] - measured) < 1.0, (layer["sqnr_db"], measured)
    assert not rec.exact


@pytest.mark.parametrize("group,cin", [(2, 8), (8, 8)])
def test_grouped_convs_are_refused_with_a_reason(group, cin, photo_images):
    model = conv_graph(cin=cin, cout=8, group=group)
    feeds = photo_feeds(photo_images[:2], cin=cin)
    out, rec, _ = run(model, "depthwise:rank=9", feeds)
    assert [n.op_type for n in out.graph] == ["Conv"] and not rec.changed
    (layer,) = rec.details["layers"]
    assert layer["decision"] == "refused" and f"group={group}" in layer["reason"]
    assert ("already depthwise" in layer["reason"]) == (group == cin)


def low_rank_weight(cout, cin, rank, seed=0):
    """W[:, i] = A_i B_i with rank ``rank`` per input channel: the SVD reproduces it exactly at r = rank."""
    r = np.random.default_rng(seed)
    a, b = r.normal(size=(cin, cout, rank)), r.normal(size=(cin, rank, 9))
    return (a @ b).transpose(1, 0, 2).reshape(cout, cin, 3, 3).astype(np.float32)


def test_auto_rank_picks_the_smallest_rank_meeting_the_floor_without_data():
    model = conv_graph(cin=8, cout=32, weight=low_rank_weight(32, 8, 2))
    _, rec, _ = run(model, "depthwise", [])  # no samples: the error is measured on the weights
    (layer,) = rec.details["layers"]
    assert layer["decision"] == "replaced" and layer["rank"] == 2 and layer["error_on"] == "weights"
    assert rec.details["error_on"].startswith("weights")
    hw = 32 * 32
    assert layer["macs_before"] == 8 * 32 * 9 * hw
    assert layer["macs_after"] == 8 * 2 * 9 * hw + 8 * 2 * 32 * hw  # Cin*r*K*K*H*W + Cin*r*Cout*H*W
    assert math.isclose(rec.details["macs_reduction"], 1 - (2 * 41) / (32 * 9))
    assert layer["break_even_rank"] == round(32 * 9 / 41, 2) and "r < 7.02" in layer["reason"]


def test_auto_mode_keeps_layers_below_break_even_or_floor():
    # Cout = 2: break-even 2*9/11 = 1.6, so only r = 1 could pay; a full-rank random weight misses 30 dB.
    model = conv_graph(cin=4, cout=2, seed=3)
    _, rec, _ = run(model, "depthwise", [])
    (layer,) = rec.details["layers"]
    assert layer["decision"] == "kept" and "break-even 1.64" in layer["reason"] and not rec.changed
    # Cout = 1: r = 1 already costs more than the conv (break-even 0.9).
    _, rec, _ = run(conv_graph(cin=4, cout=1), "depthwise", [])
    assert rec.details["layers"][0]["decision"] == "kept" and "< 1" in rec.details["layers"][0]["reason"]


def two_conv_graph():
    """conv_a (8->32 at 32x32) -> conv_b (32->32, stride 4 -> 8x8): conv_b has ~1/4 of conv_a's MACs."""
    wa, wb = low_rank_weight(32, 8, 1, seed=1), low_rank_weight(32, 32, 1, seed=2)
    nodes = [helper.make_node("Conv", ["x", "wa"], ["a"], name="conv_a", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["a", "wb"], ["y"], name="conv_b", kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                              strides=[4, 4])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 32, 32])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(wa, "wa"), numpy_helper.from_array(wb, "wb")])
    return model_io.from_proto(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]))


def test_layer_patterns_and_mac_share():
    _, rec, _ = run(two_conv_graph(), "depthwise:layers=*_b", [])
    by_node = {d["node"]: d for d in rec.details["layers"]}
    assert by_node["conv_a"]["decision"] == "skipped" and by_node["conv_b"]["decision"] == "replaced"
    _, rec, _ = run(two_conv_graph(), "depthwise:min_macs=0.5", [])
    by_node = {d["node"]: d for d in rec.details["layers"]}
    assert by_node["conv_a"]["decision"] == "replaced"
    assert by_node["conv_b"]["decision"] == "kept" and "min_macs" in by_node["conv_b"]["reason"]
    assert math.isclose(by_node["conv_a"]["mac_share"] + by_node["conv_b"]["mac_share"], 1.0)


def test_options_fill_unset_fields_and_fields_win():
    opts = {"dw_rank": 9, "dw_layers": "conv_a"}
    _, rec, _ = run(two_conv_graph(), "depthwise", [], options=opts)
    assert rec.details["settings"] == {"rank": 9, "max_error": 25.0, "min_macs": 0.0, "layers": ["conv_a"],
                                      "latency": False, "min_sqnr": None}
    assert [d["decision"] for d in rec.details["layers"]] == ["replaced", "skipped"]
    _, rec, _ = run(two_conv_graph(), "depthwise:rank=1:layers=conv_b", [],
                    options={**opts, "dw_max_error": 20, "dw_latency": True})
    assert rec.details["settings"] == {"rank": 1, "max_error": 20.0, "min_macs": 0.0, "layers": ["conv_b"],
                                      "latency": True, "min_sqnr": None}
    p = parse_spec("depthwise:rank=3:max_error=25:layers=head*+neck*:refit=false:latency=true:als_rounds=3")
    assert (p.rank, p.max_error, p.layers, p.refit, p.latency, p.als_rounds) == (3, 25.0, ("head*", "neck*"), False,
                                                                                   True, 3)
    with pytest.raises(EdgecError, match="min_macs"):
        run(two_conv_graph(), "depthwise:min_macs=5", [])
    # A budget on the outputs needs data to measure them: a one-line error, not a silent pass.
    with pytest.raises(EdgecError, match="min_sqnr needs calibration data"):
        run(two_conv_graph(), "depthwise:rank=1", [], options={"dw_min_sqnr": 3})


# ------------------------------------------------------------------------------------------- real models
@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    pytest.importorskip("torch")
    import torch

    from edgec.export import export

    path = tmp_path_factory.mktemp("dw") / "detector.onnx"
    export(_tool().detector_neck_head(width=8), (torch.randn(1, 3, 64, 64),), path, opset=13)
    return path


@pytest.fixture(scope="module")
def detector_feeds(zoo):
    """Calibration: 16 photos (seed 0); evaluation: 8 other crops (seed 1)."""
    return _tool().photo_feeds(16, 64, seed=0), _tool().photo_feeds(8, 64, seed=1)


def test_refit_beats_plain_svd_on_real_images(detector, detector_feeds):
    calib, evaluation = detector_feeds
    ref = outputs(model_io.load(detector), evaluation)
    results = {}
    for refit in (False, True):
        out, rec, _ = run(model_io.load(detector), f"depthwise:rank=5:refit={refit}:whiten=false:als_rounds=0",
                          calib[:2], calib=calib)
        layers = [d for d in rec.details["layers"] if d["decision"] == "replaced"]
        assert len(layers) == 11  # every 3x3 conv of the detector
        if refit:
            # Per layer, on the held-out calibration feeds: the refit is never worse, and clearly better overall.
            assert all(d["sqnr_db"] >= d["sqnr_svd_db"] for d in layers)
            assert np.mean([d["sqnr_db"] - d["sqnr_svd_db"] for d in layers]) > 6.0
            assert sum(d["method"] == "svd+refit" for d in layers) >= 9
        else:
            assert all(d["method"] == "svd" for d in layers)
        got = outputs(out, evaluation)
        results[refit] = [sqnr_db(np.concatenate([r[k].ravel() for r in ref]), np.concatenate([g[k].ravel() for g in got]))
                          for k in ("output_0", "output_1")]
    # End to end, on images the calibration never saw (measured: +4.9 and +6.8 dB).
    assert all(t > f + 3.0 for t, f in zip(results[True], results[False])), results


def test_als_fit_beats_the_previous_fit_on_real_images(detector, detector_feeds):
    """ALS on the real input covariance (with the bias correction) against the best of SVD / whitened / refit:
    per layer on held-out calibration feeds, and end to end on images the calibration never saw."""
    calib, evaluation = detector_feeds
    ref = outputs(model_io.load(detector), evaluation)
    sqnr, e2e = {}, {}
    for rounds in (0, 2):
        out, rec, _ = run(model_io.load(detector), f"depthwise:rank=3:layers=/stem*:als_rounds={rounds}",
                          calib[:2], calib=calib)
        layers = [d for d in rec.details["layers"] if d["decision"] == "replaced"]
        assert len(layers) == 3
        sqnr[rounds] = np.array([d["sqnr_db"] for d in layers])
        if rounds:
            assert sum(d["method"] == "als" for d in layers) >= 2
        e2e[rounds] = np.array([v["sqnr_db"] for v in drift(ref, outputs(out, evaluation)).per_output.values()])
    # Measured: +3.3, +2.0, +0.4 dB per layer; +1.0 and +1.4 dB on the two outputs.
    assert np.all(sqnr[2] >= sqnr[0]) and np.mean(sqnr[2] - sqnr[0]) > 1.0, sqnr
    assert np.all(e2e[2] > e2e[0] + 0.4), e2e


def test_latency_mode_records_the_ort_timing_and_follows_it(photo_images):
    """Full rank on a small conv costs more MACs and an extra kernel: ORT must find the pair slower and keep
    the conv; a 64->64 conv at rank 1 (8x fewer MACs): whatever ORT measures, the decision follows it."""
    feeds = photo_feeds(photo_images[:2], cin=8, hw=16)
    out, rec, _ = run(conv_graph(cin=8, cout=16, hw=16), "depthwise:rank=9:latency=true", feeds[:1], calib=feeds)
    (layer,) = rec.details["layers"]
    t = layer["latency"]
    assert t["conv_ms"] > 0 and t["pair_ms"] > 0 and len(t["ratios"]) == 2 and t["ratio"] == max(t["ratios"])
    assert t["ratio"] > 1.0 and layer["decision"] == "kept" and "slower" in layer["reason"]
    assert [n.op_type for n in out.graph] == ["Conv"] and not rec.changed
    feeds = photo_feeds(photo_images[:2], cin=64, hw=40)
    out, rec, _ = run(conv_graph(cin=64, cout=64, hw=40, weight=low_rank_weight(64, 64, 1)),
                      "depthwise:rank=1:latency=true", feeds[:1], calib=feeds)
    (layer,) = rec.details["layers"]
    assert layer["decision"] == ("replaced" if layer["latency"]["ratio"] < 1.0 else "kept"), layer
    assert rec.details["settings"]["latency"] is True


def test_latency_mode_times_in_the_target_runtime(photo_images):
    """A tflite target times the conv and its pair in LiteRT (XNNPACK), not ORT: the record names the
    runtime, and the decision follows LiteRT's ratio (#23)."""
    import edgec

    feeds = photo_feeds(photo_images[:2], cin=64, hw=40)
    model = conv_graph(cin=64, cout=64, hw=40, weight=low_rank_weight(64, 64, 1))
    res = edgec.compile(model, target="tflite-fp32", passes="depthwise:rank=1:latency=true", calib=feeds,
                        samples=feeds[:1], options={"bench_runs": 0})
    (layer,) = next(r for r in res.records if r.name == "depthwise").details["layers"]
    t = layer["latency"]
    assert t["runtime"] == "LiteRT (XNNPACK)" and t["conv_ms"] > 0 and t["pair_ms"] > 0
    assert layer["decision"] == ("replaced" if t["ratio"] < 1.0 else "kept"), layer
    assert "LiteRT" in layer["reason"]


def test_exact_full_rank_on_detector_head(detector, detector_feeds):
    calib, evaluation = detector_feeds
    model = model_io.load(detector)
    ref = outputs(model, evaluation)
    out, rec, _ = run(model, "depthwise:rank=9", calib[:2])
    assert rec.exact and rec.details["replaced"] == 11
    assert drift(ref, outputs(out, evaluation)).max_rel < 1e-4


def test_exact_full_rank_on_resnet18_after_fuse_bn(resnet_onnx):
    feeds = _tool().photo_feeds(4, 64)
    model = model_io.load(resnet_onnx)
    ref = outputs(model, feeds)
    ctx = PassContext(samples=feeds)
    mgr = Manager(ctx)  # an exact pass beyond 1e-4 relative would raise here
    # rank 49 >= K*K for the 7x7 stem too: every layer gets its full rank min(Cout, K*K).
    out = mgr.run(model, parse_pipeline("fuse-bn,dce,depthwise:rank=49"))
    rec = mgr.records[-1]
    # ResNet-18: the 7x7 stem and 8 blocks x 2 3x3 convs; the 1x1 shortcuts stay.
    assert rec.exact and rec.details["replaced"] == 17
    assert sum(n.op_type == "Conv" for n in out.graph) == sum(
        n.op_type == "Conv" for n in model_io.load(resnet_onnx).graph) + rec.details["replaced"]
    assert drift(ref, outputs(out, feeds)).max_rel < 1e-4


FP32_PREFIX = "lift-constants,fold,dce,fuse-bias,fuse-bn,dce,shape-infer"  # the cpu-fp32 pipeline


def _sqnr_outputs(ref, got):
    return min(sqnr_db(np.concatenate([r[k].ravel() for r in ref]), np.concatenate([g[k].ravel() for g in got]))
               for k in ref[0])


def _ort_int8(model, calib, path):
    """ONNX Runtime's own static QDQ quantizer (int8 per-channel weights, uint8 activations)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(calib)

        def get_next(self):
            return next(self.it, None)

    src = path.with_suffix(".fp32.onnx")
    model_io.save(model, src)
    quantize_static(str(src), str(path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return path


def test_detector_at_30db_after_fuse_bn_quantizes_cleanly(detector, detector_feeds, tmp_path):
    """fuse-bn -> depthwise (30 dB): every replaced layer meets its floor on held-out feeds, the MACs fall as
    the decisions say, and int8 quantization loses no more on the rewritten model than on the original."""
    calib, evaluation = detector_feeds
    fp32 = outputs(model_io.load(detector), evaluation)
    # The cpu-fp32 cleanup first: folding turns the Upsample's computed Resize scales into a constant, which
    # quantizers then leave alone (quantizing the scales 1,1,2,2 to 8 bits makes Resize drop a channel).
    base = Manager(PassContext(samples=calib[:4])).run(model_io.load(detector), parse_pipeline(FP32_PREFIX))
    mgr = Manager(PassContext(samples=calib[:4], calib=calib))
    out = mgr.run(model_io.clone(base), parse_pipeline("depthwise:max_error=30"))
    dw = mgr.records[-1]
    replaced = [d for d in dw.details["layers"] if d["decision"] == "replaced"]
    kept = [d for d in dw.details["layers"] if d["decision"] == "kept"]
    assert replaced and all(d["sqnr_db"] >= 30.0 and d["rank"] < d["break_even_rank"] for d in replaced)
    assert all("no rank below break-even" in d["reason"] for d in kept)
    assert dw.details["macs_replaced_before"] - dw.details["macs_replaced_after"] == (
        mgr.records[0].summary.macs - dw.summary.macs)  # the report's MACs are the model's MACs
    rewritten = outputs(out, evaluation)
    assert _sqnr_outputs(fp32, rewritten) > 20.0
    q_base = outputs(model_io.load(_ort_int8(base, calib, tmp_path / "base.onnx")), evaluation)
    q_dw = outputs(model_io.load(_ort_int8(out, calib, tmp_path / "dw.onnx")), evaluation)
    # int8 error of each model against its own fp32 outputs: the depthwise pairs quantize as well as the convs.
    base_loss = _sqnr_outputs(fp32, q_base)
    dw_loss = _sqnr_outputs(rewritten, q_dw)
    assert dw_loss > base_loss - 3.0, (dw_loss, base_loss)


@pytest.mark.slow
def test_pipeline_with_edgec_quantize(detector, detector_feeds):
    calib, evaluation = detector_feeds
    scheme = _int8_scheme()
    # Quantizing the detector must work without depthwise too (an EdgecError here is a failure, not a skip).
    Manager(PassContext(samples=calib[:4], calib=calib, scheme=scheme)).run(
        model_io.load(detector), parse_pipeline(FP32_PREFIX + ",quantize"))
    mgr = Manager(PassContext(samples=calib[:4], calib=calib, scheme=scheme))
    out = mgr.run(model_io.load(detector), parse_pipeline(FP32_PREFIX + ",depthwise:max_error=30,quantize"))
    assert mgr.records[-1].drift.sqnr_db > 15.0
    assert _sqnr_outputs(outputs(model_io.load(detector), evaluation), outputs(out, evaluation)) > 15.0


def _int8_scheme():
    from edgec import targets

    return targets.get("cpu-int8").scheme


def test_pass_is_registered_lossy_and_onnx_valid(detector, detector_feeds):
    calib, _ = detector_feeds
    out, rec, _ = run(model_io.load(detector), "depthwise:rank=2", calib[:2], calib=calib)
    onnx.checker.check_model(model_io.to_proto(out), full_check=True)
    assert not rec.exact and rec.drift is not None and rec.drift.sqnr_db < 60


# ------------------------------------------------------------------------------------------- property
def test_full_rank_is_exact_on_generated_nets():
    """Full rank over random valid conv nets (strides, dilations, groups, auto_pad, Constant weights, a
    symbolic batch, tensors that are also graph outputs): valid, and outputs within 1e-4 relative."""
    from hypothesis import HealthCheck, given, settings

    sys.path.insert(0, str(Path(__file__).parent))
    import fuzz_graphs as fg

    @settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True)
    @given(fg.net_specs())
    def check(spec):
        proto = fg.build(spec)
        feeds = fg.feeds(spec)
        model = model_io.from_proto(proto)
        ref = outputs(model_io.from_proto(proto), feeds)
        p = parse_spec("depthwise:rank=49")
        p.apply(model, PassContext(samples=feeds))
        assert p.is_exact()
        out = model_io.to_proto(model)
        onnx.checker.check_model(out, full_check=True)
        for r, g in zip(ref, outputs(model, feeds)):
            for name, a in r.items():
                assert np.max(np.abs(g[name] - a)) <= 1e-4 * np.max(np.abs(a)) + 1e-6, name

    check()
