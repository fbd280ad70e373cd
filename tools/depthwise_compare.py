"""Measure the depthwise pass: exactness at full rank, and MACs / latency / drift at an SQNR floor.

    python tools/depthwise_compare.py [--models exact,detector,yolo,ppocr-det] [--size 320] [--width 32]
                                      [--floor 30] [--runs 50] [--json out.json]

Every model first goes through the cpu-fp32 cleanup (fold, fuse-bn, ...); the depthwise pass then runs on
16 calibration images and the two models are compared on 8 other images.
  exact      r = K*K (rank 49 also covers a 7x7 stem): ResNet-18 (tests/models.py, 224) and the detector.
  detector   a YOLO-style detector built here (``detector_neck_head``): Conv+SiLU backbone stub, FPN top-down
             (nearest Upsample + Concat, a dilated 3x3), PAN bottom-up (stride-2 conv), two 3x3-heavy heads.
             Untrained but He-initialised, so its features still carry the image; also run with the
             selection limited to neck and heads (``layers=/fpn*+/pan*+/head*``).
  yolo       tests/models.py yolo_style (zoo entry "yolo", 320). CAUTION: with PyTorch's default init and
             its randomised BN statistics its features become image-independent after a few layers, so
             every layer is reproduced almost exactly at r = 1: its numbers say nothing about real models.
  ppocr-det  PP-OCRv4 mobile text detector (trained; 640x640 photos with rendered text): its DB-FPN has
             five 96->24 3x3 convs. Also reports the IoU of the text masks (p > 0.3) before/after.
Latency: ONNX Runtime CPU, 2 threads, allow_spinning 0, the two models timed in alternating rounds
(median of the round medians) so that changes in machine load hit both alike.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def _zoo() -> Any:
    if "edgec_zoo" in sys.modules:
        return sys.modules["edgec_zoo"]
    spec = importlib.util.spec_from_file_location("edgec_zoo", REPO / "tools" / "zoo.py")
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["edgec_zoo"] = mod
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def detector_neck_head(width: int = 16, num_classes: int = 3, seed: int = 0) -> Any:
    """A small YOLO-style detector whose neck and heads hold most of the 3x3 MACs (see module doc)."""
    import torch
    from torch import nn

    def cbs(cin: int, cout: int, k: int = 3, s: int = 1, d: int = 1) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, k, s, padding=d * (k // 2), dilation=d), nn.SiLU())

    class Detector(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            w = width
            self.stem = nn.Sequential(cbs(3, w, s=2), cbs(w, 2 * w, s=2), cbs(2 * w, 4 * w, s=2))  # P3: /8
            self.down4 = cbs(4 * w, 8 * w, s=2)  # P4: /16
            self.lat3 = cbs(12 * w, 4 * w, k=1)
            self.fpn3 = cbs(4 * w, 4 * w, d=2)  # dilated 3x3 in the top-down path
            self.pan = cbs(4 * w, 4 * w, s=2)  # bottom-up stride-2 conv
            self.fpn4 = cbs(12 * w, 8 * w)
            no = 4 + 1 + num_classes
            self.head3 = nn.Sequential(cbs(4 * w, 4 * w), cbs(4 * w, 4 * w), nn.Conv2d(4 * w, no, 1))
            self.head4 = nn.Sequential(cbs(8 * w, 8 * w), cbs(8 * w, 8 * w), nn.Conv2d(8 * w, no, 1))
            self.up = nn.Upsample(scale_factor=2, mode="nearest")

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            p3 = self.stem(x)
            p4 = self.down4(p3)
            n3 = self.fpn3(self.lat3(torch.cat([self.up(p4), p3], 1)))
            n4 = self.fpn4(torch.cat([self.pan(n3), p4], 1))
            return self.head3(n3).flatten(2), self.head4(n4).flatten(2)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Detector()
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                # He-normal keeps the activation scale through SiLU; PyTorch's default init shrinks it
                # ~1.7x per layer, and an untrained net then ends up image-independent.
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.uniform_(m.bias, -0.1, 0.1)
    return model.eval()


def photo_feeds(n: int, size: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Real photos, resized, /255, NCHW (the detector's preprocessing)."""
    imgs = _zoo().images("photos", n=n, size=(size, size), seed=seed)
    return [{"input": np.ascontiguousarray(im.astype(np.float32).transpose(2, 0, 1)[None] / 255.0)} for im in imgs]


