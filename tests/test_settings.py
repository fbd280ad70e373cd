"""User settings -> typed places (compiler/settings.py): CLI flags and ``--set`` keys reach the pass field,
BackendOptions or SchemeOverrides that owns them; a key nobody owns is a one-line error with exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import edgec
from edgec import settings
from edgec.cli import main
from edgec.cli_args import compile_options, parser
from edgec.errors import EXIT_USER, EdgecError
from edgec.pass_infra import parse_pipeline

PIPELINE = ["prune:channels:0.3", "depthwise", "quantize:method=entropy:exclude=b", "bias-correct", "qdq-compact"]


def _configured(argv: list[str]):
    args = parser().parse_args(["compile", "m.onnx", *argv])
    user = settings.resolve(compile_options(args))
    return user, {p.name: p for p in user.configure(parse_pipeline(PIPELINE))}


def test_cli_flags_reach_the_pass_fields():
    user, p = _configured(["--exclude", "a,c", "--calib-method", "minmax", "--fallback", "auto", "--per-tensor",
                           "--prune-skip", "first", "--no-reconstruct", "--dw-rank", "3", "--dw-layers", "conv*",
                           "--dw-latency", "--io", "int8", "--keep-nchw-io", "--no-engine", "--trt-version", "8.6.2",
                           "--bias-correct", "--set", "weight_bits=8", "--set", "bench_runs=7",
                           "--set", "keep_names=true", "--set", "reconstruct_samples=5", "--set", "a16=n1+n2",
                           "--preprocess", "imagenet"])
    q = p["quantize"]
    assert q.method == "entropy"  # the pipeline's own parameter wins over --calib-method
    assert q.exclude == ["b", "a", "c"]  # list settings add to the pass's own list
    assert q.fallback == "auto" and q.a16 == ["n1", "n2"]
    assert p["prune"].skip == ["first"] and p["prune"].reconstruct is False and p["prune"].reconstruct_samples == 5
    dw = p["depthwise"]
    assert dw.rank == 3 and dw.layers == ("conv*",) and dw.latency is True and dw.max_error is None
    assert p["qdq-compact"].keep_names is True
    assert user.backend == edgec.context.BackendOptions(bench_runs=7, trt_version="8.6.2", build_engine=False,
                                                        io="int8", keep_nchw_io=True, keep_names=True,
                                                        fallback="auto")
    assert user.overrides == edgec.context.SchemeOverrides(weight_bits=8, per_channel=False)
    assert user.driver == settings.DriverOptions(preprocess="imagenet", bias_correct=True)


def test_configure_copies_and_leaves_unset_fields():
    pipeline = parse_pipeline(PIPELINE)
    user = settings.resolve({"bias_correction": False, "dw_max_error": 25})  # the earlier key name still works
    done = {p.name: p for p in user.configure(pipeline)}
    assert done["quantize"].analytic_bias_correction is False and done["depthwise"].max_error == 25.0
    assert pipeline[2].analytic_bias_correction is None and pipeline[1].max_error is None  # originals untouched
    auto = settings.resolve({"analytic_bias_correction": "auto"}).configure(pipeline)
    assert auto[2].analytic_bias_correction is None


@pytest.mark.parametrize("options, words", [
    ({"no_such_key": 1}, ("no_such_key", "no pass or backend")),
    ({"bench_runs": "many"}, ("bench_runs", "number")),
    ({"weight_bits": 7.5}, ("weight_bits", "whole number")),
    ({"adaround": "maybe"}, ("adaround", "true or false")),
    ({"trt_profile": "x=1,3"}, ("trt_profile", "table")),
])
def test_bad_settings_are_one_line_errors(options, words):
    with pytest.raises(EdgecError) as err:
        settings.resolve(options)
    assert all(w in str(err.value) for w in words) and "\n" not in str(err.value)


def test_readme_lists_every_setting():
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    missing = [k for k in [*settings.KEYS, *settings.ALIASES] if f"`{k}`" not in text]
    assert not missing, f"README's Settings table lacks {missing}"


def test_unknown_set_key_exits_2_before_any_work(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["compile", "--example", "-t", "cpu-int8", "--set", "bench_run=5", "-o", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == EXIT_USER == 2
    assert len(err.splitlines()) == 1 and "bench_run" in err and "no pass or backend" in err, err
    assert not out.exists()  # nothing half-written


def test_flags_reach_the_compiled_pipeline(tmp_path):
    out = tmp_path / "out"
    assert main(["compile", "--example", "-t", "cpu-int8", "-q", "--calib-method", "minmax", "--exclude",
                 "HardSwish", "--set", "bench_runs=0", "--set", "keep_names=true", "-o", str(out)]) == 0
    rep = json.loads((out / "report.json").read_text())
    rec = {r["name"]: r for r in rep["passes"]}
    assert rec["quantize"]["params"]["method"] == "minmax" and rec["quantize"]["details"]["method"] == "minmax"
    assert rec["quantize"]["params"]["exclude"] == ["HardSwish"]
    assert rec["qdq-compact"]["details"]["skipped"] == "keep_names=true" and not rec["qdq-compact"]["changed"]
    assert "latency" not in rep["backend"]["figures"]  # bench_runs=0 reached the ORT backend
