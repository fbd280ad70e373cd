"""--add PASS[:ARGS]: a lossy pass joins a target's pipeline at its documented stage (#23)."""

from __future__ import annotations

import pytest

import edgec
from edgec import targets
from edgec.cli import main as cli
from edgec.errors import EXIT_USER, EdgecError

DIGITS, DIGITS_SAMPLES = edgec.example_paths()


def test_passes_join_at_their_stage() -> None:
    int8 = targets.get("cpu-int8")
    got = targets.with_added(int8, ["depthwise", "bias-correct", "prune:channels:0.2"])
    cleanup = len(targets.stage("cleanup"))
    # depthwise and prune after the cleanup stage, in the order given, before equalize-act/quantize;
    # bias-correct after quantize, before the ORT file's legalize pass.
    assert got[cleanup:] == ["depthwise", "prune:channels:0.2", "equalize-act", "quantize", "bias-correct",
                             "qdq-compact"]
    assert got[:cleanup] == list(targets.stage("cleanup"))
    fp32 = targets.with_added(targets.get("tflite-fp32"), ["depthwise"])
    assert fp32.index("depthwise") == cleanup and fp32[-2:] == ["tflite-hardswish", "tflite-gelu"]


@pytest.mark.parametrize("spec, message", [
    ("nosuchpass", "unknown pass 'nosuchpass'"),
    ("fold", "no documented stage"),
    ("bias-correct", "no 'quantize' stage"),
])
def test_bad_add_is_a_clear_error(spec: str, message: str) -> None:
    with pytest.raises(EdgecError, match=message):
        targets.with_added(targets.get("tflite-fp32"), [spec])


def test_cli_add_compiles_and_records(tmp_path, capsys) -> None:
    out = tmp_path / "o"
    assert cli(["compile", str(DIGITS), "--target", "tflite-fp32", "--calib", str(DIGITS_SAMPLES),
                "--add", "prune:channels:0.2", "-o", str(out), "-q"]) == 0
    import json

    names = [r["name"] for r in json.loads((out / "report.json").read_text())["passes"]]
    assert names.index("prune") == names.index("shape-infer") + 1 and (out / "model.tflite").exists()
    assert cli(["compile", str(DIGITS), "--passes", "fold", "--add", "depthwise", "-o", str(tmp_path / "x")]) \
        == EXIT_USER
    err = capsys.readouterr().err.strip()
    assert "--add" in err and len(err.splitlines()) == 1 and not (tmp_path / "x").exists()
