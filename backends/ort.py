"""ONNX Runtime backend: write the model, prove ORT loads and runs it, and time it.

The saved file is reloaded from disk (not from memory) so the figures are those of the artifact a
user deploys. Latency is the median of ``bench_runs`` runs on 2 intra-op threads after warm-up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.numpy_helper
import onnx_ir as ir

from edgec import metrics, model_io, runtime
from edgec.errors import EdgecError
from edgec.pass_infra import PassContext
from edgec.records import Artifacts

QDQ = {"QuantizeLinear", "DequantizeLinear"}


def compact(proto: onnx.ModelProto) -> None:
    """Make an int8 file smaller without changing what ONNX Runtime computes from it.

    Drops a Relu/Clip that a following QuantizeLinear already applies, keeps one copy of each constant
    only Q/DQ nodes read, and gives those constants and the DequantizeLinear outputs short names. Their
    long names repeat the float tensor's (``conv2d_451.tmp_0_zp``) three times each, 8 % of an int8
    detector's file. The float tensors, graph inputs/outputs and the compute nodes keep their names, so
    a quantized tensor is still found through its QuantizeLinear's input; Q/DQ nodes go unnamed.
    """
    g = proto.graph
    _drop_clips_inside_q_range(g)
    _share_qdq_constants(g)
    interface = _fixed_names(g)
    readers = _reader_ops(g)
    renames: dict[str, str] = {}
    for k, t in enumerate(g.initializer):
        if t.name not in interface and readers.get(t.name) and readers[t.name] <= QDQ:
            renames[t.name] = f"k{k}"
    for k, n in enumerate(g.node):
        if n.op_type == "DequantizeLinear" and n.output[0] not in interface:
            renames[n.output[0]] = f"d{k}"
    taken = {o for n in g.node for o in n.output} | {t.name for t in g.initializer} | interface
    if any(v in taken for v in renames.values()):
        return  # a model already using such names: leave its names as they are
    for t in g.initializer:
        t.name = renames.get(t.name, t.name)
    for n in g.node:
        n.input[:] = [renames.get(i, i) for i in n.input]
        n.output[:] = [renames.get(o, o) for o in n.output]
        if n.op_type in QDQ:
            n.name = ""  # optional in ONNX; the compute nodes keep theirs for messages and profiles


def _fixed_names(g: onnx.GraphProto) -> set[str]:
    """Names compaction must keep: the graph's inputs and outputs, and every name read inside an
    If/Loop/Scan body (a subgraph reads outer tensors by name, which the readers here do not see)."""
    fixed = {v.name for v in [*g.input, *g.output]}
    stack = [a.g for n in g.node for a in n.attribute if a.type == onnx.AttributeProto.GRAPH]
    stack += [sub for n in g.node for a in n.attribute if a.type == onnx.AttributeProto.GRAPHS for sub in a.graphs]
    while stack:
        sub = stack.pop()
        for n in sub.node:
            fixed.update(n.input)
            stack += [a.g for a in n.attribute if a.type == onnx.AttributeProto.GRAPH]
            stack += [s for a in n.attribute if a.type == onnx.AttributeProto.GRAPHS for s in a.graphs]
        fixed.update(v.name for v in sub.output)
    return fixed


def _readers(g: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    """Tensor name -> the nodes that read it."""
    out: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            out.setdefault(i, []).append(n)
    return out


def _reader_ops(g: onnx.GraphProto) -> dict[str, set[str]]:
    return {name: {n.op_type for n in nodes} for name, nodes in _readers(g).items()}


def _scalar(consts: dict[str, np.ndarray], name: str, default: float) -> float | None:
    """A scalar constant input's value; ``default`` for an omitted input, None when it is not constant."""
    if not name:
        return default
    c = consts.get(name)
    return float(c.reshape(())) if c is not None and c.size == 1 else None


def _drop_clips_inside_q_range(g: onnx.GraphProto) -> None:
    """Remove a Relu/Clip whose only reader is a QuantizeLinear that saturates inside the clip bounds: the
    integers are the same with or without it, and ORT's ClipQuantFusion drops it at load anyway (PP-OCRv4
    det: 34 HardSigmoid clips). Done on the written file only: in the compiled model the Q still reads the
    clipped tensor, which keeps per-layer SQNR figures comparing like with like."""
    consts = {t.name: onnx.numpy_helper.to_array(t) for t in g.initializer if t.ByteSize() < 64}
    readers = _readers(g)
    outputs = _fixed_names(g)
    drop: dict[str, str] = {}  # Clip output -> Clip input
    for n in g.node:
        if n.op_type not in ("Clip", "Relu") or n.domain not in ("", "ai.onnx") or n.output[0] in outputs:
            continue
        users = readers.get(n.output[0], [])
        if len(users) != 1 or users[0].op_type != "QuantizeLinear" or len(users[0].input) < 3:
            continue
        scale, zp = consts.get(users[0].input[1]), consts.get(users[0].input[2])
        if scale is None or zp is None or scale.size != 1 or zp.size != 1 or zp.dtype.kind not in "iu":
            continue
        if n.op_type == "Relu":
            lo, hi = 0.0, np.inf
        elif n.attribute:
            continue  # opset < 11: bounds as attributes (not produced by edgec)
        else:
            ins = [*n.input[1:3], "", ""]
            lo, hi = _scalar(consts, ins[0], -np.inf), _scalar(consts, ins[1], np.inf)
            if lo is None or hi is None:
                continue
        info = np.iinfo(zp.dtype)
        s, z = float(scale.reshape(())), int(zp.reshape(()))
        q_lo, q_hi = (info.min - z) * s, (info.max - z) * s
        tol = 1e-6 * max(abs(q_lo), abs(q_hi), 1.0)  # float32 rounding of the step
        if q_lo >= lo - tol and q_hi <= hi + tol:
            drop[n.output[0]] = n.input[0]
    if not drop:
        return
    keep = [n for n in g.node if not (n.op_type in ("Clip", "Relu") and n.output and n.output[0] in drop)]
    for n in keep:
        n.input[:] = [drop.get(i, i) for i in n.input]
    del g.node[:]
    g.node.extend(keep)
    used = {i for n in g.node for i in n.input}
    listed = outputs  # an initializer that is also a graph input (or read by a subgraph) stays
    kept_inits = [t for t in g.initializer if t.name in used or t.name in listed]
    del g.initializer[:]
    g.initializer.extend(kept_inits)


