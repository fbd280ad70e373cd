"""Reconstruction without retraining: refit each pruned consumer by least squares.

After its input channels are removed, a consumer Conv/Gemm's kept weights are refitted so that, on
calibration data, its outputs match the unpruned model's (He, Zhang, Sun, "Channel Pruning for
Accelerating Very Deep Neural Networks", ICCV 2017, step 2; Luo et al., ThiNet, ICCV 2017). Inputs are
the unpruned model's activations (ONNX Runtime with extra outputs), restricted to the kept channels;
targets are the consumer's original outputs at the same positions, computed from its original weights.

For a Conv the regression rows are im2col patches at randomly sampled output positions (bounded
memory: only the normal equations G = X'X and H = X'Y are kept, streamed over the feeds). The bias is
a constant column, so it is re-estimated too. Ridge towards the plain pruned weights,
theta = (G + lam I)^-1 (H + lam theta0), keeps the fit sane when samples are few (a Gemm sees one
row per image).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import onnx
import onnx_ir as ir

from edgec import calib, runtime
from edgec.graph import attr, const_array, set_input_const

RIDGE = 1e-3  # lam = RIDGE * mean diagonal of G
POSITIONS_PER_FEED = 256


@dataclasses.dataclass
class Fit:
    node: ir.Node
    input_name: str
    weight: np.ndarray  # original, [Cout, Cin, k...] for Conv, [K, N] for Gemm/MatMul
    bias: np.ndarray  # original, [Cout]
    keep_in: np.ndarray  # kept input elements (flattened blocks expanded)
    keep_out: np.ndarray  # kept output channels
    g: np.ndarray | None = None
    h: np.ndarray | None = None
    rows: int = 0
    yy: float = 0.0  # sum of squared targets, for the relative residual


def plan_fits(graph: ir.Graph, sel, analysis) -> list[Fit]:
    """A Fit for every Conv (group 1) / Gemm / MatMul whose input channels are being pruned."""
    blocks = {name: b for g in analysis.groups for name, b in g.blocks.items()}
    fits = []
    for node in graph:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or (node.op_type == "Conv" and int(attr(node, "group", 1)) > 1):
            continue
        x, out = node.inputs[0], node.outputs[0]
        ki = sel.kept(x)
        if ki is None:
            continue
        w = np.asarray(const_array(node.inputs[1]), dtype=np.float64)
        if node.op_type == "Conv" and w.ndim != 4:
            continue  # 1-D/3-D convolutions are pruned but not refitted
        b_arr = const_array(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
        if node.op_type == "Conv":
            cout = w.shape[0]
            bias = np.zeros(cout) if b_arr is None else np.asarray(b_arr, np.float64).reshape(-1)
        else:
            if node.op_type == "Gemm":
                if int(attr(node, "transB", 0)):
                    w = w.T
                w = w * float(attr(node, "alpha", 1.0))
            cout = w.shape[1]
            beta = float(attr(node, "beta", 1.0)) if node.op_type == "Gemm" else 0.0
            bias = np.zeros(cout) if b_arr is None else np.broadcast_to(
                np.asarray(b_arr, np.float64).reshape(-1) * beta, (cout,)).copy()
        block = blocks.get(x.name, 1)  # type: ignore[union-attr]
        keep_in = (ki[:, None] * block + np.arange(block)).reshape(-1) if block > 1 else ki
        ko = sel.kept(out)
        fits.append(Fit(node, x.name, w, bias, keep_in, np.arange(cout) if ko is None else ko))  # type: ignore[union-attr, arg-type]
    return fits


def _with_outputs(proto_bytes: bytes, names: list[str]):
    return runtime.session(calib.with_outputs(onnx.ModelProto.FromString(proto_bytes), names), optimization="basic")


def collect(unpruned: bytes, fits: list[Fit], feeds: Sequence[dict[str, np.ndarray]], limit: int,
            pruned: bytes | None = None, seed: int = 0, positions: int = POSITIONS_PER_FEED) -> int:
    """Stream ``limit`` feeds, accumulating every Fit's normal equations.

    Targets always come from the unpruned model. Regression inputs come from the pruned model when
    ``pruned`` is given (so the refit also absorbs the error of the layers upstream, as in He et al.),
    else from the unpruned model's kept channels.
    """
    names = list(dict.fromkeys(f.input_name for f in fits))
    sess_ref = _with_outputs(unpruned, names)
    sess_in = _with_outputs(pruned, names) if pruned is not None else None
    used = 0
    for feed in feeds:
        if used >= limit:
            break
        ref = dict(zip(names, sess_ref.run(names, runtime.input_feed(sess_ref, feed))))
        cur = dict(zip(names, sess_in.run(names, runtime.input_feed(sess_in, feed)))) if sess_in else None
        for f in fits:
            rng = np.random.default_rng(seed + used)  # same positions in both models
            x_ref = np.asarray(ref[f.input_name], dtype=np.float64)
            x_in = np.asarray(cur[f.input_name], dtype=np.float64) if cur is not None else None
            if f.node.op_type == "Conv":
                xk, y = _rows_conv(f, x_ref, rng, x_in, positions)
            else:
                xk, y = _rows_dense(f, x_ref, x_in)
            # Products in float32 (a few hundred rows each: ample precision), sums in float64.
            xk = np.concatenate([xk, np.ones((xk.shape[0], 1))], axis=1).astype(np.float32)
            g, h = (xk.T @ xk).astype(np.float64), (xk.T @ y.astype(np.float32)).astype(np.float64)
            f.g = g if f.g is None else f.g + g
            f.h = h if f.h is None else f.h + h
            f.rows += xk.shape[0]
            f.yy += float(np.sum(y * y))
        used += 1
    return used


def _rows_dense(f: Fit, x: np.ndarray, x_in: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    x = x.reshape(x.shape[0], -1)
    y = x @ f.weight[:, f.keep_out] + f.bias[f.keep_out]
    return (x[:, f.keep_in] if x_in is None else x_in.reshape(x_in.shape[0], -1)), y


def _rows_conv(f: Fit, x: np.ndarray, rng: np.random.Generator,
               x_in: np.ndarray | None, positions: int) -> tuple[np.ndarray, np.ndarray]:
    node, w = f.node, f.weight
    ks = w.shape[2:]
    if len(ks) != 2:
        raise NotImplementedError("reconstruction handles 2-D convolutions")
    n, _, hh, ww = x.shape
    strides = list(attr(node, "strides", [1, 1]))
    dil = list(attr(node, "dilations", [1, 1]))
    pads = _pads(node, (hh, ww), ks, strides, dil)
    ho = (hh + pads[0] + pads[2] - dil[0] * (ks[0] - 1) - 1) // strides[0] + 1
    wo = (ww + pads[1] + pads[3] - dil[1] * (ks[1] - 1) - 1) // strides[1] + 1
    pad = ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3]))
    xp = np.pad(x, pad)
    total = n * ho * wo
    pick = rng.choice(total, size=min(total, positions), replace=False)
    bi, rem = np.divmod(pick, ho * wo)
    oy, ox = np.divmod(rem, wo)
    rows = oy[:, None] * strides[0] + np.arange(ks[0])[None, :] * dil[0]  # [P, kh]
    cols = ox[:, None] * strides[1] + np.arange(ks[1])[None, :] * dil[1]  # [P, kw]

    def patches(t: np.ndarray) -> np.ndarray:  # [P, C, kh, kw]
        return t[bi[:, None, None, None], np.arange(t.shape[1])[None, :, None, None], rows[:, None, :, None],
                 cols[:, None, None, :]]

    patch = patches(xp)
    y = patch.reshape(len(pick), -1) @ w[f.keep_out].reshape(len(f.keep_out), -1).T + f.bias[f.keep_out]
    xk = patch[:, f.keep_in] if x_in is None else patches(np.pad(x_in, pad))
    return xk.reshape(len(pick), -1), y


def _pads(node: ir.Node, size: tuple[int, int], ks: tuple[int, ...], strides: list[int], dil: list[int]) -> list[int]:
    auto = attr(node, "auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = [0, 0, 0, 0]
        for i in range(2):
            out = -(-size[i] // strides[i])
            total = max((out - 1) * strides[i] + (ks[i] - 1) * dil[i] + 1 - size[i], 0)
            small, big = total // 2, total - total // 2
            pads[i], pads[i + 2] = (small, big) if auto == "SAME_UPPER" else (big, small)
        return pads
    if auto == "VALID":
        return [0, 0, 0, 0]
    return list(attr(node, "pads", [0, 0, 0, 0]))


def refit(fits: list[Fit], ridge: float = RIDGE) -> list[dict]:
    """Solve every Fit and write the refitted weights and bias into its (already shrunk) node."""
    rows = []
    for f in fits:
        if f.g is None or f.h is None:
            continue
        node = f.node
        if node.op_type == "Conv":
            w0 = f.weight[f.keep_out][:, f.keep_in]
            theta0 = np.concatenate([w0.reshape(len(f.keep_out), -1).T, f.bias[f.keep_out][None, :]], axis=0)
        else:
            theta0 = np.concatenate([f.weight[f.keep_in][:, f.keep_out], f.bias[f.keep_out][None, :]], axis=0)
        d = f.g.shape[0]
        lam = ridge * float(np.trace(f.g)) / d + 1e-12
        theta = np.linalg.solve(f.g + lam * np.eye(d), f.h + lam * theta0)
        err0, err1 = _residual(f, theta0), _residual(f, theta)
        dtype = np.float32
        if node.op_type == "Conv":
            w_new = theta[:-1].T.reshape((len(f.keep_out), len(f.keep_in), *f.weight.shape[2:]))
            set_input_const(node, 1, w_new.astype(dtype))
            set_input_const(node, 2, theta[-1].astype(dtype), name=f"{node.name or 'conv'}_bias")
        else:
            if node.op_type == "MatMul":  # a bias needs a Gemm (the input is rank 2, checked by the groups)
                node.op_type, node.version = "Gemm", None
            trans = int(attr(node, "transB", 0))
            wk = theta[:-1]
            set_input_const(node, 1, np.ascontiguousarray(wk.T if trans else wk).astype(dtype))
            set_input_const(node, 2, theta[-1].astype(dtype), name=f"{node.name or 'gemm'}_bias")
            node.attributes["alpha"] = ir.AttrFloat32("alpha", 1.0)
            node.attributes["beta"] = ir.AttrFloat32("beta", 1.0)
        rows.append({"node": node.name, "rows": f.rows, "features": d - 1,
                     "rel_error_plain": err0, "rel_error_refit": err1})
        f.g = f.h = None
    return rows


def _residual(f: Fit, theta: np.ndarray) -> float:
    """Relative squared error of the fit on the calibration rows, from the normal equations alone."""
    assert f.g is not None and f.h is not None
    # ||Y - X t||^2 = Y'Y - 2 tr(t'H) + tr(t'G t)
    yy = f.yy
    err = yy - 2 * float(np.sum(theta * f.h)) + float(np.sum(theta * (f.g @ theta)))
    return max(err, 0.0) / yy if yy > 0 else 0.0

