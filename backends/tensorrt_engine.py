"""Build (and time) a TensorRT engine with the Python API, on TensorRT 10.x and 11.x.

The two APIs differ where it matters (TensorRT 10.x -> 11.x migration guide, "Removed Python APIs and
Replacements"): 11.x removed every precision builder flag (BuilderFlag.INT8, BuilderFlag.FP16, ...) and
``Builder.platform_has_fast_fp16``; every network is strongly typed, the precision comes from the graph
(our explicit Q/DQ for int8) and ``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` is kept but ignored.
10.x still has ``EXPLICIT_BATCH`` (ignored, networks are explicit batch) and the weak-typing flags.

Nothing here reads a TensorRT attribute without checking that it exists: what the installed module offers
decides the path (``api_of``), so a TensorRT we have never seen fails with a sentence, not an AttributeError.
Every failure of TensorRT itself (no device, the ONNX parser, the builder) becomes one line:
``{"built": False, "reason": "...", "failed": True}`` (``failed`` marks a TensorRT that is present but
refused; ``NOT_AVAILABLE`` is the absence of TensorRT, not a failure).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgec import model_io
from edgec.errors import EXIT_INTERNAL, EdgecError

NOT_AVAILABLE = "engine not built: TensorRT not available"
Profile = Mapping[str, Sequence[Sequence[int]]]


class EngineBuildFailed(EdgecError):
    """TensorRT is present and refused the model we wrote (parser or builder). Everything else (model.onnx,
    build_engine.sh, report.json) is written; the CLI exits 1: what edgec emitted does not build."""

    exit_code = EXIT_INTERNAL

    def __init__(self, reason: str, result: Any = None) -> None:
        super().__init__(reason, hint="the other artifacts and report.json are written in -o; rerun with "
                         "--no-engine to skip the build")
        self.result = result


@dataclasses.dataclass(frozen=True)
class TrtApi:
    """What the installed TensorRT offers, read once (attribute presence, never the version string)."""

    version: str
    strongly_typed_only: bool      # 11.x: no precision builder flags; types come from the graph
    int8_flag: Any                 # BuilderFlag.INT8 or None
    fp16_flag: Any                 # BuilderFlag.FP16 or None
    network_flags: int             # what create_network() gets

    @property
    def major(self) -> int:
        try:
            return int(self.version.split(".")[0])
        except ValueError:
            return 0


def api_of(trt: Any) -> TrtApi:
    flags = getattr(trt, "BuilderFlag", None)
    int8 = getattr(flags, "INT8", None)
    fp16 = getattr(flags, "FP16", None)
    creation = getattr(trt, "NetworkDefinitionCreationFlag", None)
    strongly_typed_only = int8 is None and fp16 is None
    bits = 0
    if strongly_typed_only:
        # 11.x: STRONGLY_TYPED is retained for API compatibility and ignored; setting it says what we mean.
        st = getattr(creation, "STRONGLY_TYPED", None)
        bits = 1 << int(st) if st is not None else 0
    else:
        eb = getattr(creation, "EXPLICIT_BATCH", None)  # 8.x needs it; 10.x ignores it
        bits = 1 << int(eb) if eb is not None else 0
    return TrtApi(version=str(getattr(trt, "__version__", "?")), strongly_typed_only=strongly_typed_only,
                  int8_flag=int8, fp16_flag=fp16, network_flags=bits)


def _fail(api: TrtApi | None, stage: str, detail: str) -> dict[str, Any]:
    head = f"TensorRT {api.version}" if api is not None else "TensorRT"
    detail = " ".join(str(detail).split())[:500]
    return {"built": False, "failed": True, "stage": stage,
            "reason": f"engine not built: {head} {stage} failed: {detail}"}


def build_engine(onnx_path: Path, engine_path: Path, *, int8: bool, fp16: bool = True, profile: Profile | None = None,
                 timing_cache: Path | None = None, timing_cache_out: Path | None = None,
                 feed: Mapping[str, np.ndarray] | None = None, runs: int = 50) -> dict[str, Any]:
    """Build the engine: explicit quantization (the Q/DQ decide int8); on 10.x the INT8 flag plus an fp16
    fallback for float layers, on 11.x a strongly typed network (float layers run in the graph's fp32).

    The timing cache is read from ``timing_cache`` (the final output folder: what an earlier run left) and
    the updated cache written to ``timing_cache_out`` (default: the same file). Returns {"built": False,
    "reason": ...} when TensorRT or a CUDA device is missing; never writes an engine it did not build."""
    try:
        import tensorrt as trt
    except ImportError:
        return {"built": False, "reason": NOT_AVAILABLE}
    api = api_of(trt)
    logger = trt.Logger(trt.Logger.WARNING)
    try:
        builder = trt.Builder(logger)
    except Exception as exc:  # noqa: BLE001 - TensorRT raises when no CUDA device can be initialised
        return {"built": False, "reason": f"{NOT_AVAILABLE} (no CUDA device: {str(exc)[:200]})"}
    if builder is None:
        return {"built": False, "reason": f"{NOT_AVAILABLE} (no CUDA device)"}
    try:
        network = builder.create_network(api.network_flags)
        parser = trt.OnnxParser(network, logger)
        ok = parser.parse_from_file(str(onnx_path))
    except Exception as exc:  # noqa: BLE001 - TensorRT's own exception types differ between releases
        return _fail(api, "ONNX parser", f"{type(exc).__name__}: {exc}")
    if not ok:
        errors = "; ".join(str(parser.get_error(i)) for i in range(int(parser.num_errors)))
        return _fail(api, "ONNX parser", errors or "no error recorded")
    notes: list[str] = []
    try:
        config = builder.create_builder_config()
        if not api.strongly_typed_only:
            if int8 and api.int8_flag is not None:
                config.set_flag(api.int8_flag)
            # platform_has_fast_fp16 exists up to 10.x; where it is missing, fp16 kernels are simply offered.
            if fp16 and api.fp16_flag is not None and getattr(builder, "platform_has_fast_fp16", True):
                config.set_flag(api.fp16_flag)
        elif fp16:
            notes.append(f"TensorRT {api.version} is strongly typed: layers outside the Q/DQ run in the "
                         "graph's fp32 (convert with ModelOpt AutoCast for fp16)")
        dynamic = [network.get_input(i) for i in range(int(network.num_inputs))
                   if any(int(d) < 0 for d in network.get_input(i).shape)]
        if dynamic:
            opt_profile = builder.create_optimization_profile()
            for tensor in dynamic:
                if not profile or tensor.name not in profile:
                    return _fail(api, "optimization profile", f"dynamic input '{tensor.name}' has no min/opt/max "
                                 "shapes (--min-shape/--opt-shape/--max-shape)")
                lo, opt, hi = (tuple(int(d) for d in s) for s in profile[tensor.name])
                opt_profile.set_shape(tensor.name, lo, opt, hi)
            config.add_optimization_profile(opt_profile)
        cache_bytes = timing_cache.read_bytes() if timing_cache is not None and timing_cache.is_file() else b""
        cache = config.create_timing_cache(cache_bytes)
        # A cache from another TensorRT or GPU is refused rather than silently mixed in (ignore_mismatch=False).
        config.set_timing_cache(cache, ignore_mismatch=False)
        t0 = time.perf_counter()
        serialized = builder.build_serialized_network(network, config)
        build_s = time.perf_counter() - t0
    except Exception as exc:  # noqa: BLE001
        return _fail(api, "builder", f"{type(exc).__name__}: {exc}")
    if serialized is None:
        return _fail(api, "builder", "build_serialized_network returned nothing (the reason is in TensorRT's log "
                     "above)")
    plan = bytes(serialized)
    with model_io.atomic_path(engine_path) as tmp:
        Path(tmp).write_bytes(plan)
    out_cache = timing_cache_out or timing_cache
    if out_cache is not None:
        with model_io.atomic_path(out_cache) as tmp:
            Path(tmp).write_bytes(bytes(config.get_timing_cache().serialize()))
    result: dict[str, Any] = {"built": True, "path": str(engine_path), "build_seconds": round(build_s, 2),
                              "tensorrt": api.version, "strongly_typed": api.strongly_typed_only,
                              "bytes": engine_path.stat().st_size, "timing_cache_reused": bool(cache_bytes)}
    if notes:
        result["notes"] = notes
    if feed is not None:
        try:
            result["latency"] = _time_engine(trt, logger, plan, feed, runs)
        except Exception as exc:  # noqa: BLE001 - the engine is built and written; only its timing failed
            result["latency"] = {"skipped": f"timing failed: {type(exc).__name__}: {str(exc)[:200]}"}
    return result


def _time_engine(trt: Any, logger: Any, plan: bytes, feed: Mapping[str, np.ndarray], runs: int) -> dict[str, Any]:
    """Median GPU latency of the engine on one feed (CUDA buffers through torch, enqueueV3)."""
    try:
        import torch
    except ImportError:
        return {"skipped": "no torch with CUDA to allocate device buffers; time it with trtexec --loadEngine"}
    if not torch.cuda.is_available():
        return {"skipped": "torch has no CUDA; time it with trtexec --loadEngine=model.engine"}
    engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
    context = engine.create_execution_context()
    buffers = {}
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    for name in names:
        if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
            arr = np.ascontiguousarray(feed[name])
            context.set_input_shape(name, arr.shape)
            buffers[name] = torch.from_numpy(arr).cuda()
    for name in names:
        if engine.get_tensor_mode(name) != trt.TensorIOMode.INPUT:
            shape = tuple(context.get_tensor_shape(name))
            dtype = torch.from_numpy(np.zeros(0, trt.nptype(engine.get_tensor_dtype(name)))).dtype
            buffers[name] = torch.empty(shape, dtype=dtype, device="cuda")
    for name in names:
        context.set_tensor_address(name, buffers[name].data_ptr())
    stream = torch.cuda.Stream()
    times = []
    for i in range(runs + 10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record(stream)
        context.execute_async_v3(stream.cuda_stream)
        end.record(stream)
        end.synchronize()
        if i >= 10:
            times.append(start.elapsed_time(end))
    return {"median_ms": float(np.median(times)), "min_ms": float(np.min(times)), "runs": runs}
