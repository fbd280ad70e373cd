"""tools/bench.py's onnx2tf anchor (``--anchors onnx2tf``): onnx2tf 1.29 run offline in its own Python.

onnx2tf needs TensorFlow (~2.6 GB) and pins onnx 1.19.1, onnxruntime 1.23.0 and numpy 1.26.4, which would
downgrade edgec's own environment: it is never an edgec dependency, not even an extra. It lives in a separate
venv (1.29.x is the last line that installs on Python 3.11; 2.x needs >= 3.12):

    python3 -m venv /work/o2tf-venv && /work/o2tf-venv/bin/pip install onnx2tf==1.29.24

and bench.py runs it in a subprocess with that venv's python (``--onnx2tf-python``, or the environment
variable EDGEC_ONNX2TF_PYTHON), so edgec's process never imports TensorFlow.

Offline, on our data. onnx2tf reads a sample-image file (``calibration_image_sample_data_20x128x128x3_float32.npy``)
from its working directory and downloads it when absent, for every model whose inputs are all 3-channel
images, even in fp32 (its test inference), and int8 calibrates on those MS-COCO images unless ``-cind`` names
data. So each conversion runs in an empty working directory holding OUR calibration images under that file
name, with ``-cind`` pointing at them (NHWC, already normalized, so mean 0 and std 1), and with the HTTP(S) proxy
set to a closed local port: any network access it still tries fails, and the row says so.

Variants (each conversion works on its own copy of the model, which onnx2tf rewrites in place):
``onnx2tf`` is ``model_float32.tflite`` of a plain conversion; ``onnx2tf-int8`` is
``model_full_integer_quant.tflite`` of an ``-oiqt`` conversion (per-channel weights, int8 inputs and outputs;
LiteRTRunner quantizes the feed and dequantizes the output outside the timed call). edgec's tflite-int8 default
takes and returns float (``io = "float"``), so its timed call includes one QUANTIZE of the input and one
DEQUANTIZE of the output that onnx2tf's does not: the int8 latency comparison is tilted towards onnx2tf.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
from bench_measure import Feed, Variant

ENV_PYTHON = "EDGEC_ONNX2TF_PYTHON"
SAMPLE_FILE = "calibration_image_sample_data_20x128x128x3_float32.npy"  # the name onnx2tf looks for
CLOSED_PROXY = "http://127.0.0.1:9"  # discard port: nothing listens, a request fails at once
# Signs in onnx2tf's output that it tried the network (requests/urllib3 through the closed proxy).
NETWORK_SIGNS = ("ProxyError", "Cannot connect to proxy", "Max retries exceeded", "ConnectionError",
                 "NewConnectionError", "Failed to establish a new connection")
KINDS = {"onnx2tf": "_float32.tflite", "onnx2tf-int8": "_full_integer_quant.tflite"}


def python_for(option: str | None) -> str | None:
    """The onnx2tf venv's python: the option, else $EDGEC_ONNX2TF_PYTHON, else None (rows say why)."""
    return option or os.environ.get(ENV_PYTHON) or None


def calib_array(calib: list[Feed], name: str) -> np.ndarray:
    """The calibration feeds of one input stacked, rank 4 as NHWC (onnx2tf's TF-side layout)."""
    x = np.concatenate([np.asarray(f[name], np.float32) for f in calib])
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1) if x.ndim == 4 else x)


def command(python: str, src: Path, out_dir: Path, calib_files: dict[str, tuple[Path, int]],
            int8: bool) -> list[str]:
    """The onnx2tf command line: -cind per input (NHWC file; mean 0 / std 1 of the right rank for int8)."""
    cmd = [python, "-m", "onnx2tf", "-i", str(src), "-o", str(out_dir)]
    if int8:
        cmd += ["-oiqt", "-qt", "per-channel"]
    for name, (path, channels) in calib_files.items():
        cmd += ["-cind", name, str(path)]
        if int8:
            zeros, ones = ",".join(["0.0"] * channels), ",".join(["1.0"] * channels)
            cmd += [f"[[[[{zeros}]]]]", f"[[[[{ones}]]]]"]
    return cmd


