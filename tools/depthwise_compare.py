"""Measure the depthwise pass: MACs, ORT latency and output drift at per-layer SQNR floors.

    python tools/depthwise_compare.py [--models yolov8n,ppocr-det,detector,exact] [--floors 30,25]
                                      [--modes macs,latency] [--runs 40] [--json out.json]

Every model first goes through the cpu-fp32 cleanup (fold, fuse-bn, ...); the depthwise pass then runs on
16 calibration images and the two models are compared on 8 other images (a different seed).
  yolov8n    trained YOLOv8n (zoo "yolov8n": nudenet 3.4.2 320n.onnx, 18 classes), 320x320 photos; only
             the neck and head are selected (``YOLOV8N_NECK_HEAD``: the FPN/PAN C2f blocks and the
             cv2/cv3 box/class heads).
  ppocr-det  PP-OCRv4 mobile text detector (trained; 640x640 photos with rendered text): its DB-FPN has
             five 96->24 3x3 convs. Also reports the IoU of the text masks (p > 0.3) before/after.
  detector   an untrained He-initialised YOLO-style detector built here (``detector_neck_head``).
  exact      r = K*K (rank 49 also covers a 7x7 stem): ResNet-18 (tests/models.py, 224) and the detector.
Modes: "macs" replaces every layer that meets the floor with fewer MACs; "latency" (``latency=true``) also
times each replacement against its conv in ORT at the layer's real shape and keeps only faster pairs.
Latency: ONNX Runtime CPU, 2 threads, allow_spinning 0, the two models run alternately in one process
(median of ``--runs`` runs each), measured twice; the ratio is after / before.
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


def _timed_pair(a: bytes, b: bytes, feed: dict[str, np.ndarray], runs: int, repeats: int = 2) -> list[tuple[float, float]]:
    """Median latency (ms) of two models, run alternately (a, b, a, b, ...) in one process so that load
    changes hit both alike; ``repeats`` independent measurements, so a single noisy one is visible."""
    from edgec import runtime
    from edgec.passes.depthwise_latency import interleaved_ms

    sa = runtime.session(a, threads=2, optimization="all", spinning=False)
    sb = runtime.session(b, threads=2, optimization="all", spinning=False)
    return [tuple(interleaved_ms([sa, sb], feed, runs=runs)) for _ in range(repeats)]  # type: ignore[misc]


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
    timings = _timed_pair(model_io.to_bytes(base), model_io.to_bytes(out), evaluation[0], runs)
    ms_base, ms_dw = (float(np.median([t[i] for t in timings])) for i in (0, 1))
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
        "drift_eval": {"max_abs": d.max_abs, "max_rel": d.max_rel, "sqnr_db": d.sqnr_db, "cosine": d.cosine, "worst_output": d.worst_output},
        "latency_ms": {"before": ms_base, "after": ms_dw, "ratio": ms_dw / ms_base,
                       "ratios": [b / a for a, b in timings]},
        "decisions": [{k: v for k, v in x.items() if k in ("node", "decision", "rank", "method", "sqnr_db", "sqnr_svd_db",
                                                            "best_sqnr_db", "latency", "reason")} for x in layers
                      if x["decision"] != "skipped"],
    }


YOLOV8N_NECK_HEAD = "/model.1[2-9]/*+/model.2[0-2]/*"  # FPN/PAN C2f blocks 12-21 and the Detect head 22


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=320, help="detector input size")
    ap.add_argument("--width", type=int, default=32, help="detector width (channels of the first stage)")
    ap.add_argument("--floors", default="30,25", help="per-layer SQNR floors (dB), comma-separated")
    ap.add_argument("--runs", type=int, default=40, help="interleaved runs per latency measurement")
    ap.add_argument("--models", default="yolov8n,ppocr-det")
    ap.add_argument("--modes", default="macs,latency", help="macs: MACs only; latency: also the per-layer ORT check")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    import torch

    from edgec.export import export

    results: dict[str, Any] = {}
    calib, evaluation = photo_feeds(16, args.size, seed=0), photo_feeds(8, args.size, seed=1)
    floors = [float(f) for f in args.floors.split(",")]
    modes = {"macs": "", "latency": ":latency=true"}
    wanted = args.models.split(",")
    zoo = _zoo()

    def runs_of(name: str, path: Path, cal: list, ev: list, extra: str = "", **kw: Any) -> None:
        for floor in floors:
            for mode in args.modes.split(","):
                spec = f"depthwise:max_error={floor:g}{extra}{modes[mode]}"
                results[f"{name}@{floor:g}dB/{mode}"] = compare(path, cal, ev, spec, runs=args.runs, **kw)
                _print_row(f"{name}@{floor:g}dB/{mode}", results[f"{name}@{floor:g}dB/{mode}"])
                if args.json:  # after every run: a long run interrupted still leaves its numbers
                    args.json.write_text(json.dumps(results, indent=1, default=float))

    with tempfile.TemporaryDirectory() as tmp:
        det = Path(tmp) / "detector.onnx"
        export(detector_neck_head(width=args.width), (torch.randn(1, 3, args.size, args.size),), det, opset=13)
        if "exact" in wanted:
            models = zoo.load_models_module()
            rn = models.export_onnx(*models.build("resnet18", bench=True), Path(tmp) / "resnet18.onnx")
            results["exact_resnet18"] = compare(rn, photo_feeds(8, 224), photo_feeds(4, 224, seed=1),
                                                "depthwise:rank=49", runs=args.runs)
            results["exact_detector"] = compare(det, calib, evaluation, "depthwise:rank=9", runs=args.runs)
        if "yolov8n" in wanted:
            # Real photos, the model's own preprocessing (letterbox-free resize, /255); scored on other photos.
            ycal = zoo.preprocess(zoo.images("photos", 16, (320, 320), seed=0), "yolov8n")
            yev = zoo.preprocess(zoo.images("photos", 8, (320, 320), seed=1), "yolov8n")
            runs_of("yolov8n-neck-head", zoo.path("yolov8n"), ycal, yev, f":layers={YOLOV8N_NECK_HEAD}",
                    shapes={"images": (1, 3, 320, 320)})
        if "detector" in wanted:
            runs_of("detector", det, calib, evaluation)
        if "ppocr-det" in wanted:
            runs_of("ppocr-det", zoo.path("ppocr-det"), text_feeds(16, 640), text_feeds(8, 640, seed=1),
                    shapes={"x": (1, 3, 640, 640)}, threshold=zoo.ENTRIES["ppocr-det"].extra["prob_threshold"])
    for name, r in results.items():
        _print_row(name, r)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=float))
    return 0


def _print_row(name: str, r: dict[str, Any]) -> None:
    lat = r["latency_ms"]
    red = r["macs_replaced_reduction"]
    print(f"{name:32s} replaced {r['layers_replaced']:2d}/{r['layers_considered']:2d}  "
          f"MACs of replaced {r['macs_replaced_before'] or 0:>11,} -> {r['macs_replaced_after'] or 0:>11,} "
          f"({100 * (red or 0):5.1f} % less)  model {r['model_macs_before']:,} -> {r['model_macs_after']:,}  "
          f"ORT {lat['before']:.2f} -> {lat['after']:.2f} ms (x{lat['ratio']:.2f}; repeats "
          + ", ".join(f"x{x:.2f}" for x in lat["ratios"]) + ")  "
          f"drift SQNR {r['drift_eval']['sqnr_db']:.1f} dB max_abs {r['drift_eval']['max_abs']:.3g}  "
          f"exact={r['exact']}  pass {r['seconds']} s"
          + (f"  text-mask IoU {r['mask_iou']:.3f}" if r["mask_iou"] is not None else ""), flush=True)


if __name__ == "__main__":
    sys.exit(main())
