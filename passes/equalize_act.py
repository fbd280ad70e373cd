"""Even out the channel ranges of a tensor before int8 quantizes it with one scale.   exact

An int8 activation has one scale for all its channels, so a channel whose values are 20x smaller than
the largest one keeps only a few of the 256 levels. Where the tensor is written by a per-channel affine
(``Mul(x, a)``, optionally followed by ``Add(., b)``) and read only by convolutions, channel c can be
multiplied by s_c for free: a_c -> a_c s_c, b_c -> b_c s_c, and every conv weight reading channel c is
divided by s_c. In float nothing changes (a zero padding stays zero after scaling); in int8 the
convolution weights are quantized per output channel, and for the depthwise convolutions that read
these tensors in PP-LCNetV3 backbones (PP-OCRv4 det/rec) each output channel sees one input channel, so
the weight side loses nothing while the activation gains up to log2(cap) bits in its small channels.

s_c = min(cap, max_k m_k / m_c) with m_c the channel's largest |value| on the calibration data. The cap
keeps near-dead channels from being blown up to the full range (measured on PP-OCRv4 det at 480x480:
cap 20 gave +2.0 dB output SQNR after cpu-int8, cap 100 +1.2 dB, cap 1000 -2.3 dB).
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx_ir as ir

from edgec import calib, model_io, runtime
from edgec.graph import attr, const_array, consumers, nodes_of, only_consumer, set_input_const
from edgec.graph import infer_shapes as _infer_shapes
from edgec.pass_infra import Feed, Pass, PassContext, register
from edgec.passes.fuse_bias import channel_vector


@register("equalize-act", exact=True)
class EqualizeActivations(Pass):
    """Scale the channels of a per-channel affine's output to even ranges; the reading convs absorb it."""

    cap: float = 20.0
    #: calibration feeds used for the channel ranges
    samples: int = 16

    def apply(self, model: ir.Model, ctx: PassContext) -> bool:
        _infer_shapes(model)  # the channel count of each candidate tensor
        sites = _sites(model)
        if sites and model_io.in_memory_bytes(model) > model_io.PROTO_LIMIT:
            ctx.warn("equalize-act: model over 2 GiB in memory; channel ranges not measured, pass skipped")
            sites = []
        if not sites:
            ctx.details["equalized"] = []
            return False
        feeds = list(itertools.islice(ctx.calibration_feeds(), self.samples))
        ranges = _channel_absmax(model, [s.tensor for s in sites], feeds)
        rows = []
        for site in sites:
            m = ranges[site.tensor.name or ""]
            if m.size != site.channels or not np.isfinite(m).all() or m.max() <= 0:
                continue
            s = np.minimum(self.cap, m.max() / np.maximum(m, m.max() / self.cap))
            if float(s.max()) <= 1.0 + 1e-6:
                continue
            site.rescale(s)
            rows.append({"tensor": site.tensor.name, "channels": site.channels,
                         "spread_before": round(float(m.max() / max(m.min(), 1e-30)), 1),
                         "spread_after": round(float((m * s).max() / max((m * s).min(), 1e-30)), 1),
                         "readers": [n.name for n in site.convs]})
        ctx.details["equalized"] = rows
        return bool(rows)


class _Site:
    """A per-channel affine (Mul [, Add]) whose output only convolutions read."""

    def __init__(self, mul: ir.Node, add: ir.Node | None, convs: list[ir.Node], channels: int, rank: int):
        self.mul, self.add, self.convs, self.channels, self.rank = mul, add, convs, channels, rank
        self.tensor: ir.Value = (add or mul).outputs[0]

    def rescale(self, s: np.ndarray) -> None:
        shape = (1, self.channels) + (1,) * (self.rank - 2)
        for node in (self.mul, self.add):
            if node is None:
                continue
            k = _const_slot(node)
            c = const_array(node.inputs[k])
            assert c is not None
            vec = channel_vector(c, self.channels, self.rank - 1, self.rank)
            assert vec is not None
            set_input_const(node, k, (vec * s).reshape(shape).astype(c.dtype), name=f"{node.name or node.op_type}_eq")
        for conv in self.convs:
            w = const_array(conv.inputs[1])
            assert w is not None
            g = int(attr(conv, "group", 1))
            per = w.shape[1]
            groups = np.arange(w.shape[0]) // (w.shape[0] // g)
            div = s[groups[:, None] * per + np.arange(per)[None, :]].reshape((w.shape[0], per) + (1,) * (w.ndim - 2))
            set_input_const(conv, 1, (w.astype(np.float64) / div).astype(w.dtype), name=f"{conv.name or 'conv'}_w_eq")


def _const_slot(node: ir.Node) -> int:
    return 1 if const_array(node.inputs[1]) is not None else 0


def _affine_operand(node: ir.Node, channels: int, rank: int) -> bool:
    """``node`` is Mul/Add of a non-constant tensor and a float constant broadcasting along axis 1 only."""
    if node.domain not in ("", "ai.onnx") or len(node.inputs) != 2:
        return False
    k = _const_slot(node)
    c, x = const_array(node.inputs[k]), node.inputs[1 - k]
    if c is None or x is None or const_array(x) is not None or c.dtype.kind != "f":
        return False
    return channel_vector(c, channels, rank - 1, rank) is not None


def _sites(model: ir.Model) -> list[_Site]:
    out = []
    for mul in nodes_of(model.graph, "Mul"):
        t = mul.outputs[0]
        if t.shape is None or len(t.shape) < 3 or not isinstance(t.shape[1], int):
            continue
        channels, rank = int(t.shape[1]), len(t.shape)
        if not _affine_operand(mul, channels, rank):
            continue
        add = only_consumer(t) if not t.is_graph_output() else None
        if add is not None and (add.op_type != "Add" or not _affine_operand(add, channels, rank)):
            add = None
        tensor = (add or mul).outputs[0]
        readers = consumers(tensor)
        if tensor.is_graph_output() or not readers:
            continue
        ok = all(r.op_type == "Conv" and r.domain in ("", "ai.onnx") and r.inputs[0] is tensor
                 and tensor not in list(r.inputs)[1:] and const_array(r.inputs[1]) is not None
                 and const_array(r.inputs[1]).dtype.kind == "f" for r in readers)  # type: ignore[union-attr]
        if ok:
            out.append(_Site(mul, add, readers, channels, rank))
    return out


def _channel_absmax(model: ir.Model, tensors: list[ir.Value], feeds: list[Feed]) -> dict[str, np.ndarray]:
    """Largest |value| per channel (axis 1) of each tensor over the feeds, from one ORT session."""
    names = [t.name or "" for t in tensors]
    sess = runtime.session(calib.with_outputs(model, names), optimization="basic",
                           external_dir=model_io.external_dir(model), lean=True)
    acc = {n: np.zeros(0) for n in names}
    for feed in feeds:
        for n, v in zip(names, sess.run(names, runtime.input_feed(sess, feed))):
            m = np.abs(v).max(axis=tuple(i for i in range(v.ndim) if i != 1)).astype(np.float64)
            acc[n] = m if acc[n].size == 0 else np.maximum(acc[n], m)
    return acc
