"""AdaRound: learn whether each int8 weight rounds up or down, layer by layer, on calibration data.   lossy

Rounding every weight to its nearest grid point minimises the weight error, not the layer's OUTPUT
error: Nagel et al., "Up or Down? Adaptive Rounding for Post-Training Quantization" (ICML 2020) show
that choosing floor or ceil per weight to minimise ||W~ x~ - W x||^2 over a few hundred calibration
samples recovers most of the int8 (and nearly all of the 4-bit) loss. Per layer, with the weight scale s
fixed (the quantize pass's per-channel absmax scale):

    W~ = s * clip(floor(W / s) + h(V), -qmax, qmax),   h(V) = clip(sigmoid(V) * 1.2 - 0.1, 0, 1)
    min_V  sum (W~ x~ - y)^2 / rows  +  lam * sum(1 - |2 h(V) - 1|^beta),   beta annealed 20 -> 2

then h is rounded to 0/1. V starts where h(V) equals W/s - floor(W/s) (nearest rounding's soft form).
The layers are done in graph order and each one reads its input x~ from the PARTLY quantized model
(every earlier layer already with its learned rounding and quantized activations), so later layers
learn to undo the error of earlier ones; the target y is the float model's output of the same layer
on the same image ("asymmetric reconstruction", section 5 of the paper). The rows of each problem are
a fixed random subset of output positions (conv: pixels of every image, as im2col patches), so the
optimisation is small dense matrix algebra, run here in numpy (float64, Adam; Kingma & Ba 2015): no
torch needed and the same bytes on every machine. After the rounding, the layer's bias absorbs the mean
residual on those rows (empirical bias correction, Nagel et al. 2019).

The pass runs on a QDQ graph (after ``quantize``), reading the float model the quantize pass leaves in
``ctx.float_reference``; ``quantize`` runs it itself with ``--set adaround=true``.
It changes only int8 weight values (and biases): the graph structure and every scale stay as they were.
Cost: one ONNX Runtime pass over the calibration samples per layer plus ``iters`` small solves.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from edgec import calib, model_io, runtime
from edgec.errors import EdgecError
from edgec.graph import NameSource, attr, const_array, set_input_const
from edgec.pass_infra import Feed, Pass, PassContext, register

ZETA, GAMMA = 1.1, -0.1  # the rectified sigmoid's stretch (Louizos et al. 2018, as in the paper)


@register("adaround", exact=False)
class AdaRound(Pass):
    """Learn each int8 weight's rounding (up or down) to minimise its layer's output error (Nagel et al. 2020)."""

    add_after = "quantize"  # where --add inserts it in a target's pipeline
    samples: int = 16  # calibration feeds (each layer: one ORT pass over them)
    rows: int = 1024  # output positions per layer (the rows of its least-squares problem)
    min_rows: int = 256  # fewer (an SE block's 1x1 conv sees one row per image): rounding would overfit
    iters: int = 300
    lam: float = 0.01  # weight of the rounding regulariser
    lr: float = 0.05
    bias: bool = True  # refit the bias to the mean residual after rounding

    def apply(self, model: ir.Model, ctx: PassContext) -> bool:
        ref = ctx.float_reference
        if ref is None:
            raise EdgecError("adaround needs the float model from before quantization",
                             hint="run it right after the quantize pass, or use --set adaround=true")
        float_model = ref if isinstance(ref, ir.Model) else model_io.from_bytes(ref)
        bits = int(ctx.quantized_weight_bits or ctx.scheme.get("weight_bits", 8))
        feeds = list(head(ctx.calibration_feeds(), self.samples))
        if not feeds:
            raise EdgecError("adaround: no calibration feeds", hint="give --calib")
        warn_if_few(ctx, len(feeds))
        rows = adaround(model, float_model, feeds, bits, self)
        ctx.details["layers"] = rows
        ctx.details["samples"] = len(feeds)
        return any(r.get("changed", 0) for r in rows)


def warn_if_few(ctx: PassContext, n: int) -> None:
    if n < 16:
        ctx.warn(f"adaround: only {n} calibration samples; the learned rounding may overfit them "
                 "(ppocr-cls with 4: 16.5 dB on held-aside lines against 22.8 with nearest rounding)")


@dataclasses.dataclass
class _Layer:
    node: ir.Node
    dq: ir.Node  # the weight's DequantizeLinear
    q: np.ndarray  # int8 weights as stored
    scale: np.ndarray  # broadcastable to q
    w: np.ndarray  # float weights (float64), same shape as q
    groups: int
    transposed: bool = False  # Gemm without transB: q, scale and w are held as [out, in]


def adaround(model: ir.Model, float_model: ir.Model, feeds: Sequence[Feed], bits: int,
             cfg: AdaRound) -> list[dict[str, Any]]:
    """Learn the rounding of every eligible layer of ``model`` in place; one row per layer."""
    qmax = 2 ** (bits - 1) - 1
    layers, rows = _layers(model, float_model)
    if not layers:
        return rows
    targets, picks = _float_targets(float_model, layers, feeds, cfg.rows)
    names = NameSource(model.graph)
    for k, layer in enumerate(layers):
        t0 = time.perf_counter()
        y = targets[k]  # [groups, rows, out/groups]
        if y.shape[1] < cfg.min_rows:
            rows.append({"node": layer.node.name, "changed": 0, "rows": int(y.shape[1]),
                         "skipped": f"{y.shape[1]} output rows < {cfg.min_rows}: nearest rounding kept"})
            continue
        x_name = layer.node.inputs[0].name or ""
        xs = _run(model, [x_name], feeds)[0]
        patches = np.concatenate([_patches(layer.node, x, p) for x, p in zip(xs, picks[k])], axis=1)
        bias = _bias(layer.node)
        if bias is not None:
            y = y - bias.reshape(layer.groups, 1, -1)
        new_q, before, after = _learn(layer, patches, y, qmax, cfg)
        row: dict[str, Any] = {"node": layer.node.name, "rows": int(y.shape[1]),
                               "changed": int(np.count_nonzero(new_q != layer.q)),
                               "mse_nearest": float(f"{before:.4g}"), "mse_adaround": float(f"{after:.4g}"),
                               "seconds": round(time.perf_counter() - t0, 3)}
        if after < before:
            stored = new_q.T if layer.transposed else new_q
            set_input_const(layer.dq, 0, stored.astype(np.int8))
            if cfg.bias:
                w_new = new_q.astype(np.float64) * layer.scale
                resid = y - _forward(patches, _grouped(w_new, layer.groups))
                from edgec.passes.bias_correct import subtract_from_bias

                row["bias"] = subtract_from_bias(model.graph, layer.node, -resid.mean(axis=1).reshape(-1), names)
        else:
            row["changed"] = 0
            row["kept"] = "nearest rounding (the learned one reconstructs these rows worse)"
        rows.append(row)
    return rows


def _layers(model: ir.Model, float_model: ir.Model) -> tuple[list[_Layer], list[dict[str, Any]]]:
    """Conv (2-D) and Gemm layers whose weight is a single-use DequantizeLinear of int8 constants."""
    float_w = {n.name: const_array(n.inputs[1]) for n in float_model.graph
               if n.op_type in ("Conv", "Gemm") and n.name and len(n.inputs) > 1}
    out: list[_Layer] = []
    skipped: list[dict[str, Any]] = []
    for node in model.graph:
        if node.op_type not in ("Conv", "Gemm") or len(node.inputs) < 2 or node.inputs[1] is None:
            continue
        dq = node.inputs[1].producer()
        if dq is None or dq.op_type != "DequantizeLinear" or len(node.inputs[1].uses()) != 1:
            continue
        q, s = const_array(dq.inputs[0]), const_array(dq.inputs[1])
        w = float_w.get(node.name or "")
        why = None
        if q is None or s is None or q.dtype != np.int8 or w is None or w.shape != q.shape:
            why = "weight is not an int8 constant with a float counterpart of the same shape"
        elif node.op_type == "Conv" and q.ndim != 4:
            why = "only 2-D convolutions"
        elif node.op_type == "Gemm" and (attr(node, "transA", 0) or float(attr(node, "alpha", 1.0)) != 1.0):
            why = "Gemm with transA or alpha"
        if why:
            skipped.append({"node": node.name, "changed": 0, "skipped": why})
            continue
        assert q is not None and s is not None and w is not None
        axis = int(attr(dq, "axis", 1)) % q.ndim
        shape = [1] * q.ndim
        if s.size > 1:
            shape[axis] = -1
        scale = s.astype(np.float64).reshape(shape)
        w64 = w.astype(np.float64)
        if node.op_type == "Gemm" and not attr(node, "transB", 0):
            # [in, out] -> [out, in], the orientation the solver uses; written back transposed.
            q, scale, w64 = q.T, (scale.T if s.size > 1 else scale), w64.T
        groups = int(attr(node, "group", 1)) if node.op_type == "Conv" else 1
        out.append(_Layer(node, dq, q, scale, w64, groups, node.op_type == "Gemm" and not attr(node, "transB", 0)))
    return out, skipped


def _grouped(w: np.ndarray, groups: int) -> np.ndarray:
    """[out, in/g, kh, kw] (or [out, in]) -> [g, out/g, in/g*kh*kw]."""
    return w.reshape(groups, w.shape[0] // groups, -1)


def _forward(patches: np.ndarray, wg: np.ndarray) -> np.ndarray:
    """[g, rows, k] x [g, out/g, k] -> [g, rows, out/g]."""
    return np.matmul(patches, wg.transpose(0, 2, 1))


def _learn(layer: _Layer, patches: np.ndarray, y: np.ndarray, qmax: int, cfg: AdaRound
           ) -> tuple[np.ndarray, float, float]:
    """The AdaRound solve for one layer: returns the new integers and the reconstruction MSE of
    nearest rounding and of the learned rounding, on the layer's rows."""
    g = layer.groups
    ws = layer.w / layer.scale
    base = np.floor(ws)
    frac = ws - base
    nearest = np.clip(np.round(ws), -qmax, qmax)
    n_rows = y.shape[1]

    def mse(q: np.ndarray) -> float:
        return float(np.mean((_forward(patches, _grouped(q * layer.scale, g)) - y) ** 2))

    p = np.clip((frac - GAMMA) / (ZETA - GAMMA), 1e-4, 1 - 1e-4)
    v = np.log(p / (1 - p))
    m1, m2 = np.zeros_like(v), np.zeros_like(v)
    warm = int(0.2 * cfg.iters)
    for it in range(cfg.iters):
        sig = 1.0 / (1.0 + np.exp(-v))
        h_raw = sig * (ZETA - GAMMA) + GAMMA
        h = np.clip(h_raw, 0.0, 1.0)
        qf = base + h
        inside = (qf >= -qmax) & (qf <= qmax)
        wq = np.clip(qf, -qmax, qmax) * layer.scale
        resid = _forward(patches, _grouped(wq, g)) - y  # [g, rows, o]
        # d(sum resid^2 / rows) / dW~ per group: 2 * resid^T patches / rows
        grad_w = (2.0 / n_rows) * np.matmul(resid.transpose(0, 2, 1), patches)  # [g, o, k]
        grad_h = grad_w.reshape(v.shape) * layer.scale * inside
        if it >= warm:
            # beta anneals from 20 to 2 after a warm-up without regularisation (the paper's schedule).
            beta = 2.0 + 18.0 * (1 - (it - warm) / max(1, cfg.iters - warm))
            t = 2 * h - 1
            grad_h = grad_h - cfg.lam * beta * np.abs(t) ** (beta - 1) * np.sign(t) * 2
        grad_v = grad_h * ((h_raw > 0) & (h_raw < 1)) * sig * (1 - sig) * (ZETA - GAMMA)
        m1 = 0.9 * m1 + 0.1 * grad_v
        m2 = 0.999 * m2 + 0.001 * grad_v * grad_v
        step = cfg.lr * (m1 / (1 - 0.9 ** (it + 1))) / (np.sqrt(m2 / (1 - 0.999 ** (it + 1))) + 1e-8)
        v = v - step
    learned = np.clip(base + (v >= 0), -qmax, qmax)
    before, after = mse(nearest), mse(learned)
    return (learned if after < before else nearest).astype(np.int8), before, after


