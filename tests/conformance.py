"""The ONNX backend test cases (onnx.backend.test) as edgec compile jobs, for tests/test_conformance.py.

Cases come from two places: the model folders the onnx wheel ships (backend/test/data/{pytorch-converted,
pytorch-operator,simple}, each a model.onnx plus test_data_set_*/{input,output}_*.pb) and the node
cases, which this wheel does not ship as files: they are generated from ``onnx.backend.test.case.node``
(importing one of its modules runs that op's ``export`` functions, which record models and expected
outputs). Importing only some modules generates only their cases, so the default (spread) run stays cheap.

Each case is compiled with ``edgec.compile(path, target="cpu-fp32", samples=[its inputs])`` and the
compiled model's outputs are compared with the case's expected ones (rtol 1e-3, atol 1e-5). Outcomes:
  ok        compiled, outputs match
  skipped   ONNX Runtime itself cannot run the original model, or its own outputs miss the expected
            ones: an external limit, not edgec's
  refused   edgec raised an EdgecError (must be listed in docs/errors.md)
  wrong     compiled, but the outputs differ (or edgec crashed)
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import importlib
import os
import pkgutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.numpy_helper
import onnxruntime as ort

RTOL, ATOL = 1e-3, 1e-5
DATA = Path(onnx.__file__).parent / "backend" / "test" / "data"
FOLDERS = ("pytorch-converted", "pytorch-operator", "simple")


@dataclasses.dataclass
class Case:
    name: str
    kind: str  # node | pytorch-converted | pytorch-operator | simple
    model: onnx.ModelProto
    inputs: list[Any]  # per graph input (initializers excluded), in order
    outputs: list[Any]


def _node_modules() -> list[str]:
    import onnx.backend.test.case.node as pkg

    return sorted(m.name for m in pkgutil.iter_modules(pkg.__path__))


def node_cases(every: int = 1, modules: list[str] | None = None) -> Iterator[Case]:
    """Node cases of every ``every``-th op module (sorted by name: a deterministic spread over ops), or of
    the named ``modules``."""
    import onnx.backend.test.case.node as pkg

    # np.random.seed is set by onnx before each export; warnings from its reference code are noise here.
    for mod in modules or _node_modules()[::every]:
        if mod not in _GENERATED:  # a module's cases are made once, when it is first imported
            before = len(pkg._NodeTestCases)
            with np.errstate(all="ignore"):
                importlib.import_module(f"{pkg.__name__}.{mod}")
            _GENERATED[mod] = pkg._NodeTestCases[before:]
        for tc in _GENERATED[mod]:
            for k, (ins, outs) in enumerate(tc.data_sets or []):
                yield Case(tc.name if k == 0 else f"{tc.name}#{k}", "node", tc.model, list(ins), list(outs))


_GENERATED: dict[str, list[Any]] = {}


def _read_pb(path: str) -> Any:
    """A TensorProto, SequenceProto or OptionalProto file as numpy (lists for sequences)."""
    raw = Path(path).read_bytes()
    for cls in (onnx.TensorProto, onnx.SequenceProto, onnx.OptionalProto):
        msg = cls()
        with contextlib.suppress(Exception):  # a wrong message type: the checks below fail, try the next
            msg.ParseFromString(raw)
        if cls is onnx.TensorProto and (msg.dims or msg.data_type):
            return onnx.numpy_helper.to_array(msg)
        if cls is onnx.SequenceProto and msg.elem_type:
            return onnx.numpy_helper.to_list(msg)
        if cls is onnx.OptionalProto and msg.elem_type:
            return onnx.numpy_helper.to_optional(msg)
    raise ValueError(f"{path}: unreadable test data")


def folder_cases() -> Iterator[Case]:
    for kind in FOLDERS:
        for case_dir in sorted((DATA / kind).glob("test_*")):
            model = onnx.load(str(case_dir / "model.onnx"))
            for ds in sorted(case_dir.glob("test_data_set_*")):
                ins = [_read_pb(p) for p in sorted(glob.glob(str(ds / "input_*.pb")), key=_index)]
                outs = [_read_pb(p) for p in sorted(glob.glob(str(ds / "output_*.pb")), key=_index)]
                name = case_dir.name if ds.name.endswith("_0") else f"{case_dir.name}#{ds.name[-1]}"
                yield Case(name, kind, model, ins, outs)


def _index(path: str) -> int:
    return int(os.path.basename(path).split("_")[1].split(".")[0])


def _real_inputs(model: onnx.ModelProto) -> list[str]:
    inits = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits]


def feed_of(case: Case) -> dict[str, Any]:
    names = _real_inputs(case.model)
    # Node cases give some inputs as numpy scalars or TensorProtos (the Cast cases); ORT takes arrays
    # (lists are sequences: kept).
    return {n: _array(v) for n, v in zip(names, case.inputs) if n}


def _array(v: Any) -> Any:
    if isinstance(v, onnx.TensorProto):
        return onnx.numpy_helper.to_array(v)
    return v if isinstance(v, (list, dict)) or v is None else np.asarray(v)


def _ort_outputs(model: onnx.ModelProto, feed: dict[str, Any]) -> list[Any]:
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feed)


def matches(expected: list[Any], got: list[Any]) -> bool:
    if len(expected) != len(got):
        return False
    for e, g in zip(expected, got):
        e = onnx.numpy_helper.to_array(e) if isinstance(e, onnx.TensorProto) else e
        if isinstance(e, list) or isinstance(g, list):
            if not isinstance(e, list) or not isinstance(g, list) or not matches(e, g):
                return False
            continue
        if e is None or g is None:
            if (e is None) != (g is None):
                return False
            continue
        e, g = np.asarray(e), np.asarray(g)
        if e.shape != g.shape:
            return False
        if e.dtype.kind in "OSU" or g.dtype.kind in "OSU":
            if not np.array_equal(e.astype(str), g.astype(str)):
                return False
            continue
        ef, gf = e.astype(np.float64), g.astype(np.float64)
        if not np.allclose(gf, ef, rtol=RTOL, atol=ATOL, equal_nan=True):
            return False
    return True


def run_case(case: Case, tmp: Path) -> tuple[str, str]:
    """(outcome, detail) for one case: ok | skipped | refused | wrong."""
    import edgec
    from edgec.errors import EdgecError

    feed = feed_of(case)
    try:
        ref = _ort_outputs(case.model, feed)
    except Exception as exc:  # noqa: BLE001 - ORT's own limits
        return "skipped", f"ONNX Runtime cannot run it: {str(exc).splitlines()[0][:160]}"
    if not matches(case.outputs, ref):
        return "skipped", "ONNX Runtime's own outputs differ from the expected ones"
    path = tmp / f"{case.name.replace('#', '_')}.onnx"
    onnx.save(case.model, str(path))
    try:
        result = edgec.compile(path, target="cpu-fp32", samples=[feed])
    except EdgecError as exc:
        return "refused", exc.message.splitlines()[0][:300]
    except Exception as exc:  # noqa: BLE001 - a crash is a bug: reported as wrong
        return "wrong", f"crashed: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    try:
        got = _ort_outputs(edgec.model_io.to_proto(result.model), feed)
    except Exception as exc:  # noqa: BLE001
        return "wrong", f"the compiled model does not run: {str(exc).splitlines()[0][:200]}"
    if not matches(case.outputs, got):
        return "wrong", "outputs differ from the expected ones"
    return "ok", ""
