"""Export a PyTorch module to ONNX the way edgec wants its input, and prove the file is right.

Why a wrapper around ``torch.onnx.export``:
- ``keep_bn=True`` keeps BatchNormalization as its own node (no constant folding, eval-mode BN), so the
  graph edgec optimizes is the graph the user trained; ``fuse-bn`` then does the folding and records it.
- The exported file is run in ONNX Runtime on the example inputs and compared with PyTorch's outputs;
  a file that does not compute what the module computes is an error, not a warning.
- The file is written to a temporary name in the target directory and renamed only after the check, so
  a failed export never leaves a half-written or wrong model under the requested name.

torch is imported inside the functions: the rest of edgec works without it.
"""

from __future__ import annotations

import importlib
import os
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgec.errors import EdgecError

# Relative to the largest magnitude of the reference output: elementwise relative error is meaningless
# for outputs near zero (ReLU, logits of unlikely classes), and float32 kernels of ORT and PyTorch
# legitimately differ in the last bits.
MAX_REL_ERROR = 1e-4


def export(
    model: Any,
    example_inputs: Any,
    path: str | os.PathLike[str],
    *,
    opset: int = 17,
    dynamic_batch: bool = False,
    keep_bn: bool = True,
    check: bool = True,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
) -> Path:
    """Export ``model`` (a ``torch.nn.Module``) to ``path`` with the legacy TorchScript exporter.

    ``example_inputs``: a tensor, a numpy array, or a tuple/list of them (one per model input).
    ``keep_bn``: keep BatchNormalization nodes (``do_constant_folding=False``, eval-mode BN).
    ``dynamic_batch``: make dimension 0 of every input and output symbolic ("batch"); the check then
    also runs a batch of 2 to catch a batch size baked into a Reshape.
    ``check``: compare ONNX Runtime with PyTorch and raise EdgecError naming the first output whose
    max error relative to the output's max magnitude exceeds 1e-4.
    Returns the path written.
    """
    torch = _import_torch()
    if not isinstance(model, torch.nn.Module):
        raise EdgecError(f"export needs a torch.nn.Module, got {type(model).__name__}")
    inputs = _as_tensors(torch, example_inputs)
    target = Path(path)
    if target.is_dir():
        raise EdgecError(f"export target '{target}' is a directory", hint="give a file name ending in .onnx")
    target.parent.mkdir(parents=True, exist_ok=True)

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            reference = _flatten_outputs(torch, model(*inputs))
        in_names = list(input_names) if input_names else _default_names("input", len(inputs))
        out_names = list(output_names) if output_names else _default_names("output", len(reference))
        if len(in_names) != len(inputs) or len(out_names) != len(reference):
            raise EdgecError(
                f"export: {len(in_names)} input names for {len(inputs)} inputs and "
                f"{len(out_names)} output names for {len(reference)} outputs"
            )
        dynamic_axes = {n: {0: "batch"} for n in in_names + out_names} if dynamic_batch else None

        fd, tmp_name = tempfile.mkstemp(suffix=".onnx.tmp", dir=target.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            with warnings.catch_warnings():
                # The legacy exporter warns that it is legacy on every call; we choose it on purpose
                # (it keeps BatchNormalization and needs no onnxscript rewrite of the graph).
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    model, tuple(inputs), str(tmp), input_names=in_names, output_names=out_names,
                    opset_version=opset, dynamo=False, do_constant_folding=not keep_bn,
                    training=torch.onnx.TrainingMode.EVAL, dynamic_axes=dynamic_axes,
                )
            if check:
                _check(tmp, in_names, out_names, inputs, reference)
                if dynamic_batch:
                    doubled = [torch.cat([t, t.flip(0)]) for t in inputs]
                    with torch.no_grad():
                        ref2 = _flatten_outputs(torch, model(*doubled))
                    _check(tmp, in_names, out_names, doubled, ref2, note=" at batch 2")
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    finally:
        model.train(was_training)
    return target