def _share_qdq_constants(g: onnx.GraphProto) -> None:
    """One copy of each distinct constant a Q/DQ reads, and one DequantizeLinear per distinct constant input
    triple (the quantized HardSigmoid shifts and factors repeat dozens of times). ONNX Runtime gives each
    consumer its own DQ again at load (EnsureUniqueDQForNodeUnit), so its fusions are unchanged."""
    interface = _fixed_names(g)
    readers = _reader_ops(g)
    first: dict[tuple, str] = {}
    alias: dict[str, str] = {}
    keep = []
    for t in g.initializer:
        if t.name not in interface and readers.get(t.name) and readers[t.name] <= QDQ:
            key = (t.data_type, tuple(t.dims), onnx.numpy_helper.to_array(t).tobytes())
            if key in first:
                alias[t.name] = first[key]
                continue
            first[key] = t.name
        keep.append(t)
    if alias:
        del g.initializer[:]
        g.initializer.extend(keep)
        for n in g.node:
            n.input[:] = [alias.get(i, i) for i in n.input]
    consts = {t.name for t in g.initializer}
    seen: dict[tuple[str, ...], str] = {}
    out_alias: dict[str, str] = {}
    nodes = []
    for n in g.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in consts and n.output[0] not in interface \
                and not n.attribute:
            key = tuple(n.input)
            if key in seen:
                out_alias[n.output[0]] = seen[key]
                continue
            seen[key] = n.output[0]
        nodes.append(n)
    if out_alias:
        for n in nodes:
            n.input[:] = [out_alias.get(i, i) for i in n.input]
        del g.node[:]
        g.node.extend(nodes)


def emit(model: ir.Model, target: Any, ctx: PassContext, out_dir: Path) -> Artifacts:
    out_dir = Path(out_dir)
    path = out_dir / "model.onnx"
    keep_names = ctx.options.get("keep_names", False)
    if not isinstance(keep_names, bool):
        raise EdgecError(f"--set keep_names={keep_names}: expected true or false")
    external = any(isinstance(v.const_value, ir.ExternalTensor) for v in model.graph.initializers.values())
    if not external and model_io.in_memory_bytes(model) <= model_io.PROTO_LIMIT and not keep_names:
        proto = model_io.to_proto(model)
        # Intermediate shapes are dead weight in a deployed file: ONNX Runtime infers them at load.
        del proto.graph.value_info[:]
        compact(proto)
        model_io.write_proto(proto, path)
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
        bits = ctx.options.get("weight_bits") or ctx.scheme.get("weight_bits")
        if ctx.scheme.get("precision") == "int8" and str(bits) == "8" and not runtime.host_int8_dot():
            ctx.warn("8-bit weights for a VNNI/AMX/ARM deployment: this host has no VNNI, so ONNX Runtime's int8 "
                     "kernels here saturate them: the artifact's drift and latency measured on this host are worse than "
                     "the deployment's (the per-pass drift uses reference numerics)")
        outputs = runtime.run(sess, ctx.samples)
        if "reference_outputs" in ctx.cache:
            art.figures["drift"] = metrics.drift(ctx.cache["reference_outputs"], outputs).to_dict()
        runs = int(ctx.options.get("bench_runs", 30))
        if runs > 0:
            art.figures["latency"] = runtime.time_session(sess, ctx.samples[0], runs=runs)
            float_model = ctx.cache.get("fp32_model")  # the quantize pass's input, as it would ship
            if ctx.scheme.get("precision") == "int8" and float_model is not None:
                # Never slower: int8 is timed against the float model it came from, interleaved.
                from edgec.quant_report import compare_fp32

                cmp = compare_fp32(float_model, path, ctx.samples[0], runs=max(5, runs // 3))
                art.figures["int8_vs_fp32"] = cmp
                auto = str(ctx.options.get("fallback") or "") == "auto" and isinstance(float_model, bytes)
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


def bench(path: str | Path, feed: dict, *, runs: int = 50, threads: int = 2,
          optimization: str = "all") -> dict[str, float]:
    """Time one model file the way ``emit`` does (used by ``edgec bench``)."""
    sess = runtime.session(Path(path), threads=threads, optimization=optimization)
    return runtime.time_session(sess, feed, runs=runs)