def _bias(node: ir.Node) -> np.ndarray | None:
    """The layer's bias as the model computes it (a DequantizeLinear of int32 or a float constant)."""
    if len(node.inputs) < 3 or node.inputs[2] is None:
        return None
    v = node.inputs[2]
    prod = v.producer()
    if prod is not None and prod.op_type == "DequantizeLinear":
        from edgec.passes.bias_correct import dequantize

        b = dequantize(prod)
    else:
        b = const_array(v)
    if b is None:
        return None
    b = np.asarray(b, np.float64).reshape(-1)
    if node.op_type == "Gemm":
        b = b * float(attr(node, "beta", 1.0))
    return b


def _float_targets(float_model: ir.Model, layers: list[_Layer], feeds: Sequence[Feed], n_rows: int
                   ) -> tuple[list[np.ndarray], list[list[np.ndarray]]]:
    """Per layer: the float output at a fixed random subset of positions, [g, rows, out/g], and per
    feed the positions picked (flat indices into that feed's output rows)."""
    outs = [layer.node.outputs[0].name or "" for layer in layers]
    per_feed = max(1, n_rows // len(feeds))
    targets: list[list[np.ndarray]] = [[] for _ in layers]
    picks: list[list[np.ndarray]] = [[] for _ in layers]
    sess = runtime.session(calib.with_outputs(float_model, outs), optimization="basic")
    for j, feed in enumerate(feeds):
        got = sess.run(outs, runtime.input_feed(sess, feed))
        for k, (layer, y) in enumerate(zip(layers, got)):
            rows_y = _as_rows(layer.node, np.asarray(y, np.float64))  # [positions, out]
            rng = np.random.default_rng((k, j))
            pick = np.sort(rng.choice(rows_y.shape[0], size=min(per_feed, rows_y.shape[0]), replace=False))
            picks[k].append(pick)
            sel = rows_y[pick]
            targets[k].append(sel.reshape(sel.shape[0], layer.groups, -1).transpose(1, 0, 2))
        del got
    return [np.concatenate(t, axis=1) for t in targets], picks


def _as_rows(node: ir.Node, y: np.ndarray) -> np.ndarray:
    """A layer output as [positions, channels] (NCHW: every batch item and pixel is a row)."""
    if node.op_type == "Conv":
        return y.transpose(0, 2, 3, 1).reshape(-1, y.shape[1])
    return y.reshape(-1, y.shape[-1])


def _patches(node: ir.Node, x: np.ndarray, pick: np.ndarray) -> np.ndarray:
    """The layer inputs behind output rows ``pick``, as [g, rows, in/g*kh*kw] (im2col at those rows)."""
    x = np.asarray(x, np.float64)
    if node.op_type != "Conv":
        return x.reshape(-1, x.shape[-1])[pick][None]
    w_shape = node.inputs[1].shape
    assert w_shape is not None
    kh, kw = int(w_shape[2]), int(w_shape[3])
    _n, c, hgt, wid = x.shape
    sh, sw = (list(attr(node, "strides", [1, 1])) + [1, 1])[:2]
    dh, dw = (list(attr(node, "dilations", [1, 1])) + [1, 1])[:2]
    pads = list(attr(node, "pads", [0, 0, 0, 0]))
    auto_pad = attr(node, "auto_pad", "NOTSET")
    if isinstance(auto_pad, bytes):
        auto_pad = auto_pad.decode()
    oh, ow = _out_size(hgt, kh, sh, dh, pads, 0, auto_pad), _out_size(wid, kw, sw, dw, pads, 1, auto_pad)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pads = _same_pads((hgt, wid), (oh, ow), (kh, kw), (sh, sw), (dh, dw), auto_pad)
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    b, rem = np.divmod(pick, oh * ow)
    oy, ox = np.divmod(rem, ow)
    iy = (oy * sh)[:, None] + (np.arange(kh) * dh)[None, :]  # [rows, kh]
    ix = (ox * sw)[:, None] + (np.arange(kw) * dw)[None, :]  # [rows, kw]
    # [rows, c, kh, kw] by one fancy index: batch and positions per row, every channel and tap.
    pat = xp[b[:, None, None, None], np.arange(c)[None, :, None, None], iy[:, None, :, None], ix[:, None, None, :]]
    groups = int(attr(node, "group", 1))
    return pat.reshape(pat.shape[0], groups, -1).transpose(1, 0, 2)


def _out_size(size: int, k: int, s: int, d: int, pads: list[int], axis: int, auto_pad: str) -> int:
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        return -(-size // s)
    if auto_pad == "VALID":
        return (size - (k - 1) * d - 1) // s + 1
    return (size + pads[axis] + pads[axis + 2] - (k - 1) * d - 1) // s + 1


def _same_pads(size: tuple[int, int], out: tuple[int, int], k: tuple[int, int], s: tuple[int, int],
               d: tuple[int, int], mode: str) -> list[int]:
    total = [max(0, (o - 1) * st + (kk - 1) * dd + 1 - i) for i, o, kk, st, dd in zip(size, out, k, s, d)]
    first = [t // 2 if mode == "SAME_UPPER" else t - t // 2 for t in total]
    return [first[0], first[1], total[0] - first[0], total[1] - first[1]]


def _run(model: ir.Model, names: list[str], feeds: Sequence[Feed]) -> list[list[np.ndarray]]:
    """``names`` of ``model`` on every feed: per name, one array per feed."""
    sess = runtime.session(calib.with_outputs(model, names), optimization="basic")
    got: list[list[np.ndarray]] = [[] for _ in names]
    for feed in feeds:
        for i, arr in enumerate(sess.run(names, runtime.input_feed(sess, feed))):
            got[i].append(np.asarray(arr))
    return got


def head(feeds: Any, n: int) -> list[Feed]:
    out: list[Feed] = []
    for f in feeds:
        out.append(f)
        if len(out) >= n:
            break
    return out
