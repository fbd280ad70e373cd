"""Sample and calibration inputs: where feeds come from, loaded lazily so memory does not grow with N.

Sources: an .npz (one array per input name; a leading sample axis is allowed, and when the input's
first dim is 1 or dynamic an array of the input's rank is read as a stack of samples along that axis),
an .npy (single-input model), a folder of images (edgec.images decodes and preprocesses them),
``module:function`` returning an iterable of feeds, or ``random`` (only on request, and it says so
loudly in the report). Arrays take the dtype of the input they feed (strings, uint64, bool ...).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from edgec.errors import EdgecError
from edgec.graph import feed_inputs

Feed = dict[str, np.ndarray]

RANDOM_WARNING = ("calibration/sample data is RANDOM noise (--calib random): drift and quantization ranges "
                  "are not those of real inputs")


def _one_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:200]


class FeedSource(Sequence[Feed]):
    """A lazy, indexable list of feeds: ``load(i)`` builds feed ``i`` on demand."""

    def __init__(self, count: int, load: Callable[[int], Feed], description: str, synthetic: bool = False) -> None:
        self._count = count
        self._load = load
        self.description = description
        self.synthetic = synthetic

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            idx = range(*index.indices(self._count))
            return FeedSource(len(idx), lambda i: self._load(idx[i]), self.description, self.synthetic)
        if not -self._count <= index < self._count:
            raise IndexError(index)
        return self._load(index % self._count)

    def __iter__(self) -> Iterator[Feed]:
        for i in range(self._count):
            yield self._load(i)

    def head(self, n: int) -> list[Feed]:
        return [self[i] for i in range(min(n, self._count))]


def input_specs(model: ir.Model) -> list[tuple[str, tuple[int | str, ...], np.dtype]]:
    """(name, dims, dtype) of every input a feed must hold (initializers listed as inputs are not)."""
    specs = []
    for v in feed_inputs(model.graph):
        dims: tuple[int | str, ...] = tuple(d if isinstance(d, int) else _dim_name(d) for d in (v.shape or ()))
        dtype = v.dtype.numpy() if v.dtype is not None else np.dtype(np.float32)
        specs.append((v.name or "", dims, np.dtype(dtype)))
    return specs


def _dim_name(d: object) -> str:
    value = getattr(d, "value", None)
    return str(value) if value is not None else "?"


def _fit(arr: np.ndarray, name: str, dims: tuple[int | str, ...], dtype: np.dtype, origin: str) -> list[np.ndarray]:
    """Split ``arr`` into per-sample arrays of the input's rank.

    Layouts taken: ``[samples, *input_shape]``; and, when the input's first dim is 1 or dynamic,
    ``[samples, *input_shape[1:]]`` (a stack of images saved as [N, 3, 224, 224] for a [1, 3, 224, 224]
    input): its first axis is the sample axis, each sample keeping a first dim of 1. An array of the
    input's shape exactly is one sample; so is a rank-1 array for a rank-1 dynamic input (a sequence,
    not a stack).
    """
    rank = len(dims)
    first = dims[0] if dims else None
    dynamic = not isinstance(first, int) or first < 0
    stacked = first == 1 or (dynamic and rank >= 2)
    if arr.ndim == rank + 1:
        samples = list(arr)
    elif arr.ndim == rank and rank >= 1 and stacked:
        samples = [arr[i:i + 1] for i in range(arr.shape[0])]
    elif arr.ndim == rank:
        samples = [arr]
    else:
        raise EdgecError(f"{origin}: array '{name}' has shape {arr.shape}; input '{name}' wants rank {rank} "
                         f"({list(dims)}) or a leading sample axis", hint=_layouts(dims))
    for s in samples[:1]:
        for i, (d, got) in enumerate(zip(dims, s.shape)):
            if isinstance(d, int) and d >= 0 and d != got:  # -1 (Paddle exports) is dynamic
                raise EdgecError(f"{origin}: array '{name}' has shape {arr.shape}, input '{name}' wants "
                                 f"{list(dims)} (dim {i})", hint=_layouts(dims))
    return [np.asarray(s, dtype=dtype) for s in samples]


def _layouts(dims: tuple[int | str, ...]) -> str:
    shape = ", ".join(str(d) for d in dims)
    taken = [f"[N, {shape}]" if dims else "[N]", f"[{shape}]"]
    if dims and (dims[0] == 1 or not isinstance(dims[0], int)) and len(dims) >= 2:
        taken.insert(1, f"[N, {', '.join(str(d) for d in dims[1:])}]")
    return f"arrays taken for this input: {' or '.join(taken)} (N samples)"


def from_npz(path: Path, model: ir.Model) -> FeedSource:
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - numpy raises several kinds for bad files
        raise EdgecError(f"{path}: cannot read as .npz/.npy ({str(exc).splitlines()[0][:120]})",
                         hint="write it with numpy.savez(path, input_name=array)") from None
    specs = input_specs(model)
    if isinstance(data, np.ndarray):
        if len(specs) != 1:
            raise EdgecError(f"{path}: an .npy feeds a single-input model; this one has {len(specs)} inputs",
                             hint="use an .npz with one array per input name")
        arrays = {specs[0][0]: data}
    else:
        arrays = {}
        for name, _dims, _dt in specs:
            if name not in data.files:
                raise EdgecError(f"{path}: no array named '{name}' (the model's input)",
                                 hint=f"arrays in the file: {', '.join(data.files) or 'none'}")
            arrays[name] = data[name]
    per_input = {name: _fit(arrays[name], name, dims, dt, str(path)) for name, dims, dt in specs}
    counts = {len(v) for v in per_input.values()}
    if len(counts) != 1:
        raise EdgecError(f"{path}: inputs have different sample counts {sorted(counts)}",
                         hint="give every input the same number of samples")
    n = counts.pop()
    if n == 0:
        raise EdgecError(f"{path}: holds no samples", hint="save at least one sample per input")
    return FeedSource(n, lambda i: {k: v[i] for k, v in per_input.items()}, f"{path.name} ({n} samples)")


def random_feeds(model: ir.Model, n: int, seed: int = 0) -> FeedSource:
    specs = []
    for name, dims, dt in input_specs(model):
        # A symbolic batch axis is taken as 1; any other symbolic dim needs the user's size.
        dims = tuple(1 if i == 0 and not isinstance(d, int) else d for i, d in enumerate(dims))
        specs.append((name, dims, dt))
        for i, d in enumerate(dims):
            if not isinstance(d, int):
                example = ",".join(str(x) if isinstance(x, int) else f"<{x}>" for x in dims)
                raise EdgecError(f"input '{name}' has a symbolic dim '{d}' (axis {i}): random samples need a size",
                                 hint=f"give real data with --calib/--samples, or pin it: --shape {name}={example}")

    def load(i: int) -> Feed:
        rng = np.random.default_rng(seed + i)
        feed = {}
        for name, dims, dt in specs:
            feed[name] = random_array(rng, dims, dt)  # type: ignore[arg-type]
        return feed

    return FeedSource(n, load, f"random ({n} samples)", synthetic=True)


def random_array(rng: np.random.Generator, dims: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """Noise in the input's own dtype: normal for floats (bfloat16/float8 too), 0/1 for integers and
    bools (safe as indices and counts), short words for strings."""
    if dtype.kind == "O":
        words = np.array(["a", "b", "edge", "onnx"], dtype=object)
        return words[rng.integers(0, len(words), size=dims)]
    if dtype.kind in "iub":
        return rng.integers(0, 2, size=dims).astype(dtype)
    return rng.standard_normal(dims).astype(dtype)


def from_function(spec: str, model: ir.Model) -> FeedSource:
    module_name, _, func_name = spec.partition(":")
    try:
        func = getattr(importlib.import_module(module_name), func_name)
    except (ImportError, AttributeError) as exc:
        raise EdgecError(f"--calib {spec}: cannot import ({exc})", hint="check the module is on PYTHONPATH") from None
    try:
        feeds = [dict(f) for f in func()]
    except Exception as exc:  # noqa: BLE001 - user code
        raise EdgecError(f"--calib {spec}: the function failed: {type(exc).__name__}: {_one_line(exc)}",
                         hint="run it in Python to see the traceback") from None
    if not feeds:
        raise EdgecError(f"--calib {spec}: returned no feeds", hint="return an iterable of {input_name: array}")
    names = {n for n, _d, _t in input_specs(model)}
    missing = names - set(feeds[0])
    if missing:
        raise EdgecError(f"--calib {spec}: feeds lack inputs {sorted(missing)}",
                         hint="each feed is a dict with one array per model input")
    return FeedSource(len(feeds), lambda i: feeds[i], f"{spec} ({len(feeds)} samples)")


def load_feeds(spec: str | Path | None, model: ir.Model, *, limit: int | None = None,
               preprocess: Any = None, seed: int = 0) -> FeedSource | None:
    """Resolve a --calib argument to a FeedSource (None when ``spec`` is None)."""
    if spec is None:
        return None
    text = str(spec)
    if text == "random":
        return random_feeds(model, limit or 8, seed)
    path = Path(text)
    if path.is_dir():
        from edgec import images  # decoding and preprocessing images lives with calibration

        return images.image_feeds(path, model, preprocess=preprocess, limit=limit)
    if path.suffix in (".npz", ".npy"):
        if not path.exists():
            raise EdgecError(f"{path}: no such file", hint="check the path")
        src = from_npz(path, model)
    elif ":" in text and not path.exists():
        src = from_function(text, model)
    elif not path.exists():
        raise EdgecError(f"--calib {text}: no such file or folder",
                         hint="give a folder of images, an .npz/.npy, module:function, or 'random'")
    else:
        raise EdgecError(f"--calib {text}: unsupported kind of file",
                         hint="give a folder of images, an .npz/.npy, module:function, or 'random'")
    if limit is not None and len(src) > limit:
        src = src[:limit]
    return src
