"""TensorRT backend (jetson-fp16 / jetson-int8): everything that needs no TensorRT, and the engine where it exists.

Users take our ONNX to a Jetson and build there, so what we write must be right without TensorRT here:

  model.onnx            the compiled model (explicit quantization for jetson-int8: Q/DQ placed as TensorRT fuses)
  build_engine.sh       trtexec with the right flags for the target TensorRT (--trt-version): --int8/--fp16
                        up to 10.x, none on 11.x (strongly typed); profile shapes, --saveEngine,
                        --timingCacheFile; MODE=implicit uses model_implicit.onnx with --calib (up to 10.x)
  calibration.cache     (int8) TensorRT's EntropyCalibration2 text cache from our calibrated ranges, for
  model_implicit.onnx   users of implicit quantization: the same model with the Q/DQ removed
  lint                  edgec.backends.tensorrt_lint on the emitted model (figures["lint"]); an error is
                        repeated in the notes and the report's warnings: it is never silently emitted
  numerics              ONNX Runtime runs the QDQ model (the int8 arithmetic TensorRT reproduces) on the
                        sample inputs; drift vs the input model's outputs as for cpu-int8
  fp16 check            activation ranges on the calibration data (jetson-fp16; for jetson-int8 the float
                        layers, which run in fp16): tensors beyond fp16's 65504 are listed with the layers
                        producing them (the usual cause of NaN engines)
  engine                only when ``import tensorrt`` works and a CUDA device is present: built with the
                        TensorRT Python API and timed. Otherwise the notes say
                        "engine not built: TensorRT not available" and no engine file exists.

Options (ctx.backend, edgec.context.BackendOptions): ``trt_version`` (default 10.3.0, JetPack 6.1/6.2; 8.6.2 for JetPack 6.0; 11.x builds
strongly typed: no --int8/--fp16/--calib in the script, no calibration cache; cache header and op table),
``trt_profile`` ({input: (min, opt, max)} for dynamic inputs), ``build_engine`` (default True).
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from edgec import calib, metrics, model_io, runtime
from edgec.backends import tensorrt_cache, tensorrt_lint
from edgec.backends.tensorrt_engine import NOT_AVAILABLE, build_engine
from edgec.graph import const_array
from edgec.pass_infra import PassContext
from edgec.records import Artifacts

__all__ = ["NOT_AVAILABLE", "build_engine", "emit"]
# trtexec flags this backend writes. Each was checked in trtexec's option parser and help text
# (NVIDIA/TensorRT samples/common/sampleOptions.cpp at tags v8.6.1 and v10.3.0, the TensorRT releases of
# JetPack 6). TensorRT 11 dropped --int8, --fp16 and --calib (strongly typed networks only: the
# "Migrating trtexec Usage from TensorRT 10.x to 11.x" guide); TRTEXEC_FLAGS_11 is what a script for 11 uses.
TRTEXEC_FLAGS = ("--onnx", "--saveEngine", "--int8", "--fp16", "--shapes", "--minShapes", "--optShapes",
                 "--maxShapes", "--timingCacheFile", "--calib")
TRTEXEC_FLAGS_11 = tuple(f for f in TRTEXEC_FLAGS if f not in ("--int8", "--fp16", "--calib"))
Profile = Mapping[str, Sequence[Sequence[int]]]


def trt_major(version: str) -> int:
    """The major number of a TensorRT version string ("10.3.0" -> 10); checked by tensorrt_cache."""
    return tensorrt_cache.version_number(version) // (10000 if tensorrt_cache.version_number(version) >= 100000
                                                       else 1000)


def emit(model: ir.Model, target: Any, ctx: PassContext, out_dir: Path) -> Artifacts:
    out_dir = Path(out_dir)
    art = Artifacts(backend="tensorrt")
    opts = ctx.backend
    trt_version = opts.trt_version or tensorrt_cache.DEFAULT_TRT_VERSION
    profile: Profile = opts.trt_profile or {}
    precision = str(getattr(target, "precision", "fp32"))
    int8 = precision == "int8" or _has_qdq(model)

    path = model_io.save(model, out_dir / "model.onnx")
    art.files["model"] = path
    art.figures["bytes"] = path.stat().st_size

    plain = strip_qdq(model) if _has_qdq(model) else model
    ranges = _ranges(plain, ctx, art, known=calibration_scales(model, {})) if (precision == "fp16" or int8) else {}
    # The fp16 range check applies to int8 engines too: their float layers run in fp16 (--fp16 fallback).
    findings = tensorrt_lint.lint(model, target, profile=profile, trt_version=trt_version, ranges=ranges)
    _record_lint(findings, art, ctx)

    if ctx.samples:
        # optimization="basic" evaluates Q/DQ as written (float fake-quant: what TensorRT's int8 kernels compute,
        # they accumulate exactly in int32). ORT's fused x86 s8s8 kernels ("all") drift far more (ResNet-18
        # style: 13 dB vs 36 dB SQNR): that is ORT's CPU arithmetic, not TensorRT's.
        sess = runtime.session(path, optimization="basic")
        held = ctx.held_aside
        if held is not None and held.feeds and held.reference is not None:  # the manager scored the input on it
            from edgec.manager import run_batched

            art.figures["drift"] = metrics.drift(held.reference, run_batched(sess, held.feeds),
                                                 held.indices).to_dict()
        elif ctx.reference_outputs is not None:
            art.figures["drift"] = metrics.drift(ctx.reference_outputs, runtime.run(sess, ctx.samples)).to_dict()
    else:
        art.notes.append("no sample inputs: the ONNX Runtime numerics (TensorRT's int8 arithmetic) were not measured")

    calib_file = None
    major = trt_major(trt_version)
    if int8 and major >= 11:
        art.notes.append(f"TensorRT {trt_version}: no implicit quantization (no --int8/--calib in 11.x): "
                         "model.onnx's Q/DQ is the only int8 path, so no calibration.cache is written")
    if int8 and major < 11:
        scales = calibration_scales(model, ranges)
        if scales:
            art.files["implicit_model"] = model_io.save(plain, out_dir / "model_implicit.onnx")
            calib_file = tensorrt_cache.write(out_dir / "calibration.cache", scales, trt_version)
            art.files["calibration_cache"] = calib_file
            art.figures["calibration_tensors"] = len(scales)
    script = write_build_script(out_dir / "build_engine.sh", model, precision="int8" if int8 else precision,
                                profile=profile, implicit=calib_file is not None, trt_version=trt_version)
    art.files["script"] = script
    if precision == "fp16" and major >= 11:
        art.notes.append(f"TensorRT {trt_version} is strongly typed (no --fp16): the engine runs model.onnx's fp32 "
                         "types; convert it with ModelOpt AutoCast first for fp16 (see build_engine.sh)")

    if opts.build_engine:
        # The timing cache an earlier run left is in the FINAL folder (out_dir is the staging folder the api
        # moves into it); the updated cache is written to the stage and moved in with the rest.
        final = Path(ctx.final_out_dir or out_dir)
        result = build_engine(path, out_dir / "model.engine", int8=int8, fp16=True, profile=profile,
                              timing_cache=final / "timing.cache", timing_cache_out=out_dir / "timing.cache",
                              feed=ctx.samples[0] if ctx.samples else None)
    else:
        result = {"built": False, "reason": "engine not built: disabled (build_engine=False)"}
    art.figures["engine"] = result
    if result.get("built"):
        art.files["engine"] = Path(result["path"])
        art.files["timing_cache"] = out_dir / "timing.cache"
        art.notes.extend(result.get("notes", []))
    else:
        # A TensorRT that is present but refused ("failed") is an error the CLI exits non-zero on (api.compile
        # raises EngineBuildFailed after writing everything else); an absent TensorRT is only a note.
        if result.get("failed"):
            art.notes.insert(0, str(result["reason"]))
            ctx.warn(str(result["reason"]))
        else:
            art.notes.append(str(result["reason"]))
    return art


# ------------------------------------------------------------------------------------------------ lint
def _record_lint(findings: list[tensorrt_lint.Finding], art: Artifacts, ctx: PassContext) -> None:
    art.figures["lint"] = [f.to_dict() for f in findings]
    counts = {s: sum(f.severity == s for f in findings) for s in tensorrt_lint.SEVERITIES}
    art.figures["lint_counts"] = counts
    errors = [f for f in findings if f.severity == "error"]
    if errors:
        msg = (f"TENSORRT LINT: {len(errors)} error(s), the engine will not build as intended; first: "
               f"{errors[0]} (all findings in the report under backend.figures.lint)")
        art.notes.insert(0, msg)
        ctx.warn(msg)
    else:
        art.notes.append(f"TensorRT lint clean: {counts['warning']} warning(s), {counts['info']} info")
    overflow = [f for f in findings if f.rule == "fp16-overflow"]
    if overflow:
        msg = (f"fp16 overflow: {len(overflow)} activation(s) exceed 65504 on the calibration data (NaN risk in an "
               f"fp16 engine), e.g. {overflow[0].node}")
        art.notes.insert(0, msg)
        ctx.warn(msg)


# ------------------------------------------------------------------------------------------------ ranges
def _has_qdq(model: ir.Model) -> bool:
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph)


def _ranges(plain: ir.Model, ctx: PassContext, art: Artifacts,
            known: Mapping[str, float]) -> dict[str, tuple[float, float]]:
    """(min, max) of every float activation of the float model ``plain`` (Q/DQ stripped) over the
    calibration feeds, in one streaming pass of edgec.calib (ONNX Runtime with extra outputs).

    Tensors the quantize pass already measured (ctx.calibration) are not measured again;
    tensors in ``known`` (quantized: their Q scale is used) are skipped unless fp16 needs every range."""
    try:
        feeds = ctx.calibration_feeds()
    except Exception:  # noqa: BLE001 - no data at all: the checks that need ranges are skipped, and said so
        art.notes.append("no calibration or sample data: no activation ranges (fp16 check and calibration cache "
                         "skipped)")
        return {}
    names = float_activations(plain)
    have = dict(ctx.calibration.stats) if ctx.calibration is not None else {}
    need_all = ctx.scheme.get("precision") == "fp16"
    todo = [n for n in names if n not in have and (need_all or n not in known)]
    t0 = time.perf_counter()
    stats = calib.collect(plain, todo, feeds, progress=None) if todo else {}
    art.figures["ranges_seconds"] = round(time.perf_counter() - t0, 3)
    merged = {**{n: st for n, st in have.items() if n in set(names)}, **stats}
    return {n: (float(st.min), float(st.max)) for n, st in merged.items() if getattr(st, "count", 0)}


def float_activations(model: ir.Model) -> list[str]:
    """Names of the float32 tensors computed by nodes of the main graph, plus float graph inputs."""
    model_io_shapes(model)
    names = [v.name for v in model.graph.inputs if v.name and v.dtype == ir.DataType.FLOAT]
    for node in model.graph:
        if node.op_type == "Constant":
            continue
        names += [o.name for o in node.outputs if o.name and o.dtype == ir.DataType.FLOAT]
    return list(dict.fromkeys(names))


def model_io_shapes(model: ir.Model) -> None:
    """Types on every value (shape inference), so float tensors can be told from int64 plumbing."""
    from edgec.graph import infer_shapes

    if any(o.dtype is None for n in model.graph for o in n.outputs):
        infer_shapes(model)


def calibration_scales(model: ir.Model, ranges: Mapping[str, tuple[float, float]]) -> dict[str, float]:
    """Per-tensor int8 scales for TensorRT's implicit mode, keyed by the float model's tensor names.

    Where the QDQ model quantizes a tensor, its Q scale is used (the cache then matches the explicit
    model exactly); every other float activation gets amax / 127 from the calibration ranges."""
    scales = tensorrt_cache.scales_from_ranges(ranges)
    for node in model.graph:
        if node.op_type != "QuantizeLinear" or node.inputs[0] is None or not node.inputs[0].name:
            continue
        s = const_array(node.inputs[1])
        if s is not None and s.size == 1 and const_array(node.inputs[0]) is None:
            scales[node.inputs[0].name] = float(np.asarray(s).ravel()[0])
    return scales


def strip_qdq(model: ir.Model) -> ir.Model:
    """A copy of ``model`` without Q/DQ: DQ(Q(x)) -> x, DQ(w_int8) -> the dequantized float weight."""
    from edgec.graph import NameSource, add_initializer, bypass

    plain = model_io.clone(model)
    graph = plain.graph
    names = NameSource(graph)
    for dq in [n for n in graph if n.op_type == "DequantizeLinear"]:
        src = dq.inputs[0]
        q = src.producer() if src is not None else None
        if q is not None and q.op_type == "QuantizeLinear":
            bypass(dq, keep=0)  # its readers now read the Q's output; the Q goes below
            continue
        w = const_array(src)
        if w is None:
            continue
        scale = np.asarray(const_array(dq.inputs[1]), dtype=np.float32)
        zp = const_array(dq.inputs[2]) if len(dq.inputs) > 2 and dq.inputs[2] is not None else None
        axis = int(dq.attributes["axis"].value) if "axis" in dq.attributes else 1
        shape = [1] * w.ndim
        if scale.size > 1:
            shape[axis % w.ndim] = scale.size
        zero = np.zeros(1, np.float32) if zp is None else np.asarray(zp, np.float32).reshape(shape)
        real = ((w.astype(np.float32) - zero) * scale.reshape(shape)).astype(np.float32)
        value = add_initializer(graph, real, (src.name or "w") + "_float", names)
        ir.convenience.replace_all_uses_with(dq.outputs[0], value, replace_graph_outputs=False)
        if not dq.outputs[0].is_graph_output():
            graph.remove(dq, safe=True)
    for q in [n for n in graph if n.op_type == "QuantizeLinear"]:
        bypass(q, keep=0)  # Q(x) -> x, including Q(float weight) -> the float weight
    for name, v in list(graph.initializers.items()):
        if not v.uses() and not v.is_graph_output() and not v.is_graph_input():
            graph.initializers.pop(name)
    return plain


# ------------------------------------------------------------------------------------------------ trtexec script
def trtexec_args(model: ir.Model, *, onnx_name: str, precision: str, profile: Profile,
                 engine_name: str = "model.engine", calib_name: str | None = None,
                 strongly_typed: bool = False) -> list[str]:
    """trtexec's arguments for this model (flags from TRTEXEC_FLAGS only; TRTEXEC_FLAGS_11 when
    ``strongly_typed``, TensorRT 11: no precision flags, no calibration cache).

    --shapes is given only for dynamic inputs: trtexec refuses explicit shapes on a static model
    ("Static model does not take explicit shapes", sampleEngines.cpp)."""
    args = [f"--onnx={onnx_name}", f"--saveEngine={engine_name}"]
    if strongly_typed:
        if calib_name:
            raise ValueError("TensorRT 11 has no implicit quantization (--calib)")
    elif precision == "int8":
        args += ["--int8", "--fp16"]  # fp16 fallback for the layers left in float
    elif precision == "fp16":
        args.append("--fp16")
    dyn = dynamic_inputs(model)
    if dyn:
        spec = {k: [] for k in ("min", "opt", "max")}
        for name in dyn:
            if name not in profile:
                continue
            for key, shape in zip(("min", "opt", "max"), profile[name]):
                spec[key].append(f"{_quote(name)}:{'x'.join(str(int(d)) for d in shape)}")
        if spec["opt"]:
            args += [f"--minShapes={','.join(spec['min'])}", f"--optShapes={','.join(spec['opt'])}",
                     f"--maxShapes={','.join(spec['max'])}", f"--shapes={','.join(spec['opt'])}"]
    args.append("--timingCacheFile=timing.cache")
    if calib_name:
        args.append(f"--calib={calib_name}")
    return args


def parse_profile(min_shapes: list[str] | None, opt_shapes: list[str] | None,
                  max_shapes: list[str] | None) -> dict[str, list[tuple[int, ...]]]:
    """CLI ``--min-shape x=1,3,320,320 --opt-shape x=1,3,736,736 --max-shape x=4,3,1280,1280`` -> the
    ``trt_profile`` option {input: [min, opt, max]}; every input named needs all three, min <= opt <= max."""
    from edgec.errors import EdgecError

    lo, opt, hi = (model_io.parse_shapes(s) for s in (min_shapes, opt_shapes, max_shapes))
    out: dict[str, list[tuple[int, ...]]] = {}
    for name in dict.fromkeys([*lo, *opt, *hi]):
        if name not in lo or name not in opt or name not in hi:
            raise EdgecError(f"optimization profile for '{name}': give all of --min-shape, --opt-shape and "
                             "--max-shape", hint=f"e.g. --min-shape {name}=1,3,320,320 --opt-shape ... --max-shape ...")
        a, b, c = lo[name], opt[name], hi[name]
        if not (len(a) == len(b) == len(c)) or not all(x <= y <= z for x, y, z in zip(a, b, c)):
            raise EdgecError(f"optimization profile for '{name}': need min <= opt <= max per dim, same rank "
                             f"(got {a}, {b}, {c})")
        out[name] = [a, b, c]
    return out


def _quote(name: str) -> str:
    # trtexec splits a shape spec on ':' and ','; names holding them are wrapped in single quotes
    # (its help text: "Input names can be wrapped with escaped single quotes (ex: 'Input:0')").
    return f"'{name}'" if (":" in name or "," in name) else name


def dynamic_inputs(model: ir.Model) -> list[str]:
    return [v.name for v in model.graph.inputs if v.name and not v.is_initializer() and v.shape is not None
            and any(not isinstance(d, int) or d < 0 for d in v.shape)]


def write_build_script(path: Path, model: ir.Model, *, precision: str, profile: Profile,
                       implicit: bool = False, trt_version: str = tensorrt_cache.DEFAULT_TRT_VERSION) -> Path:
    major = trt_major(trt_version)
    typed = major >= 11  # strongly typed only: no --int8/--fp16/--calib, precision is in the graph
    explicit = trtexec_args(model, onnx_name="$ONNX" if typed else "model.onnx", precision=precision,
                            profile=profile, strongly_typed=typed)
    if typed:
        flags_note = [f"# Flags as in trtexec of TensorRT {major}.x: strongly typed networks only (no --int8,",
                      "# --fp16 or --calib). int8 comes from model.onnx's Q/DQ; other layers run in the graph's",
                      "# types (fp32). For fp16 convert first with ModelOpt AutoCast, e.g.",
                      "#   python3 -m modelopt.onnx.autocast --onnx_path model.onnx --output_path model_fp16.onnx",
                      "# and run ONNX=model_fp16.onnx ./build_engine.sh"]
    else:
        flags_note = [f"# Flags as in trtexec of TensorRT 8.6 and 10.x (JetPack 6); written for {trt_version}."]
    lines = [
        "#!/bin/sh",
        f"# Build the TensorRT engine for this model (edgec; precision {precision}, TensorRT {trt_version}).",
        *flags_note,
        "# On a Jetson trtexec is usually /usr/src/tensorrt/bin/trtexec: set TRTEXEC to point at it.",
        "set -e",
        'cd "$(dirname "$0")"',
        'TRTEXEC="${TRTEXEC:-trtexec}"',
        'if ! command -v "$TRTEXEC" >/dev/null 2>&1 && [ -x /usr/src/tensorrt/bin/trtexec ]; then',
        "  TRTEXEC=/usr/src/tensorrt/bin/trtexec",
        "fi",
    ]
    if typed:
        lines.append('ONNX="${ONNX:-model.onnx}"')
    if implicit and not typed:
        implicit_args = trtexec_args(model, onnx_name="model_implicit.onnx", precision="int8", profile=profile,
                                     calib_name="calibration.cache")
        lines += [
            "# MODE=explicit (default): model.onnx carries Q/DQ, TensorRT follows them exactly.",
            "# MODE=implicit: the Q/DQ-free model with our ranges in calibration.cache (TensorRT picks int8 per layer).",
            'if [ "${MODE:-explicit}" = implicit ]; then',
            '  exec "$TRTEXEC" ' + " ".join(shlex.quote(a) for a in implicit_args) + ' "$@"',
            "fi",
        ]
    quoted = [shlex.quote(a) if "$ONNX" not in a else f'"{a}"' for a in explicit]
    lines.append('exec "$TRTEXEC" ' + " ".join(quoted) + ' "$@"')
    with model_io.atomic_path(path) as tmp:
        Path(tmp).write_text("\n".join(lines) + "\n")
    path.chmod(0o755)
    return path
