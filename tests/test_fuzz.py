"""Exact passes preserve outputs on random valid conv nets (hypothesis), and never emit invalid models.

For each generated net (tests/fuzz_graphs.py): the reference is ONNX Runtime with graph optimizations
DISABLED on the original model; every registered exact pass is applied alone to a fresh copy, and the
whole cpu-fp32 pipeline is applied step by step. After every step the model must pass onnx.checker
(full check) and strict shape inference, and ORT (optimizations disabled, so ORT's own fusions cannot
hide or cause a difference) must give every output within 1e-4 relative of the reference
(max|diff| <= 1e-4 * max|ref| + 1e-6, the manager's rule for exact passes).

The default run is a few hundred examples (CI, well under a minute); ``pytest -m slow`` runs
thousands. Anything fuzzing ever found is kept in REGRESSIONS and checked on every run.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings

from edgec import model_io, targets
from edgec.pass_infra import PassContext, parse_spec, registry

sys.path.insert(0, str(Path(__file__).parent))
import fuzz_graphs as fg
from fuzz_graphs import NetSpec

RTOL = 1e-4
ATOL = 1e-6
# Per test function. The default run totals 200 examples (~40 s on 2 cores); the slow run 2,400.
CI_EXAMPLES = int(os.environ.get("EDGEC_FUZZ_CI", "100"))
SLOW_EXAMPLES = int(os.environ.get("EDGEC_FUZZ_SLOW", "1200"))

_common = {"deadline": None, "print_blob": True,
           "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large]}
ci = settings(max_examples=CI_EXAMPLES, **_common)
slow = settings(max_examples=SLOW_EXAMPLES, **_common)

# Examples counted per test function, printed at the end of the session (see the fixture below).
COUNTS: dict[str, int] = {}


def exact_pass_names() -> list[str]:
    return [name for name, cls in registry().items() if cls.exact and parse_spec(name).is_exact()]


def _session(proto: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def outputs(proto: onnx.ModelProto, feeds: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    sess = _session(proto)
    names = [o.name for o in sess.get_outputs()]
    return [dict(zip(names, sess.run(names, f))) for f in feeds]


def assert_valid(proto: onnx.ModelProto, where: str) -> None:
    """onnx.checker full check plus strict, type-checked shape inference."""
    try:
        onnx.checker.check_model(proto, full_check=True)
        onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise AssertionError(f"{where}: invalid model: {str(exc).splitlines()[0]}") from None


def assert_same(ref: list[dict[str, np.ndarray]], got: list[dict[str, np.ndarray]], where: str) -> None:
    for r, g in zip(ref, got, strict=True):
        assert set(g) == set(r), f"{where}: outputs {sorted(g)} != {sorted(r)}"
        for name, a in r.items():
            b = g[name]
            assert b.shape == a.shape, f"{where}: output {name} shape {b.shape} != {a.shape}"
            err = float(np.max(np.abs(b.astype(np.float64) - a))) if a.size else 0.0
            limit = RTOL * float(np.max(np.abs(a))) + ATOL if a.size else 0.0
            assert err <= limit, f"{where}: output {name} differs by {err:.3e} (limit {limit:.3e})"


def _ctx(feeds: list[dict[str, np.ndarray]]) -> PassContext:
    return PassContext(samples=feeds, scheme={"precision": "fp32"})


def check_each_pass(spec: NetSpec) -> None:
    proto = fg.build(spec)
    feeds = fg.feeds(spec)
    ref = outputs(proto, feeds)
    for name in exact_pass_names():
        model = model_io.from_proto(proto)
        p = parse_spec(name)
        p.apply(model, _ctx(feeds))
        out = model_io.to_proto(model)
        assert_valid(out, f"pass {name}")
        assert_same(ref, outputs(out, feeds), f"pass {name}")


def check_pipeline(spec: NetSpec, target: str = "cpu-fp32") -> None:
    proto = fg.build(spec)
    feeds = fg.feeds(spec)
    ref = outputs(proto, feeds)
    model = model_io.from_proto(proto)
    ctx = _ctx(feeds)
    for spec_text in targets.get(target).passes:
        p = parse_spec(spec_text)
        if not p.is_exact():
            continue
        p.apply(model, ctx)
        out = model_io.to_proto(model)
        assert_valid(out, f"{target} after {p.name}")
        assert_same(ref, outputs(out, feeds), f"{target} after {p.name}")


def _count(key: str) -> None:
    COUNTS[key] = COUNTS.get(key, 0) + 1


@pytest.fixture(scope="module", autouse=True)
def _report_counts():
    t0, c0 = time.perf_counter(), time.process_time()
    yield
    if COUNTS:
        total = sum(COUNTS.values())
        # CPU time too: wall time on a shared machine says little.
        print(f"\nfuzz: {total} examples in {time.perf_counter() - t0:.1f} s wall, "
              f"{time.process_time() - c0:.1f} s CPU: " + ", ".join(f"{k} {v}" for k, v in sorted(COUNTS.items())))


# -- the default (CI) run ---------------------------------------------------------------------------

def test_generator_makes_valid_models() -> None:
    """The strategy itself: a fixed spread of specs build into models the checker and ORT accept."""
    spec = REGRESSIONS[0]
    proto = fg.build(spec)
    assert_valid(proto, "generator")
    assert outputs(proto, fg.feeds(spec))[0]


@ci
@given(fg.net_specs())
def test_each_exact_pass_preserves_outputs(spec: NetSpec) -> None:
    _count("each-pass")
    check_each_pass(spec)


@ci
@given(fg.net_specs())
def test_cpu_fp32_pipeline_preserves_outputs(spec: NetSpec) -> None:
    _count("pipeline")
    check_pipeline(spec)


# -- the long run -----------------------------------------------------------------------------------

@pytest.mark.slow
@slow
@given(fg.net_specs(max_blocks=7))
def test_each_exact_pass_preserves_outputs_long(spec: NetSpec) -> None:
    _count("each-pass-long")
    check_each_pass(spec)


@pytest.mark.slow
@slow
@given(fg.net_specs(max_blocks=7))
def test_cpu_fp32_pipeline_preserves_outputs_long(spec: NetSpec) -> None:
    _count("pipeline-long")
    check_pipeline(spec)


# -- regressions: every example fuzzing found, kept forever -----------------------------------------

def _conv(**kw) -> dict:
    base = {"kind": "conv", "out": 4, "k": (3, 3), "stride": 1, "dilation": 1, "group": 1, "pads": (1, 1, 1, 1),
            "auto_pad": None, "bias": True, "bn": False, "add": None, "act": "none", "const_weights": False,
            "extra_output": False}
    return {**base, **kw}


REGRESSIONS: list[NetSpec] = [
    # A hand-written spread (not a finding): conv+BN+bias-add, residual, concat, Gemm head with BN.
    NetSpec(opset=13, batch=2, channels=3, height=8, width=8, seed=1, head={
        "kind": "gemm", "pool": True, "flatten": "ShapeReshape", "units": 5, "transB": True, "alpha": 0.5,
        "beta": 0.5, "bias": "vec", "bn": True, "add": "vec"}, blocks=(
        _conv(bn=True, add="1c11", act="Relu"),
        {**_conv(out=4, bn=True, act="Relu"), "kind": "residual"},
        {"kind": "concat", "branches": [_conv(out=2, k=(1, 1), pads=(0, 0, 0, 0)), _conv(out=3, group=1)]},
    )),
]


@pytest.mark.parametrize("index", range(len(REGRESSIONS)))
def test_regression_each_pass(index: int) -> None:
    check_each_pass(REGRESSIONS[index])


@pytest.mark.parametrize("index", range(len(REGRESSIONS)))
def test_regression_pipeline(index: int) -> None:
    check_pipeline(REGRESSIONS[index])
