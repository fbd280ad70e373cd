"""ONNX Runtime as the reference runtime: sessions, batched runs, and timing."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

from edgec.errors import EdgecError

Feed = dict[str, np.ndarray]

_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def session(model: ir.Model | bytes | str | Path, *, threads: int = 2, optimization: str = "all",
            spinning: bool = False, external_dir: str | Path | None = None,
            lean: bool = False) -> ort.InferenceSession:
    """An ORT CPU session. Spinning is off by default: timed loops that interleave runtimes would
    otherwise slow each other down (a spinning pool keeps a core busy after each run).

    ``external_dir``: where the external data of a model given as bytes lives (taken from the model
    itself for an ir.Model); ORT would otherwise look in the working directory.

    ``lean``: for evaluation sessions that return hundreds of intermediate outputs while another such
    session is alive (per-layer SQNR runs the float and the int8 model side by side), never for
    timing: no CPU memory arena (it keeps its high-water mark for the session's life: ~1 GB per
    session on PP-OCRv4 det) and no weight pre-packing (a second copy of every weight). Runs are
    ~10 % slower without the arena, so calibration and drift sessions keep it.
    """
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = _LEVELS[optimization]
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    if lean:
        opts.enable_cpu_mem_arena = False
        opts.add_session_config_entry("session.disable_prepacking", "1")
    if isinstance(model, ir.Model):
        from edgec.model_io import external_dir as _external_dir

        external_dir = external_dir or _external_dir(model)
        source: bytes | str = ir.serde.serialize_model(model).SerializeToString()
    elif isinstance(model, Path):
        source = str(model)
    else:
        source = model
    if external_dir is not None and isinstance(source, bytes):
        opts.add_session_config_entry("session.model_external_initializers_file_folder_path", str(external_dir))
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


def input_feed(sess: ort.InferenceSession, feed: Feed) -> dict[str, object]:
    """Only the names the session takes, each in the dtype the model declares for it.

    Every ONNX tensor type is fed in its own dtype (strings as object arrays, uint16/32/64, int16,
    bool, float16 ...). bfloat16 and the float8 types have no numpy dtype ONNX Runtime's Python API
    accepts: they are passed as OrtValues built from their bits. Sequence/optional/map inputs are
    passed as given (lists, None, dicts).
    """
    out: dict[str, object] = {}
    for meta in sess.get_inputs():
        if meta.name not in feed:
            raise EdgecError(f"sample data has no array for model input '{meta.name}'",
                             hint=f"arrays given: {', '.join(feed) or 'none'}")
        if not meta.type.startswith("tensor("):
            out[meta.name] = feed[meta.name]
            continue
        arr = np.asarray(feed[meta.name], dtype=np_type(meta.type))
        want = meta.shape
        if len(want) != arr.ndim or any(isinstance(w, int) and w >= 0 and w != g for w, g in zip(want, arr.shape)):
            raise EdgecError(f"sample input '{meta.name}' has shape {list(arr.shape)}; the model wants {list(want)}",
                             hint="check --calib/--samples (or pin dynamic dims with --shape)")
        elem = _BIT_TYPES.get(meta.type)
        if elem is not None:
            bits = np.ascontiguousarray(arr).view(np.uint8 if arr.dtype.itemsize == 1 else np.uint16)
            out[meta.name] = ort.OrtValue.ortvalue_from_numpy_with_onnx_type(bits, elem)
        else:
            out[meta.name] = arr
    return out


# ONNX Runtime's names for tensor element types -> ONNX's element type numbers (onnx.TensorProto).
_ELEM = {"float": 1, "uint8": 2, "int8": 3, "uint16": 4, "int16": 5, "int32": 6, "int64": 7, "string": 8,
         "bool": 9, "float16": 10, "double": 11, "uint32": 12, "uint64": 13, "bfloat16": 16,
         "float8e4m3fn": 17, "float8e4m3fnuz": 18, "float8e5m2": 19, "float8e5m2fnuz": 20}
# Types whose numpy form (ml_dtypes) ORT's Python API does not take: fed as OrtValues of their bits.
_BIT_TYPES = {f"tensor({k})": v for k, v in _ELEM.items() if v >= 16}


def np_type(ort_type: str) -> np.dtype:
    """The numpy dtype of an ORT tensor type string (``tensor(uint16)`` -> uint16, strings -> object)."""
    elem = _ELEM.get(ort_type[len("tensor("):-1]) if ort_type.startswith("tensor(") else None
    if elem is None:
        return np.dtype(np.float32)
    return np.dtype(ir.DataType(elem).numpy())


def run(sess: ort.InferenceSession, feeds: Sequence[Feed]) -> list[Feed]:
    names = [o.name for o in sess.get_outputs()]
    results = []
    for feed in feeds:
        outs = sess.run(names, input_feed(sess, feed))
        results.append(dict(zip(names, outs)))
    return results


def time_session(sess: ort.InferenceSession, feed: Feed, *, runs: int = 30, warmup: int = 5) -> dict[str, float]:
    """Median and spread of wall time per run in milliseconds."""
    names = [o.name for o in sess.get_outputs()]
    fed = input_feed(sess, feed)
    for _ in range(warmup):
        sess.run(names, fed)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(names, fed)
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return {"median_ms": statistics.median(times), "p10_ms": times[len(times) // 10],
            "p90_ms": times[min(len(times) - 1, (9 * len(times)) // 10)], "runs": runs}


def peak_rss_mb() -> float:
    """Peak resident memory of this process's address space in MB: /proc's VmHWM.

    Not ru_maxrss: Linux carries the parent's high-water mark into a child across exec, so every child
    of a 300 MB benchmark process would report at least 300 MB. Elsewhere ru_maxrss is all there is."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def interleaved_medians(calls: Sequence[Callable[[], object]], runs: int = 40, warmup: int = 5) -> list[float]:
    """Median ms of each call over ``runs`` runs taken in turn (any runtime: ORT sessions, LiteRT invokes).

    The order flips every run (a b, b a, ...): measured with two identical models under load, the one run
    first each time came out ~15 % slower, a position bias that a fixed order would book on one side.
    """
    for _ in range(warmup):
        for call in calls:
            call()
    times: list[list[float]] = [[] for _ in calls]
    for i in range(runs):
        order = range(len(calls)) if i % 2 == 0 else reversed(range(len(calls)))
        for j in order:
            start = time.perf_counter()
            calls[j]()
            times[j].append(1e3 * (time.perf_counter() - start))
    return [float(np.median(t)) for t in times]


def host_int8_dot() -> bool:
    """Whether THIS host's ONNX Runtime int8 kernels accumulate u8*s8 products in int32 (x86 with VNNI or
    AMX, and ARM). Used only to say that a figure measured here is not the deployment's; never to shape an
    artifact (the weight width is the target's: the same inputs give the same bytes on any machine)."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return True
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return any(flag in flags for flag in ("avx512_vnni", "avx_vnni", "amx_int8"))
