"""The candidate evaluations of `edgec sensitivity` and of the mixed-precision search run through
build.Executor (serial, -j N processes, Ray): same sensitivity.json and same search table and chosen
configuration whatever ran them. The float part of an int8 pipeline comes from the target's stages."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgec import mixed_precision as MP
from edgec import model_io, targets
from edgec import sensitivity as S
from edgec.cli import main as cli
from edgec.errors import EdgecError

sys.path.insert(0, str(Path(__file__).parent))
from test_recovery import _seed_outlier

REPO = Path(__file__).resolve().parent.parent
DIGITS = REPO / "compiler" / "assets" / "digits.onnx"
NPZ = REPO / "compiler" / "assets" / "digits_samples.npz"


@pytest.fixture(scope="module")
def outlier() -> tuple:
    """The trained digits CNN with one channel scaled x100 (exact in fp32, awful for int8), its real samples:
    64 for calibration, 40 held aside."""
    s = np.load(NPZ)
    feeds = [{"input": x} for x in s["input"]]
    fm = S.prepare_float(DIGITS, targets.get("cpu-int8"), feeds[:4])
    _seed_outlier(fm)
    return fm, feeds[:64], feeds[240:280]


def test_split_pipeline_from_stages(tmp_path: Path) -> None:
    cleanup = list(targets.stage("cleanup"))
    # equalize-act is exact and rescales the float model: calibration must see it, so it is float-side.
    assert S.split_pipeline(targets.get("cpu-int8")) == ([*cleanup, "equalize-act"], ["quantize"])
    assert S.split_pipeline(targets.get("tflite-int8"))[1] == ["quantize"]  # legalize-* is not float-side
    f = tmp_path / "t.toml"
    f.write_text('[own]\npasses = ["fold", "quantize:method=minmax", "dce"]\n[flat]\nstages = ["cleanup"]\n')
    user = targets.load_file(f)
    assert S.split_pipeline(user["own"]) == (["fold"], ["quantize:method=minmax", "dce"])
    with pytest.raises(EdgecError, match="no stage with the quantize pass"):
        S.split_pipeline(user["flat"])


def test_sensitivity_cli_same_json_serial_and_two_processes(tmp_path: Path) -> None:
    args = ["sensitivity", str(DIGITS), "--calib", str(NPZ), "--limit", "16", "-q"]
    assert cli([*args, "-o", str(tmp_path / "serial")]) == 0
    assert cli([*args, "-o", str(tmp_path / "pool"), "-j", "2"]) == 0
    serial = (tmp_path / "serial" / "sensitivity.json").read_bytes()
    assert serial == (tmp_path / "pool" / "sensitivity.json").read_bytes()
    assert b'"layers"' in serial and serial.count(b'"only_sqnr_db"') == 7  # 5 weighted + Add + GlobalAveragePool


def test_search_same_table_serial_and_two_processes(outlier) -> None:
    """A budget the all-int8 model misses: the search walks its a16 and float steps, two candidates at a
    time on the pool; the table, the chosen exclude list and the best model are the serial search's."""
    fm, cal, held = outlier
    runs = [MP.search(fm, "cpu-int8", cal, held, min_sqnr=40.0, budget_on="mean", jobs=jobs) for jobs in (1, 2)]
    (a, b) = runs
    assert a.table[0].sqnr_db < 40.0 and a.met, a.message
    assert len(a.table) + len(a.rejected) >= 3  # the windowed steps really ran
    assert [s.to_dict() for s in a.table] == [s.to_dict() for s in b.table]
    assert [s.to_dict() for s in a.rejected] == [s.to_dict() for s in b.rejected]
    assert a.exclude == b.exclude and a.a16 == b.a16 and a.fixed == b.fixed
    assert model_io.to_bytes(a.best_model) == model_io.to_bytes(b.best_model)
    assert sum(n.op_type == "DequantizeLinear" for n in onnx.load_from_string(model_io.to_bytes(b.best_model)).graph.node)


def test_local_metric_function_is_refused_on_processes(outlier) -> None:
    fm, cal, held = outlier

    def agreement(outputs, reference) -> float:  # a closure: cannot be pickled to a worker
        return float(np.mean([o["logits"].argmax() == r["logits"].argmax() for o, r in zip(outputs, reference)]))

    with pytest.raises(EdgecError, match="module:function"):
        S.analyze(fm, targets.get("cpu-int8").scheme, cal, held, metric=agreement, jobs=2)
