"""Layout arithmetic for the NCHW -> NHWC conversion, and TFLite's SAME/VALID padding rules.

Every ONNX value becomes one TFLite tensor holding ``np.transpose(onnx_value, perm)``; ``perm`` is
the value's *layout*. Convolutions, pools and resizes want rank-4 values as NHWC (perm 0,2,3,1);
elementwise ops follow whatever layout their inputs already have; an op that needs another layout
asks for it and gets one TRANSPOSE (made once per value and layout). A Transpose node therefore never
emits an op of its own: it only relabels the layout of the same tensor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

Perm = tuple[int, ...]

NHWC: Perm = (0, 2, 3, 1)


def identity(rank: int) -> Perm:
    return tuple(range(rank))


def preferred(rank: int) -> Perm:
    """The layout an op that does not care chooses for a fresh rank-``rank`` value."""
    return NHWC if rank == 4 else identity(rank)


def inverse(perm: Sequence[int]) -> Perm:
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return tuple(inv)


def between(src: Perm, dst: Perm) -> Perm:
    """The TRANSPOSE permutation taking a tensor in layout ``src`` to layout ``dst``.

    tflite_src = onnx.transpose(src) so onnx = tflite_src.transpose(inverse(src)), and
    tflite_dst = onnx.transpose(dst) = tflite_src.transpose(inverse(src)[dst[i]] for i).
    """
    inv = inverse(src)
    return tuple(inv[d] for d in dst)


def axis_in(perm: Perm, onnx_axis: int) -> int:
    """Where ONNX axis ``onnx_axis`` sits in a tensor of layout ``perm``."""
    return perm.index(onnx_axis % len(perm))


def shape_in(perm: Perm, shape: Sequence[int]) -> tuple[int, ...]:
    return tuple(int(shape[p]) for p in perm)


def after_reduce(perm: Perm, axes: Sequence[int]) -> Perm:
    """Layout of the result of reducing ``axes`` without keepdims: the kept axes in their TFLite order,
    renumbered as ONNX numbers the output."""
    kept = [p for p in perm if p not in axes]
    order = sorted(kept)
    return tuple(order.index(p) for p in kept)


def reshape_keeps_order(perm: Perm, shape: Sequence[int]) -> bool:
    """Whether a tensor in layout ``perm`` may be reshaped directly as if it were in ONNX layout.

    True when the axes of size > 1 appear in the same order in both layouts (size-1 axes carry no
    data), e.g. NHWC [N,1,1,C] flattens to the same [N,C] as NCHW [N,C,1,1].
    """
    big = [p for p in perm if shape[p] != 1]
    return big == sorted(big)


def flatten_order(perm: Perm, shape: Sequence[int]) -> np.ndarray:
    """For a tensor in layout ``perm`` flattened in TFLite order: the ONNX flat index at each position.

    Used to permute the weight columns of a FULLY_CONNECTED that reads a flattened NHWC feature map,
    so no TRANSPOSE back to NCHW is needed before the Flatten.
    """
    idx = np.arange(int(np.prod(shape))).reshape(tuple(shape))
    return np.transpose(idx, perm).reshape(-1)



def reshape_layout(perm: Perm, in_shape: Sequence[int], out_shape: Sequence[int]) -> Perm | None:
    """A layout for the output of an ONNX Reshape such that reshaping the *stored* input (layout
    ``perm``) gives the output in that layout, so no TRANSPOSE is needed; None when there is none.

    The axes of size > 1 on both sides are cut into groups of equal product (a merge, a split or a
    kept axis each). When every group's input axes lie together and in ONNX order in the stored
    tensor, the stored bytes are the output's groups in that stored order, e.g. NHWC [N,C,H,W] ->
    [N,C,H*W] is stored as [N,H*W,C] (layout 0,2,1). Size-1 axes hold no data and keep their places.
    """
    ins = [i for i, d in enumerate(in_shape) if d != 1]
    outs = [i for i, d in enumerate(out_shape) if d != 1]
    group_of: dict[int, int] = {}
    out_groups: list[list[int]] = []
    i = j = 0
    while i < len(ins) or j < len(outs):
        if i >= len(ins) or j >= len(outs):
            return None
        gi, gj = [ins[i]], [outs[j]]
        pi, pj = in_shape[ins[i]], out_shape[outs[j]]
        i, j = i + 1, j + 1
        while pi != pj:
            if pi < pj and i < len(ins):
                gi.append(ins[i])
                pi, i = pi * in_shape[ins[i]], i + 1
            elif pj < pi and j < len(outs):
                gj.append(outs[j])
                pj, j = pj * out_shape[outs[j]], j + 1
            else:
                return None
        for a in gi:
            group_of[a] = len(out_groups)
        out_groups.append(gj)
    stored = [p for p in perm if in_shape[p] != 1]
    order: list[int] = []
    k = 0
    while k < len(stored):
        g = group_of[stored[k]]
        run = [a for a in stored[k:] if group_of[a] == g]
        if stored[k:k + len(run)] != sorted(run) or g in order:
            return None
        order.append(g)
        k += len(run)
    derived = [a for g in order for a in out_groups[g]]
    result = list(range(len(out_shape)))
    for pos, ax in zip(outs, derived):
        result[pos] = ax
    return tuple(result)

# -- padding ------------------------------------------------------------------------------------------
def same_pads(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int, int]:
    """TFLite SAME: output ceil(size/stride), total padding split with the extra element at the end."""
    out = math.ceil(size / stride)
    eff = (kernel - 1) * dilation + 1
    total = max((out - 1) * stride + eff - size, 0)
    return total // 2, total - total // 2, out


def conv_out(size: int, kernel: int, stride: int, dilation: int, begin: int, end: int) -> int:
    return (size + begin + end - ((kernel - 1) * dilation + 1)) // stride + 1


def onnx_pads(auto_pad: str, sizes: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
              dilations: Sequence[int], pads: Sequence[int] | None) -> list[tuple[int, int]]:
    """ONNX Conv/Pool padding as (begin, end) per spatial axis, with auto_pad resolved."""
    n = len(sizes)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        result = []
        for s, k, st, d in zip(sizes, kernel, strides, dilations):
            lo, hi, _ = same_pads(s, k, st, d)
            result.append((lo, hi) if auto_pad == "SAME_UPPER" else (hi, lo))
        return result
    if auto_pad == "VALID" or not pads:
        return [(0, 0)] * n
    return [(int(pads[i]), int(pads[i + n])) for i in range(n)]


def tflite_padding(sizes: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
                   dilations: Sequence[int], pads: Sequence[tuple[int, int]]) -> str | None:
    """'VALID' or 'SAME' when TFLite's rule reproduces ``pads`` exactly (output size included), else None.

    A pad that only differs at the end where the window never reaches is still the same computation:
    compare output sizes and the begin pads, and require the end pad to cover what SAME reads.
    """
    if all(p == (0, 0) for p in pads):
        return "VALID"
    for s, k, st, d, (lo, hi) in zip(sizes, kernel, strides, dilations, pads):
        s_lo, _s_hi, s_out = same_pads(s, k, st, d)
        if lo != s_lo or conv_out(s, k, st, d, lo, hi) != s_out:
            return None
    return "SAME"
