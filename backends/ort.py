"""ONNX Runtime backend: write the model, prove ORT loads and runs it, and time it.

The saved file is reloaded from disk (not from memory) so the figures are those of the artifact a
user deploys. Latency is the median of ``bench_runs`` runs on 2 intra-op threads after warm-up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx
import onnx_ir as ir

from edgec import metrics, model_io, runtime
from edgec.errors import EdgecError
from edgec.manager import run_batched
from edgec.pass_infra import PassContext
from edgec.passes.legalize_ort import QDQ
from edgec.records import Artifacts


def emit(model: ir.Model, target: Any, ctx: PassContext, out_dir: Path) -> Artifacts:
    out_dir = Path(out_dir)
    path = out_dir / "model.onnx"
    # The int8 compaction is the pass qdq-compact (passes/legalize_ort.py), checked and recorded by the
    # manager; the backend only serialises. Intermediate shapes are dead weight in a deployed file: ONNX
    # Runtime infers them at load.
    names_kept = ctx.backend.keep_names
    path = model_io.save(model, path, value_info=False)
    art = Artifacts(backend="ort", files={"model": path})
    art.figures["bytes"] = path.stat().st_size
    if not names_kept and any(n.op_type in QDQ and n.name for n in model.graph):
        art.notes.append("the pipeline did not run qdq-compact (cpu-int8's last pass): the file keeps its long "
                         "Q/DQ names and duplicate constants")
    try:
        sess = runtime.session(path)
    except Exception as exc:  # noqa: BLE001
        raise EdgecError(f"{path}: ONNX Runtime cannot load the compiled model: {str(exc).splitlines()[0][:300]}",
                         hint="a bug in edgec: please report it with the model") from None
    if ctx.samples:
        bits = ctx.overrides.weight_bits or ctx.scheme.get("weight_bits")
        if ctx.scheme.get("precision") == "int8" and str(bits) == "8" and not runtime.host_int8_dot():
            ctx.warn("8-bit weights for a VNNI/AMX/ARM deployment: this host has no VNNI, so ONNX Runtime's int8 "
                     "kernels here saturate them: the artifact's drift and latency measured on this host are worse than "
                     "the deployment's (the per-pass drift uses reference numerics)")
        _score(art, sess, ctx)
        runs = ctx.backend.bench_runs
        if runs > 0:
            art.figures["latency"] = runtime.time_session(sess, ctx.samples[0], runs=runs)
            float_model = ctx.shipped_float  # the quantize pass's input, as it would ship
            if ctx.scheme.get("precision") == "int8" and float_model is not None:
                # Never slower: int8 is timed against the float model it came from, interleaved.
                from edgec.quant_report import compare_fp32

                cmp = compare_fp32(float_model, path, ctx.samples[0], runs=max(5, runs // 3))
                art.figures["int8_vs_fp32"] = cmp
                auto = ctx.backend.fallback == "auto" and isinstance(float_model, bytes)
                if cmp["int8_slower"] and auto:
                    # --fallback auto promised never slower: the quantize pass's trial timing favoured int8, the
                    # written artifact does not. Confirm with a longer run, then ship the float model if so.
                    cmp = compare_fp32(float_model, path, ctx.samples[0], runs=max(30, runs))
                    art.figures["int8_vs_fp32"] = cmp
                if cmp["int8_slower"] and auto:
                    model_io.write_proto(onnx.ModelProto.FromString(float_model), path)
                    art.figures["bytes"] = path.stat().st_size
                    art.figures["shipped"] = "fp32"
                    art.figures["latency"] = runtime.time_session(runtime.session(path), ctx.samples[0], runs=runs)
                    _score(art, runtime.session(path), ctx)  # the drift of the file that ships
                    ctx.warn(f"--fallback auto: int8 measured slower than fp32 ({cmp['int8_ms']:.3f} vs "
                             f"{cmp['fp32_ms']:.3f} ms); {path.name} is the fp32 model")
                elif cmp["int8_slower"]:
                    msg = (f"int8 is SLOWER than fp32 here ({cmp['int8_ms']:.3f} vs {cmp['fp32_ms']:.3f} ms): "
                           "compile with --fallback auto to keep the faster variant")
                    ctx.warn(msg)
                else:
                    art.notes.append(f"int8 {cmp['int8_ms']:.3f} ms vs fp32 {cmp['fp32_ms']:.3f} ms "
                                     f"({cmp['ratio']:.2f}x)")
    else:
        art.notes.append("no sample inputs: the model was loaded but not run or timed")
    return art


def _score(art: Artifacts, sess: Any, ctx: PassContext) -> None:
    """The artifact's drift, scored on the held-aside set the manager ran the input model on (on
    ctx.samples when there is none)."""
    held = ctx.held_aside
    if held is not None and held.feeds and held.reference is not None:
        art.figures["drift"] = metrics.drift(held.reference, run_batched(sess, held.feeds), held.indices).to_dict()
    elif ctx.reference_outputs is not None:
        art.figures["drift"] = metrics.drift(ctx.reference_outputs, runtime.run(sess, ctx.samples)).to_dict()


def bench(path: str | Path, feed: dict, *, runs: int = 50, threads: int = 2,
          optimization: str = "all") -> dict[str, float]:
    """Time one model file the way ``emit`` does (used by ``edgec bench``)."""
    sess = runtime.session(Path(path), threads=threads, optimization=optimization)
    return runtime.time_session(sess, feed, runs=runs)
