"""TensorRT INT8 calibration cache: write it from our calibrated ranges, parse it back.

For users of TensorRT's *implicit* quantization (``trtexec --int8 --calib=calibration.cache`` on the
float model): the cache replaces TensorRT's own calibration run. Its text format, as TensorRT's
calibrators write it (IInt8EntropyCalibrator2::writeCalibrationCache) and as NVIDIA's tools emit it
(e.g. TAO's ``TRT-{version}-EntropyCalibration2`` writer; NVIDIA/TensorRT issues #1941, #2036):

    TRT-8602-EntropyCalibration2
    input: 3c010204
    /conv1/Conv_output_0: 3d4ccccd

One tensor per line: ``name: <hex of the float32 scale>``, the hex being the IEEE-754 bits read as a
big-endian 32-bit integer (``struct.pack('>f', s).hex()``), and the scale symmetric: amax / 127.
The header's number is TensorRT's NV_TENSORRT_VERSION, which TensorRT checks: it skips a cache written
for another version (NVIDIA/TensorRT#1378). It is MAJOR*1000 + MINOR*100 + PATCH before TensorRT 10
(8.6.1 -> 8601) and MAJOR*10000 + MINOR*100 + PATCH from 10 on (10.9.0 -> 100900).
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Mapping
from pathlib import Path

from edgec import model_io
from edgec.errors import EdgecError

#: JetPack 6.1/6.2's TensorRT (the current JetPack); JetPack 6.0 ships 8.6.2 (pass trt_version="8.6.2").
DEFAULT_TRT_VERSION = "10.3.0"
CALIBRATOR = "EntropyCalibration2"
_LINE = re.compile(r"^(?P<name>.+): (?P<hex>[0-9a-fA-F]{1,8})$")


def version_number(version: str) -> int:
    """TensorRT's NV_TENSORRT_VERSION for a dotted version string ("8.6.2" -> 8602, "10.3.0" -> 100300)."""
    parts = version.strip().split(".")
    try:
        major, minor, patch = (int(p) for p in (parts + ["0", "0"])[:3])
    except ValueError:
        raise EdgecError(f"TensorRT version {version!r}: expected MAJOR.MINOR[.PATCH]",
                         hint="e.g. --trt-version 10.3.0 (JetPack 6.1/6.2), 8.6.2 (JetPack 6.0) or 11.4.0") from None
    if not (0 <= minor <= 99 and 0 <= patch <= 99) or major < 0:
        raise EdgecError(f"TensorRT version {version!r}: minor and patch must be below 100",
                         hint="e.g. --trt-version 10.3.0")
    return major * (10000 if major >= 10 else 1000) + minor * 100 + patch


def scale_hex(scale: float) -> str:
    """The cache's encoding of one scale: big-endian IEEE-754 float32 bits as 8 lowercase hex digits."""
    return struct.pack(">f", scale).hex()


def hex_scale(text: str) -> float:
    return struct.unpack(">f", bytes.fromhex(text.rjust(8, "0")))[0]


def render(scales: Mapping[str, float], trt_version: str = DEFAULT_TRT_VERSION) -> str:
    """The cache text for per-tensor scales (amax / 127). Names keep the model's order."""
    lines = [f"TRT-{version_number(trt_version)}-{CALIBRATOR}"]
    for name, scale in scales.items():
        if ": " in name or "\n" in name:
            # The line format has no escaping: such a name would parse back as another tensor.
            raise EdgecError(f"tensor name {name!r} cannot be written to a TensorRT calibration cache")
        if not (math.isfinite(scale) and scale > 0):
            raise EdgecError(f"tensor '{name}': calibration scale {scale!r} is not a positive finite number")
        lines.append(f"{name}: {scale_hex(scale)}")
    return "\n".join(lines) + "\n"


def write(path: str | Path, scales: Mapping[str, float], trt_version: str = DEFAULT_TRT_VERSION) -> Path:
    """Write the cache atomically (a reader never sees half a file)."""
    text = render(scales, trt_version)
    with model_io.atomic_path(Path(path)) as tmp:
        Path(tmp).write_text(text)
    return Path(path)


def parse(text: str) -> tuple[int, dict[str, float]]:
    """(version number, {tensor: scale}) from cache text; raises EdgecError on anything malformed."""
    lines = text.splitlines()
    head = re.fullmatch(rf"TRT-(\d+)-{CALIBRATOR}", lines[0].strip()) if lines else None
    if head is None:
        raise EdgecError(f"not a TensorRT {CALIBRATOR} cache: first line {lines[0][:60]!r}" if lines
                         else "empty calibration cache")
    scales: dict[str, float] = {}
    for i, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        m = _LINE.match(line.rstrip())
        if m is None:
            raise EdgecError(f"calibration cache line {i}: expected 'name: hex', got {line[:60]!r}")
        scales[m["name"]] = hex_scale(m["hex"])
    return int(head[1]), scales


def read(path: str | Path) -> tuple[int, dict[str, float]]:
    return parse(Path(path).read_text())


def scales_from_ranges(ranges: Mapping[str, tuple[float, float]]) -> dict[str, float]:
    """Symmetric int8 scales amax / 127 from (min, max) ranges; all-zero tensors get the smallest
    normal float (TensorRT rejects a zero scale, and any scale represents zero exactly)."""
    out = {}
    for name, (lo, hi) in ranges.items():
        amax = max(abs(float(lo)), abs(float(hi)))
        if not math.isfinite(amax):
            continue
        out[name] = amax / 127.0 if amax > 0 else float.fromhex("0x1p-126")
    return out