def text_feeds(n: int, size: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Real photos with rendered words, PP-OCR det preprocessing (BGR, mean/std 0.5) at size x size."""
    import dataclasses

    zoo = _zoo()
    entry = zoo.ENTRIES["ppocr-det"]
    pre = dataclasses.replace(entry.preprocess, resize="fixed", size=(size, size))
    return zoo.preprocess(zoo.images("text", n=n, size=(size, size), seed=seed), dataclasses.replace(entry, preprocess=pre))


FP32_PREFIX = "lift-constants,fold,dce,fuse-bias,fuse-bn,dce,shape-infer"  # the cpu-fp32 pipeline


def _timed_pair(a: bytes, b: bytes, feed: dict[str, np.ndarray], runs: int, rounds: int = 5) -> tuple[float, float]:
    """Median latency (ms) of two models, timed in alternating rounds so load changes hit both alike."""
    from edgec import runtime

    sa = runtime.session(a, threads=2, optimization="all", spinning=False)
    sb = runtime.session(b, threads=2, optimization="all", spinning=False)
    ta, tb = [], []
    for _ in range(rounds):
        ta.append(runtime.time_session(sa, feed, runs=max(1, runs // rounds), warmup=3)["median_ms"])
        tb.append(runtime.time_session(sb, feed, runs=max(1, runs // rounds), warmup=3)["median_ms"])
    return float(np.median(ta)), float(np.median(tb))


def compare(path: str | Path, calib: list[dict[str, np.ndarray]], evaluation: list[dict[str, np.ndarray]],
            spec: str, runs: int = 50, shapes: dict[str, tuple[int, ...]] | None = None,
            threshold: float | None = None) -> dict[str, Any]:
    """cpu-fp32 cleanup, then ``spec``; MACs, ORT latency and output drift of the two models side by side."""
    from edgec import metrics, model_io, runtime
    from edgec.api import load_model
    from edgec.manager import Manager
    from edgec.pass_infra import PassContext, parse_pipeline

    base = Manager(PassContext(samples=calib[:2])).run(load_model(str(path), shapes), parse_pipeline(FP32_PREFIX))
    mgr = Manager(PassContext(samples=calib[:2], calib=calib))
    out = mgr.run(model_io.clone(base), parse_pipeline(spec))
    rec = mgr.records[-1]
    ref = runtime.run(runtime.session(base), evaluation)
    got = runtime.run(runtime.session(out), evaluation)
    d = metrics.drift(ref, got)
    ms_base, ms_dw = _timed_pair(model_io.to_bytes(base), model_io.to_bytes(out), evaluation[0], runs)
    layers = rec.details.get("layers", [])
    replaced = [x for x in layers if x["decision"] == "replaced"]
    mask_iou = None
    if threshold is not None:
        # A detector's decision, not its raw map: IoU of the thresholded maps (PP-OCR det: p > 0.3 is text).
        name = next(iter(ref[0]))
        a = np.concatenate([r[name].ravel() for r in ref]) > threshold
        b = np.concatenate([g[name].ravel() for g in got]) > threshold
        mask_iou = float((a & b).sum() / max(1, (a | b).sum()))
    return {
        "mask_iou": mask_iou,
        "model": str(path), "spec": spec, "seconds": round(rec.seconds, 1), "exact": rec.exact,
        "layers_replaced": len(replaced), "layers_considered": sum(x["decision"] in ("replaced", "kept") for x in layers),
        "ranks": {x["node"]: x["rank"] for x in replaced},
        "macs_replaced_before": rec.details.get("macs_replaced_before"),
        "macs_replaced_after": rec.details.get("macs_replaced_after"),
        "macs_replaced_reduction": rec.details.get("macs_reduction"),
        "model_macs_before": mgr.records[0].summary.macs, "model_macs_after": rec.summary.macs,
        "drift_eval": {"max_rel": d.max_rel, "sqnr_db": d.sqnr_db, "cosine": d.cosine, "worst_output": d.worst_output},
        "latency_ms": {"before": ms_base, "after": ms_dw, "ratio": ms_dw / ms_base},
        "decisions": [{k: v for k, v in x.items() if k in ("node", "decision", "rank", "method", "sqnr_db",
                                                            "best_sqnr_db", "reason")} for x in layers
                      if x["decision"] != "skipped"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=320, help="detector input size")
    ap.add_argument("--width", type=int, default=32, help="detector width (channels of the first stage)")
    ap.add_argument("--floor", type=float, default=30.0, help="per-layer SQNR floor (dB)")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--models", default="exact,detector,yolo,ppocr-det")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    import torch

    from edgec.export import export

    results: dict[str, Any] = {}
    calib, evaluation = photo_feeds(16, args.size, seed=0), photo_feeds(8, args.size, seed=1)
    auto = f"depthwise:max_error={args.floor:g}"
    with tempfile.TemporaryDirectory() as tmp:
        det = Path(tmp) / "detector.onnx"
        export(detector_neck_head(width=args.width), (torch.randn(1, 3, args.size, args.size),), det, opset=13)
        wanted = args.models.split(",")
        if "exact" in wanted:
            models = _zoo().load_models_module()
            rn = models.export_onnx(*models.build("resnet18", bench=True), Path(tmp) / "resnet18.onnx")
            results["exact_resnet18"] = compare(rn, photo_feeds(8, 224), photo_feeds(4, 224, seed=1),
                                                "depthwise:rank=49", runs=args.runs)
            results["exact_detector"] = compare(det, calib, evaluation, "depthwise:rank=9", runs=args.runs)
        if "detector" in wanted:
            results["detector"] = compare(det, calib, evaluation, auto, runs=args.runs)
            results["detector_head_neck"] = compare(det, calib, evaluation, auto + ":layers=/fpn*+/pan*+/head*",
                                                    runs=args.runs)
        if "yolo" in wanted:
            results["yolo_style"] = compare(_zoo().path("yolo"), calib, evaluation, auto, runs=args.runs)
        if "ppocr-det" in wanted:
            results["ppocr_det"] = compare(_zoo().path("ppocr-det"), text_feeds(16, 640), text_feeds(8, 640, seed=1),
                                           auto, runs=args.runs, shapes={"x": (1, 3, 640, 640)},
                                           threshold=_zoo().ENTRIES["ppocr-det"].extra["prob_threshold"])
    for name, r in results.items():
        lat = r["latency_ms"]
        red = r["macs_replaced_reduction"]
        print(f"{name:20s} replaced {r['layers_replaced']:2d}/{r['layers_considered']:2d}  "
              f"MACs of replaced {r['macs_replaced_before'] or 0:>11,} -> {r['macs_replaced_after'] or 0:>11,} "
              f"({100 * (red or 0):5.1f} % less)  model {r['model_macs_before']:,} -> {r['model_macs_after']:,}  "
              f"ORT {lat['before']:.2f} -> {lat['after']:.2f} ms (x{lat['ratio']:.2f})  "
              f"drift max_rel {r['drift_eval']['max_rel']:.2e} SQNR {r['drift_eval']['sqnr_db']:.1f} dB  "
              f"exact={r['exact']}  pass {r['seconds']} s"
              + (f"  text-mask IoU {r['mask_iou']:.3f}" if r["mask_iou"] is not None else ""))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