def export_factory(
    spec: str,
    shape: Sequence[Sequence[int]],
    out: str | os.PathLike[str],
    **options: Any,
) -> Path:
    """Build a module from ``spec`` = ``"pkg.module:factory"`` and export it with :func:`export`.

    ``factory()`` must return a ``torch.nn.Module`` (it is put in eval mode). ``shape`` gives one input
    shape per model input, e.g. ``[(1, 3, 224, 224)]``. The example inputs are seeded standard-normal
    tensors: they only drive tracing and the PyTorch-vs-ONNX Runtime check, never calibration.
    Every failure (bad spec, import error, missing attribute, factory raising, bad shape) is an
    EdgecError with a one-line message naming the spec.
    """
    torch = _import_torch()
    shapes = _parse_shapes(spec, shape)
    module_name, _, attr_path = spec.partition(":")
    if not module_name or not attr_path:
        raise EdgecError(f"bad model spec '{spec}': expected 'package.module:factory'",
                         hint="for example 'torchvision_free.models:build_net'")
    # Console scripts do not put the working directory on sys.path the way `python -m` does; a user
    # running `edgec export mymodels:net` from their project expects their module to be found.
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        try:
            obj: Any = importlib.import_module(module_name)
        except Exception as exc:  # ImportError, or anything the module raises while importing
            raise EdgecError(f"'{spec}': cannot import module '{module_name}': {type(exc).__name__}: {exc}",
                             hint="check the module path and that it is importable from here") from exc
    finally:
        if added:
            sys.path.remove(cwd)
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise EdgecError(f"'{spec}': '{module_name}' has no attribute '{attr_path}'")
        obj = getattr(obj, part)
    if not callable(obj):
        raise EdgecError(f"'{spec}': '{attr_path}' is not callable")
    try:
        model = obj()
    except Exception as exc:
        raise EdgecError(f"'{spec}': factory raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, torch.nn.Module):
        raise EdgecError(f"'{spec}': factory returned {type(model).__name__}, not a torch.nn.Module")
    model.eval()
    gen = torch.Generator().manual_seed(0)
    inputs = tuple(torch.randn(*s, generator=gen) for s in shapes)
    try:
        with torch.no_grad():
            model(*inputs)
    except Exception as exc:
        shown = ", ".join("x".join(map(str, s)) for s in shapes)
        raise EdgecError(f"'{spec}': forward failed for input shape {shown}: {type(exc).__name__}: {exc}",
                         hint="pass the shape(s) the model expects") from exc
    return export(model, inputs, out, **options)


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise EdgecError("edgec export needs PyTorch: pip install 'edgec[torch]'") from exc
    return torch


def _parse_shapes(spec: str, shape: Any) -> list[tuple[int, ...]]:
    if isinstance(shape, (tuple, list)) and shape and all(isinstance(d, int) for d in shape):
        shape = [shape]  # a single shape given without the outer list
    if not isinstance(shape, (tuple, list)) or not shape:
        raise EdgecError(f"'{spec}': no input shape given", hint="e.g. --shape 1x3x224x224")
    shapes: list[tuple[int, ...]] = []
    for s in shape:
        if (not isinstance(s, (tuple, list)) or not s
                or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in s)):
            raise EdgecError(f"'{spec}': bad input shape {s!r}: need positive integers, e.g. (1, 3, 224, 224)")
        shapes.append(tuple(s))
    return shapes


def _as_tensors(torch: Any, example_inputs: Any) -> list[Any]:
    items = list(example_inputs) if isinstance(example_inputs, (tuple, list)) else [example_inputs]
    tensors = []
    for x in items:
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(np.ascontiguousarray(x))
        if not isinstance(x, torch.Tensor):
            raise EdgecError(f"export: example inputs must be tensors or numpy arrays, got {type(x).__name__}")
        tensors.append(x)
    if not tensors:
        raise EdgecError("export: no example inputs given")
    return tensors


def _flatten_outputs(torch: Any, out: Any) -> list[np.ndarray]:
    """The exporter flattens nested tuples/lists/dicts of outputs in order; mirror that."""
    if isinstance(out, torch.Tensor):
        return [out.detach().cpu().numpy()]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        return [a for o in out for a in _flatten_outputs(torch, o)]
    raise EdgecError(f"export: model returned {type(out).__name__}; only tensors (possibly nested) are exportable")


def _default_names(stem: str, n: int) -> list[str]:
    return [stem] if n == 1 else [f"{stem}_{i}" for i in range(n)]


def _check(
    onnx_path: Path,
    in_names: list[str],
    out_names: list[str],
    inputs: list[Any],
    reference: list[np.ndarray],
    note: str = "",
) -> None:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    # The exporter drops inputs the graph does not use; feed only those ORT asks for.
    wanted = {i.name for i in sess.get_inputs()}
    feed = {n: t.detach().cpu().numpy() for n, t in zip(in_names, inputs) if n in wanted}
    got = sess.run(out_names, feed)
    for name, ref, val in zip(out_names, reference, got):
        if ref.shape != val.shape:
            raise EdgecError(f"export check{note}: output '{name}' has shape {list(val.shape)} in ONNX Runtime "
                             f"but {list(ref.shape)} in PyTorch")
        if ref.size == 0:
            continue
        if not np.issubdtype(ref.dtype, np.floating):
            if not np.array_equal(ref, val):
                raise EdgecError(f"export check{note}: output '{name}' ({ref.dtype}) differs from PyTorch")
            continue
        ref64, val64 = ref.astype(np.float64), val.astype(np.float64)
        scale = max(float(np.max(np.abs(ref64))), 1e-12)
        rel = float(np.max(np.abs(ref64 - val64))) / scale
        if not np.isfinite(rel) or rel > MAX_REL_ERROR:
            raise EdgecError(
                f"export check{note}: output '{name}' differs from PyTorch: max rel error {rel:.3g} > {MAX_REL_ERROR:g}",
                hint="an operator exports to different math; try another opset or check custom ops",
            )
