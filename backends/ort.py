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
from edgec.pass_infra import PassContext
from edgec.records import Artifacts


def compact_qdq_names(proto: onnx.ModelProto) -> int:
    """Short names for what only Q/DQ nodes read or write: quantized weights, scales, zero points and the
    DequantizeLinear outputs. Their long names repeat the float tensor's (``conv2d_451.tmp_0_zp``) three
    times each, 8 % of an int8 detector's file. The float tensors, graph inputs/outputs and the compute
    nodes keep their names, so a quantized tensor is still found through its QuantizeLinear's input.
    Returns the bytes saved."""
    g = proto.graph
    before = g.ByteSize()
    qdq = ("QuantizeLinear", "DequantizeLinear")
    readers: dict[str, set[str]] = {}
    for n in g.node:
        for i in n.input:
            readers.setdefault(i, set()).add(n.op_type)
    interface = {v.name for v in [*g.input, *g.output]}
    renames: dict[str, str] = {}
    for k, t in enumerate(g.initializer):
        if t.name not in interface and readers.get(t.name, set()) and readers[t.name] <= set(qdq):
            renames[t.name] = f"k{k}"
    for k, n in enumerate(g.node):
        if n.op_type == "DequantizeLinear" and n.output[0] not in interface:
            renames[n.output[0]] = f"d{k}"
    taken = {o for n in g.node for o in n.output} | {t.name for t in g.initializer} | interface
    if any(v in taken for v in renames.values()):
        return 0  # a model already using such names: leave it as it is
    for t in g.initializer:
        t.name = renames.get(t.name, t.name)
    for n in g.node:
        n.input[:] = [renames.get(i, i) for i in n.input]
        n.output[:] = [renames.get(o, o) for o in n.output]
    return before - g.ByteSize()


def emit(model: ir.Model, target: Any, ctx: PassContext, out_dir: Path) -> Artifacts:
    out_dir = Path(out_dir)
    path = out_dir / "model.onnx"
    if model_io.in_memory_bytes(model) <= model_io.PROTO_LIMIT and not ctx.options.get("keep_names"):
        proto = model_io.to_proto(model)
        # Intermediate shapes are dead weight in a deployed file: ONNX Runtime infers them at load.
        del proto.graph.value_info[:]
        compact_qdq_names(proto)
        with model_io.atomic_path(path) as tmp:
            tmp.write_bytes(proto.SerializeToString())
    else:
        path = model_io.save(model, path, value_info=False)
    art = Artifacts(backend="ort", files={"model": path})
    art.figures["bytes"] = path.stat().st_size
    try:
        sess = runtime.session(path)
    except Exception as exc:  # noqa: BLE001
        raise EdgecError(f"{path}: ONNX Runtime cannot load the compiled model: {str(exc).splitlines()[0][:300]}",
                         hint="a bug in edgec: please report it with the model") from None
    if ctx.samples:
        outputs = runtime.run(sess, ctx.samples)
        if "reference_outputs" in ctx.cache:
            art.figures["drift"] = metrics.drift(ctx.cache["reference_outputs"], outputs).to_dict()
        runs = int(ctx.options.get("bench_runs", 30))
        if runs > 0:
            art.figures["latency"] = runtime.time_session(sess, ctx.samples[0], runs=runs)
            float_model = ctx.cache.get("float_model")
            if ctx.scheme.get("precision") == "int8" and float_model is not None:
                # Never slower: int8 is timed against the float model it came from, interleaved.
                from edgec.quant_report import compare_fp32

                cmp = compare_fp32(float_model, path, ctx.samples[0], runs=max(5, runs // 3))
                art.figures["int8_vs_fp32"] = cmp
                if cmp["int8_slower"]:
                    msg = (f"int8 is SLOWER than fp32 here ({cmp['int8_ms']:.3f} vs {cmp['fp32_ms']:.3f} ms): "
                           "compile with --fallback auto to keep the faster variant")
                    ctx.warn(msg)
                else:
                    art.notes.append(f"int8 {cmp['int8_ms']:.3f} ms vs fp32 {cmp['fp32_ms']:.3f} ms "
                                     f"({cmp['ratio']:.2f}x)")
    else:
        art.notes.append("no sample inputs: the model was loaded but not run or timed")
    return art


def bench(path: str | Path, feed: dict, *, runs: int = 50, threads: int = 2,
          optimization: str = "all") -> dict[str, float]:
    """Time one model file the way ``emit`` does (used by ``edgec bench``)."""
    sess = runtime.session(Path(path), threads=threads, optimization=optimization)
    return runtime.time_session(sess, feed, runs=runs)
