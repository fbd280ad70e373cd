"""The CLI end to end (in-process for speed, one subprocess for the real exit code)."""

from __future__ import annotations

import json
import subprocess
import sys

import graphs
import numpy as np
import onnx_ir as ir
import pytest

from edgec.cli import main


@pytest.fixture
def conv_bn_file(tmp_path):
    path = tmp_path / "m.onnx"
    ir.save(graphs.conv_bn(), path)
    return path


@pytest.fixture
def conv_bn_npz(tmp_path):
    path = tmp_path / "s.npz"
    r = np.random.default_rng(3)
    np.savez(path, x=r.normal(0, 1, (6, 1, 3, 16, 16)).astype(np.float32))
    return path


def test_compile_writes_model_and_reports(conv_bn_file, conv_bn_npz, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["compile", str(conv_bn_file), "--calib", str(conv_bn_npz), "-o", str(out),
               "--report", str(tmp_path / "r.json"), "--set", "bench_runs=5"])
    assert rc == 0
    assert {p.name for p in out.iterdir()} == {"model.onnx", "report.json", "report.html"}
    rep = json.loads((out / "report.json").read_text())
    names = [p["name"] for p in rep["passes"]]
    assert names[0] == "input" and "fuse-bn" in names
    last = rep["passes"][-1]
    assert last["summary"]["ops"] == {"Conv": 1}
    assert last["drift"]["max_rel"] < 1e-5
    assert rep["backend"]["figures"]["latency"]["runs"] == 5
    # One set given: every 4th sample (here sample 3) is held aside, calibration never sees it.
    assert rep["samples"].startswith("scored on 1 held aside (every 4th sample of s.npz")
    assert rep["held_aside"]["calibrated_on"] == 5
    assert rep["held_aside"]["indices"] == [3]
    assert rep["backend"]["figures"]["drift"]["sample_indices"] == [3]
    assert "<svg" in (out / "report.html").read_text()
    printed = capsys.readouterr().out
    assert "fuse-bn" in printed and "latency" in printed


def test_compile_explicit_passes_and_dump_dir(conv_bn_file, conv_bn_npz, tmp_path):
    dump = tmp_path / "dump"
    rc = main(["compile", str(conv_bn_file), "--calib", str(conv_bn_npz), "--passes", "fuse-bn,dce",
               "--dump-dir", str(dump), "-q"])
    assert rc == 0
    assert sorted(p.name for p in dump.iterdir()) == ["01_fuse-bn.onnx", "02_dce.onnx"]


def test_inspect_json(conv_bn_file, capsys):
    assert main(["inspect", str(conv_bn_file), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["ops"] == {"BatchNormalization": 1, "Conv": 1}
    assert info["macs"] == 8 * 8 * 8 * 3 * 3 * 3  # output 8x8x8, each 3x3x3 MACs
    assert info["inputs"] == [{"name": "x", "dtype": "FLOAT", "shape": [1, 3, 16, 16]}]


def test_diff_reports_ops_and_drift(conv_bn_file, conv_bn_npz, tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["compile", str(conv_bn_file), "--calib", str(conv_bn_npz), "-o", str(out), "-q"]) == 0
    assert main(["diff", str(conv_bn_file), str(out / "model.onnx"), "--calib", str(conv_bn_npz), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["ops_changed"] == {"BatchNormalization": [1, 0]}
    assert res["drift"]["max_rel"] < 1e-5
    assert res["warnings"] == []


def test_passes_and_targets_list(capsys):
    assert main(["passes"]) == 0
    text = capsys.readouterr().out
    for name in ("lift-constants", "fold", "dce", "fuse-bn", "fuse-bias", "shape-infer"):
        assert name in text
    assert main(["targets"]) == 0
    assert "cpu-fp32" in capsys.readouterr().out


@pytest.mark.parametrize("argv,fragment", [
    (["compile", "missing.onnx"], "missing.onnx: no such file"),
    (["compile", "{model}", "--passes", "fuse-bn,bogus"], "unknown pass 'bogus'"),
    (["compile", "{model}", "--target", "gpu-int3"], "unknown target 'gpu-int3'"),
    (["compile", "{model}", "--shape", "x=1,3,a"], "--shape"),
    (["compile", "{model}", "--shape", "x=1,3,16"], "rank 3 given"),
    (["compile", "{model}", "--shape", "nope=1,3,16,16"], "'nope' is not an input"),
    (["compile", "{model}", "--calib", "{tmp}/none.npz"], "none.npz: no such file"),
    (["compile", "{model}", "--set", "novalue"], "expected KEY=VALUE"),
    (["inspect", "{tmp}/garbage.onnx"], "not a readable ONNX model"),
])
def test_user_errors_exit_2_with_one_line(argv, fragment, conv_bn_file, tmp_path, capsys):
    (tmp_path / "garbage.onnx").write_bytes(b"\x00\xffnot a protobuf at all\x12\x99")
    argv = [a.format(model=conv_bn_file, tmp=tmp_path) for a in argv]
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main([*argv, "-o", str(tmp_path / "out")] if argv[0] == "compile" else argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("edgec: error:") and fragment in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_subprocess_exit_code_and_no_traceback(tmp_path):
    bad = tmp_path / "empty.onnx"
    bad.write_bytes(b"")
    proc = subprocess.run([sys.executable, "-m", "edgec.cli", "inspect", str(bad)], capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith(f"edgec: error: {bad}: file is empty")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "Traceback" not in proc.stderr
