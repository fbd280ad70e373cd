"""edgec build: a manifest of models x targets, incremental, serial / process pool / Ray give the same bytes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import edgec
from edgec import build
from edgec.cli import main as cli
from edgec.errors import EXIT_USER

sys.path.insert(0, str(Path(__file__).parent))
import graphs

DIGITS, DIGITS_SAMPLES = edgec.example_paths()
TARGETS = ["cpu-fp32", "cpu-int8"]


def _fleet(root: Path) -> Path:
    """3 models (the trained digits CNN with its real samples, two Conv+BN graphs) x 2 targets."""
    shutil.copy(DIGITS, root / "digits.onnx")
    shutil.copy(DIGITS_SAMPLES, root / "digits.npz")
    for seed in (0, 1):
        edgec.save(graphs.conv_bn(seed=seed), root / f"convbn{seed}.onnx")
        x = np.random.default_rng(seed).normal(0, 1, (6, 1, 3, 16, 16)).astype(np.float32)
        np.savez(root / f"convbn{seed}.npz", x=x)
    (root / "edgec.toml").write_text(
        'targets = ["cpu-fp32", "cpu-int8"]\nout = "out"\n[options]\nbench_runs = 0\n'
        '[models.digits]\npath = "digits.onnx"\ncalib = "digits.npz"\n'
        '[models.convbn0]\npath = "convbn0.onnx"\ncalib = "convbn0.npz"\n'
        '[models.convbn1]\npath = "convbn1.onnx"\ncalib = "convbn1.npz"\n'
        '[target_options.cpu-int8]\ncalib_method = "minmax"\n')
    return root / "edgec.toml"


def _digests(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("model.onnx"))}


def _statuses(out: Path) -> dict[str, str]:
    return {f"{r['model']}/{r['target']}": r["status"] for r in json.loads((out / "index.json").read_text())}


def test_serial_then_incremental(tmp_path: Path, capsys) -> None:
    manifest = _fleet(tmp_path)
    out = tmp_path / "out"
    assert cli(["build", str(manifest), "-q"]) == 0
    assert set(_statuses(out).values()) == {"built"} and len(_digests(out)) == 6
    index = (out / "index.html").read_text()
    assert index.count("report.html") == 6 and "convbn1" in index
    first = _digests(out)
    # Nothing changed: nothing is rebuilt, the artifacts are untouched.
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("model.onnx")}
    assert cli(["build", str(manifest), "-q"]) == 0
    assert set(_statuses(out).values()) == {"cached"}
    assert mtimes == {p: p.stat().st_mtime_ns for p in out.rglob("model.onnx")}
    # One model's bytes change: only its two pairs are rebuilt.
    edgec.save(graphs.conv_bn(seed=7), tmp_path / "convbn1.onnx")
    assert cli(["build", str(manifest), "-q"]) == 0
    st = _statuses(out)
    assert {k for k, v in st.items() if v == "built"} == {"convbn1/cpu-fp32", "convbn1/cpu-int8"}
    assert _digests(out)["convbn0/cpu-int8/model.onnx"] == first["convbn0/cpu-int8/model.onnx"]
    assert _digests(out)["convbn1/cpu-int8/model.onnx"] != first["convbn1/cpu-int8/model.onnx"]
    # The calibration data is part of the key too; --force rebuilds everything.
    assert cli(["build", str(manifest), "-q", "--force"]) == 0
    assert set(_statuses(out).values()) == {"built"}


def test_process_pool_matches_serial(tmp_path: Path) -> None:
    manifest = _fleet(tmp_path)
    m = build.load_manifest(manifest)
    serial = build.build(m)
    a = _digests(m.out)
    shutil.rmtree(m.out)
    pooled = build.build(m, jobs=2)
    assert [r["status"] for r in serial] == [r["status"] for r in pooled] == ["built"] * 6
    assert _digests(m.out) == a


def test_one_failing_pair_does_not_stop_the_others(tmp_path: Path, capsys) -> None:
    manifest = _fleet(tmp_path)
    (tmp_path / "convbn0.npz").write_bytes(b"not an npz")
    assert cli(["build", str(manifest), "-j", "2"]) == EXIT_USER
    st = _statuses(tmp_path / "out")
    assert st["convbn0/cpu-int8"] == "failed" and st["digits/cpu-int8"] == "built"
    rows = json.loads((tmp_path / "out" / "index.json").read_text())
    err = next(r["error"] for r in rows if r["model"] == "convbn0" and r["target"] == "cpu-int8")
    assert "convbn0.npz" in err and "\n" not in err
    assert not (tmp_path / "out" / "convbn0" / "cpu-int8" / "model.onnx").exists()
    assert "failed" in capsys.readouterr().out


@pytest.mark.parametrize("text, message", [
    ("[models.a]\npath = 'missing.onnx'\ntargets = ['cpu-fp32']\n", "missing.onnx"),
    ("[models.a]\npath = 'digits.onnx'\ntargets = ['cpu-int9']\n", "unknown target 'cpu-int9'"),
    ("[models.a]\npath = 'digits.onnx'\ntargetz = ['cpu-fp32']\n", "unknown key 'targetz'"),
    ("[models.a]\npath = 'digits.onnx'\n", "no targets"),
    ("targets = [\n", "not valid TOML"),
    ("targets = ['cpu-fp32']\n", "no [models.NAME]"),
])
def test_bad_manifest_is_one_line_exit_2(tmp_path: Path, capsys, text: str, message: str) -> None:
    shutil.copy(DIGITS, tmp_path / "digits.onnx")
    (tmp_path / "m.toml").write_text(text)
    assert cli(["build", str(tmp_path / "m.toml")]) == EXIT_USER
    err = capsys.readouterr().err.strip()
    assert message in err and "m.toml" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_cluster():
    """A real local Ray cluster on 127.0.0.1 with 2 CPUs, shared by this module's Ray tests; its address.

    Started in the foreground (``--block``) in its own process group and ended by that group's id: never
    ``ray stop``, which would end every Ray on the machine (other sessions' too)."""
    ray = pytest.importorskip("ray", reason="Ray is the optional extra edgec[ray] (in the dev extra)")
    # Ray's CLI run by this interpreter (a venv that sees Ray from its base has no `ray` script of its own);
    # the cluster's workers then run this interpreter too, with this checkout's edgec.
    port = _free_port()
    head = subprocess.Popen(
        [sys.executable, "-c", "from ray.scripts.scripts import main; main()", "start", "--head", "--block",
         "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
         "--disable-usage-stats"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)
    try:
        assert head.stdout is not None
        lines = []
        for line in head.stdout:  # EOF if the head dies: the assert below names why
            lines.append(line)
            if "Ray runtime started" in line:
                break
        assert lines and "Ray runtime started" in lines[-1], "".join(lines[-20:])
        yield f"127.0.0.1:{port}"
    finally:
        ray.shutdown()
        os.killpg(head.pid, signal.SIGTERM)  # --block: the head ends the processes it started
        try:
            head.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()


def test_ray_cluster_matches_serial(tmp_path: Path, ray_cluster: str) -> None:
    """Artifacts built as Ray tasks come back to the driver's folder, byte-identical to a serial build."""
    manifest = _fleet(tmp_path)
    m = build.load_manifest(manifest)
    build.build(m)
    serial = _digests(m.out)
    shutil.rmtree(m.out)
    rows = build.build(m, use_ray=True, ray_address=ray_cluster)
    assert [r["status"] for r in rows] == ["built"] * 6
    assert _digests(m.out) == serial


def test_ray_sensitivity_matches_serial(tmp_path: Path, ray_cluster: str) -> None:
    """`edgec sensitivity --ray ADDR`: the candidate evaluations as Ray tasks give the serial sensitivity.json."""
    args = ["sensitivity", str(DIGITS), "--calib", str(DIGITS_SAMPLES), "--limit", "16", "-q"]
    assert cli([*args, "-o", str(tmp_path / "serial")]) == 0
    assert cli([*args, "-o", str(tmp_path / "ray"), "--ray", ray_cluster]) == 0
    serial = (tmp_path / "serial" / "sensitivity.json").read_bytes()
    assert serial == (tmp_path / "ray" / "sensitivity.json").read_bytes() and b'"only_sqnr_db"' in serial