def network_attempt(log: str) -> str | None:
    """The first line of onnx2tf's output showing a network attempt, or None."""
    for line in log.splitlines():
        if any(s in line for s in NETWORK_SIGNS):
            return line.strip()[:200]
    return None


def failure_reason(log: str, returncode: int) -> str:
    """One line for a failed conversion: the network attempt if any, else onnx2tf's last error line."""
    net = network_attempt(log)
    if net:
        return f"onnx2tf tried to reach the network (blocked: conversions run offline): {net}"
    clean = [re.sub(r"\x1b\[[0-9;]*m", "", ln).strip() for ln in log.splitlines()]
    errors = [ln for ln in clean if re.search(r"(Error|ERROR|error:|Exception)", ln)]
    last = (errors or [ln for ln in clean if ln] or [f"exit {returncode}"])[-1]
    return f"onnx2tf failed (exit {returncode}): {last[:200]}"


def convert(kind: str, python: str | None, src: Path, calib: list[Feed], tmp: Path,
            timeout: float = 1800) -> Variant:
    """One onnx2tf conversion (``kind`` "onnx2tf" fp32 or "onnx2tf-int8") as a bench Variant (LiteRT-run)."""
    if not python:
        return Variant(kind, None, note=f"skipped: no onnx2tf python (--onnx2tf-python or ${ENV_PYTHON})")
    work = tmp / kind
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    files: dict[str, tuple[Path, int]] = {}
    for name in calib[0]:
        arr = calib_array(calib, name)
        path = work / f"calib_{len(files)}.npy"
        np.save(path, arr)
        files[name] = (path, int(arr.shape[-1]))
        if arr.ndim == 4 and arr.shape[-1] == 3 and len(files) == 1:
            np.save(work / SAMPLE_FILE, arr)  # read instead of downloading MS-COCO samples (module doc)
    # onnx2tf simplifies its input file in place (it runs onnxsim on it): it gets a copy, never the file the
    # other variants are built from.
    model = work / "model.onnx"
    shutil.copyfile(src, model)
    out_dir = work / "out"
    # Its own onnxsim (it calls the executable on PATH): the venv's bin first.
    path = os.pathsep.join([str(Path(python).parent), os.environ.get("PATH", "")])
    env = {**os.environ, "PATH": path, "HTTP_PROXY": CLOSED_PROXY, "HTTPS_PROXY": CLOSED_PROXY, "http_proxy": CLOSED_PROXY,
           "https_proxy": CLOSED_PROXY, "NO_PROXY": "", "no_proxy": "", "CUDA_VISIBLE_DEVICES": "-1",
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(command(python, model, out_dir, files, kind.endswith("int8")), cwd=work, env=env,
                              capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        return Variant(kind, None, note=f"skipped: onnx2tf python {python} not found")
    except subprocess.TimeoutExpired:
        return Variant(kind, None, time.perf_counter() - t0, note=f"failed: onnx2tf ran over {timeout:.0f} s")
    seconds = time.perf_counter() - t0
    log = proc.stdout + proc.stderr
    (work / "onnx2tf.log").write_text(log)
    artifact = out_dir / f"{model.stem}{KINDS[kind]}"
    if proc.returncode != 0 or not artifact.exists():
        return Variant(kind, None, seconds, note=f"failed: {failure_reason(log, proc.returncode)}")
    net = network_attempt(log)
    note = "offline, our calibration data" + (f"; it tried the network and went on: {net}" if net else "")
    return Variant(kind, artifact, seconds, None, note, "litert")


def version(python: str | None) -> str:
    """onnx2tf's version in its venv, for the header ("absent" with the reason otherwise)."""
    if not python:
        return f"not configured (--onnx2tf-python or ${ENV_PYTHON}); skipped"
    try:
        probe = "from importlib.metadata import version as v; print(v('onnx2tf'), v('tensorflow'))"
        out = subprocess.run([python, "-c", probe],
                             capture_output=True, text=True, timeout=120, check=False)
    except (FileNotFoundError, subprocess.TimeoutExpired) as exc:
        return f"not runnable ({type(exc).__name__}); skipped"
    if out.returncode != 0:
        return f"not installed in {python}; skipped"
    o2t, tf = out.stdout.split()
    return f"{o2t} (TensorFlow {tf}, separate venv {python})"
