"""Shared session fixtures: the bundled digits model, real images, small PyTorch exports, zoo models.

pyproject puts tests/ and tools/ on sys.path for pytest, so ``import zoo`` and ``import models`` work in
any test and give the same module objects these fixtures use (one copy, one ZooUnavailable class).
Other test files add their own fixtures locally.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent


def _import_zoo() -> ModuleType:
    try:
        import zoo  # tools/ on pytest's pythonpath
    except ImportError:  # run without the pyproject settings: load it by path under the same name
        spec = importlib.util.spec_from_file_location("zoo", REPO / "tools" / "zoo.py")
        zoo = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        sys.modules["zoo"] = zoo  # before exec: dataclasses look their module up in sys.modules
        spec.loader.exec_module(zoo)  # type: ignore[union-attr]
    return zoo


_zoo = _import_zoo()


@pytest.fixture(scope="session")
def zoo() -> ModuleType:
    """tools/zoo.py: ENTRIES, path(), images(), preprocess(), rotated_text(), ZooUnavailable."""
    return _zoo


@pytest.fixture(scope="session")
def test_models() -> ModuleType:
    """tests/models.py (needs torch; skips without it)."""
    pytest.importorskip("torch")
    try:
        import models  # tests/ on pytest's pythonpath; zoo reuses this same module object
    except ImportError:
        return _zoo.load_models_module()
    return models


@pytest.fixture(scope="session")
def digits_model() -> Path:
    """compiler/assets/digits.onnx: trained CNN with 4 BatchNormalization nodes, input 'input' [1,1,8,8]."""
    return _zoo.path("digits")


@pytest.fixture(scope="session")
def digits_samples() -> dict[str, np.ndarray]:
    """360 held-out digits: 'input' float32 [360,1,1,8,8] (each one feed), 'labels' int64 [360]."""
    return _zoo.digits_samples()


@pytest.fixture(scope="session")
def zoo_path() -> Callable[[str], Path]:
    """zoo_path(name) -> local ONNX path of a zoo entry; the test skips if it cannot be fetched/built."""

    def get(name: str) -> Path:
        try:
            return _zoo.path(name)
        except _zoo.ZooUnavailable as exc:
            pytest.skip(f"zoo entry '{name}' unavailable: {exc}")

    return get


def _export_small(test_models: ModuleType, tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    module, shape = test_models.build(name)
    return test_models.export_onnx(module, shape, tmp_path_factory.mktemp("models") / f"{name}.onnx")


@pytest.fixture(scope="session")
def resnet_onnx(test_models: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ResNet-18 topology, width 16, 10 classes, input 'input' [1,3,64,64], opset 13, 20 BN nodes."""
    return _export_small(test_models, tmp_path_factory, "resnet18")


@pytest.fixture(scope="session")
def mobilenet_onnx(test_models: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MobileNetV2 x0.35, 10 classes, input 'input' [1,3,64,64], opset 13, 52 BN, depthwise convs, Clip (ReLU6)."""
    return _export_small(test_models, tmp_path_factory, "mobilenetv2")


@pytest.fixture(scope="session")
def yolo_onnx(test_models: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """YOLOv8-like, input 'input' [1,3,64,64], opset 13; outputs output_0 boxes [1,4,80], output_1 scores [1,3,80]."""
    return _export_small(test_models, tmp_path_factory, "yolo")


@pytest.fixture(scope="session")
def transformer_onnx(test_models: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ViT-like block, input 'input' [1,3,64,64], opset 17 (LayerNormalization, MatMul, Softmax, Erf)."""
    return _export_small(test_models, tmp_path_factory, "transformer")


@pytest.fixture(scope="session")
def photo_images() -> list[np.ndarray]:
    """16 real photos (skimage/sklearn crops), RGB uint8 224x224x3."""
    return _zoo.images("photos", n=16, size=(224, 224), seed=0)


@pytest.fixture(scope="session")
def text_images() -> list[np.ndarray]:
    """8 real photos with rendered words, RGB uint8 640x640x3 (PP-OCR det input after preprocessing: 736x736)."""
    return _zoo.images("text", n=8, size=(640, 640), seed=0)


@pytest.fixture(scope="session")
def line_images() -> list[np.ndarray]:
    """8 single text lines on photo backgrounds, RGB uint8 48x320x3 (PP-OCR rec/cls input)."""
    return _zoo.images("lines", n=8, size=(48, 320), seed=0)
