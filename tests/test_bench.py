"""tools/bench.py smoke test on the bundled digits model (marked bench: about a minute)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.bench
def test_bench_digits_table(tmp_path: Path) -> None:
    out = tmp_path / "B.md"
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "bench.py"), "--models", "digits", "--calib", "16",
                           "--targets", "cpu-fp32", "--out", str(out)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = out.read_text()
    rows = {m.group(1): m.group(2).split(" | ") for m in re.finditer(r"^\| (\S+) \| (.+) \|$", text, re.MULTILINE)}
    assert {"fp32", "ort-quant", "edgec:cpu-fp32"} <= set(rows)
    # columns: size KB, latency, x fp32, SQNR dB, top-1 agree, acc, build s, peak RSS MB, note
    assert float(rows["edgec:cpu-fp32"][3]) > 100  # an exact pipeline: float rounding only
    assert float(rows["edgec:cpu-fp32"][5]) >= 0.95  # task accuracy on the held-out digits
    assert 5 < float(rows["ort-quant"][3]) < 60  # int8 is lossy but not broken
    assert float(rows["ort-quant"][0]) < 0.7 * float(rows["fp32"][0])  # int8 weights shrink the file
    assert 20 < float(rows["ort-quant"][7]) < 4000  # a plausible peak RSS of the build process, in MB
