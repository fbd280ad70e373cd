"""Unstructured magnitude pruning: zero the smallest weights (Han et al., "Learning both Weights and
Connections for Efficient Neural Networks", NeurIPS 2015), without retraining.

Threshold per layer (each weighted op loses ``ratio`` of its weights) or global (one threshold on
|w| over all layers, so layers with many small weights lose more). Biases are never zeroed.
Zeros alone make nothing faster: ONNX Runtime's and TensorRT's dense kernels multiply zeros like any
other number. The model only gets smaller once compressed (zip, or a sparse storage format).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx_ir as ir

from edgec.graph import const_array, set_input_const

PRUNABLE = ("Conv", "ConvTranspose", "Gemm", "MatMul")
NO_SPEEDUP = ("unstructured pruning only zeroes weights: dense kernels in ONNX Runtime and TensorRT run "
              "exactly as fast on zeros; the model is smaller only when compressed")


def weighted_nodes(graph: ir.Graph, skip: Iterable[str] = ()) -> list[ir.Node]:
    """Weighted ops with a constant float weight, in graph order, minus those named in ``skip``.

    ``first`` / ``last`` in ``skip`` name the first and last weighted op (unless a node has that name).
    """
    nodes = [n for n in graph if n.op_type in PRUNABLE and n.domain in ("", "ai.onnx") and len(n.inputs) > 1
             and (w := const_array(n.inputs[1])) is not None and w.dtype.kind == "f" and w.ndim >= 2]
    skip = set(skip)
    names = {n.name for n in nodes}
    drop = {n for n in skip if n in names}
    if nodes and "first" in skip and "first" not in names:
        drop.add(nodes[0].name)
    if nodes and "last" in skip and "last" not in names:
        drop.add(nodes[-1].name)
    return [n for n in nodes if n.name not in drop]


def prune_unstructured(model: ir.Model, ratio: float, scope: str = "layer",
                       skip: Iterable[str] = ()) -> list[dict]:
    """Zero ``ratio`` of the weights by |w| (scope "layer" or "global"); returns per-layer sparsity."""
    nodes = weighted_nodes(model.graph, skip)
    weights = {id(n): const_array(n.inputs[1]) for n in nodes}
    threshold = None
    if scope == "global" and nodes:
        everything = np.concatenate([np.abs(w).ravel() for w in weights.values()])  # type: ignore[union-attr]
        k = int(ratio * everything.size)
        threshold = float(np.partition(everything, k - 1)[k - 1]) if k > 0 else -1.0
    rows = []
    for n in nodes:
        w = weights[id(n)]
        assert w is not None
        mag = np.abs(w)
        if threshold is None:
            k = int(ratio * w.size)
            # Zero exactly k weights (ties at the threshold would otherwise zero more or fewer).
            mask = np.ones(w.size, dtype=bool)
            if k > 0:
                mask[np.argpartition(mag.ravel(), k - 1)[:k]] = False
            mask = mask.reshape(w.shape)
        else:
            mask = mag > threshold
        new = np.where(mask, w, np.zeros_like(w))
        set_input_const(n, 1, new)
        rows.append({"node": n.name, "op": n.op_type, "weights": int(w.size),
                     "sparsity": float(1 - mask.mean()), "before": float((w == 0).mean())})
    return rows
