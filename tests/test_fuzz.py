"""Exact passes preserve outputs on random valid nets, and never emit invalid models.

The CI run (``test_fuzz_many_graphs``): EDGEC_FUZZ_N graphs (default 2,000) drawn from a numpy RNG with a
FRESH seed each run (printed; EDGEC_FUZZ_SEED=<seed> reproduces the run, EDGEC_FUZZ_ONLY=<i> one graph of
it). Graph i gets a plan: one exact pass (round robin over every registered exact pass), the whole
cpu-fp32 pipeline, or a random chain of 2-4 exact passes. After each step the model must pass
onnx.checker (full check) and strict shape inference; at the end ONNX Runtime (optimizations disabled,
so ORT's own fusions can neither hide nor cause a difference, one thread, in-process) must give every
output within 1e-4 relative of the original's (max|diff| <= 1e-4 * max|ref| + 1e-6, the manager's rule
for exact passes). Cheap by construction: small graphs (inputs at most 10x10, 1-4 blocks), two ORT
sessions per graph (original, result). A failure is then replayed step by step to name the pass, shrunk
(blocks dropped while it still fails) and printed as a NetSpec literal to paste into REGRESSIONS.

The slow run (``-m slow``) adds the hypothesis strategy with shrinking over thousands more. Anything
fuzzing ever found is kept in REGRESSIONS and checked on every run.
"""

from __future__ import annotations

import os
import secrets
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
CI_GRAPHS = int(os.environ.get("EDGEC_FUZZ_N", "2000"))
SLOW_EXAMPLES = int(os.environ.get("EDGEC_FUZZ_SLOW", "1200"))

_common = {"deadline": None, "print_blob": True,
           "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large]}
slow = settings(max_examples=SLOW_EXAMPLES, **_common)

# Examples counted per test function, printed at the end of the session (see the fixture below).
COUNTS: dict[str, int] = {}


def exact_pass_names() -> list[str]:
    return [name for name, cls in registry().items() if cls.exact and parse_spec(name).is_exact()]


# Exact parameterizations fuzzed besides the defaults (equalize's exact Clip rewrite).
EXTRA_EXACT = ("equalize:clip=split",)


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
    for name in [*exact_pass_names(), *EXTRA_EXACT]:
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
    """The generator itself: every block kind builds into models the checker and ORT accept."""
    rng = np.random.default_rng(0)
    seen: set[str] = set()
    for i in range(60):
        spec = fg.random_spec(rng)
        seen |= {b["kind"] for b in spec.blocks}
        proto = fg.build(spec)
        assert_valid(proto, f"generator #{i}")
        assert outputs(proto, fg.feeds(spec, 1))[0]
    assert set(fg.KINDS + fg.KINDS_ELEMENTWISE) <= seen, set(fg.KINDS + fg.KINDS_ELEMENTWISE) - seen
    ops = {n.op_type for s in REGRESSIONS for n in fg.build(s).graph.node}
    assert {"Mul", "Div", "Sub", "Clip", "Split", "Resize", "Transpose", "HardSigmoid"} <= ops | {
        n.op_type for i in range(60) for n in fg.build(fg.random_spec(np.random.default_rng([0, i]))).graph.node}


def plan_for(index: int, rng: np.random.Generator) -> list[str]:
    """Graph ``index``'s pass plan: a single exact pass (round robin), the cpu-fp32 pipeline's exact passes,
    or a random chain of 2-4 exact passes."""
    names = [*exact_pass_names(), *EXTRA_EXACT]
    slot = index % (len(names) + 2)
    if slot < len(names):
        return [names[slot]]
    if slot == len(names):
        return [t for t in targets.get("cpu-fp32").passes if parse_spec(t).is_exact()]
    return [str(n) for n in rng.choice(names, size=int(rng.integers(2, 5)), replace=True)]


def run_plan(spec: NetSpec, plan: list[str], *, every_step: bool = False) -> str | None:
    """None when ``plan`` keeps ``spec``'s model valid and its outputs; else what went wrong and where.
    ``every_step`` runs ORT after each pass (to name the culprit) instead of once at the end."""
    proto = fg.build(spec)
    feeds = fg.feeds(spec)
    ref = outputs(proto, feeds)
    model = model_io.from_proto(proto)
    ctx = _ctx(feeds)
    for i, name in enumerate(plan):
        where = f"step {i + 1} '{name}' of {plan}"
        try:
            parse_spec(name).apply(model, ctx)
            out = model_io.to_proto(model)
            assert_valid(out, where)
            if every_step or i == len(plan) - 1:
                assert_same(ref, outputs(out, feeds), where)
        except AssertionError as exc:
            return str(exc)
        except Exception as exc:  # noqa: BLE001 - a crash in a pass is a finding like any other
            return f"{where}: crashed: {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
    return None


def shrink(spec: NetSpec, plan: list[str]) -> NetSpec:
    """Drop blocks (and the head) one at a time while the plan still fails: a smaller literal to keep."""
    import dataclasses

    changed = True
    while changed:
        changed = False
        candidates = [dataclasses.replace(spec, head=None)] if spec.head is not None else []
        candidates += [dataclasses.replace(spec, blocks=spec.blocks[:i] + spec.blocks[i + 1:])
                       for i in range(len(spec.blocks)) if len(spec.blocks) > 1]
        for cand in candidates:
            try:
                fails = run_plan(cand, plan, every_step=True) is not None
            except Exception:  # noqa: BLE001 - a candidate the builder cannot make (shapes no longer chain)
                fails = False
            if fails:
                spec, changed = cand, True
                break
    return spec


def test_fuzz_many_graphs() -> None:
    seed = int(os.environ.get("EDGEC_FUZZ_SEED") or secrets.randbits(32))
    only = os.environ.get("EDGEC_FUZZ_ONLY")
    indices = [int(only)] if only else range(CI_GRAPHS)
    t0, c0 = time.perf_counter(), time.process_time()
    failures: list[str] = []
    ops: dict[str, int] = {}
    for i in indices:
        rng = np.random.default_rng([seed, i])
        spec = fg.random_spec(rng)
        plan = plan_for(i, rng)
        for b in spec.blocks:
            ops[b["kind"]] = ops.get(b["kind"], 0) + 1
        problem = run_plan(spec, plan)
        if problem is None:
            continue
        small = shrink(spec, plan)
        culprit = run_plan(small, plan, every_step=True) or problem
        failures.append(f"EDGEC_FUZZ_SEED={seed} EDGEC_FUZZ_ONLY={i}: {culprit}\n    plan={plan!r}\n    {small!r}")
        if len(failures) >= 5:
            break
    COUNTS["graphs"] = len(indices)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(f"\nfuzz: seed {seed}, {len(indices)} graphs in {wall:.1f} s wall, {cpu:.1f} s CPU; blocks {ops}")
    assert not failures, f"fuzz seed {seed} (rerun with EDGEC_FUZZ_SEED={seed}):\n" + "\n".join(failures)


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
    # Hand-picked spreads of the elementwise kinds (not findings: 5,000+ graphs over seeds 12345, 777, 4242
    # and the runs while writing this found none). Conv pair for equalize, a conv then a scalar Mul, a Div
    # chain (constant on the left) into a padded-by-SAME conv, a near-miss HardSigmoid, Split/Concat swapped,
    # Transpose around a per-channel Mul; and Div -> linear Resize -> spelled-out HardSwish.
    NetSpec(opset=13, batch=2, channels=6, height=4, width=7, seed=194687333, head=None, blocks=(
        {"kind": "conv_pair", "convs": (
            _conv(out=12, k=(2, 2), group=6, pads=(0, 0, 0, 0), auto_pad="SAME_UPPER", act="Relu",
                  const_weights=True),
            _conv(out=4, k=(2, 4), stride=2, dilation=2, group=2, pads=(0, 0, 0, 0), auto_pad="VALID",
                  act="Tanh"))},
        {"kind": "conv_affine", "conv": _conv(k=(1, 1), group=4, pads=(0, 0, 0, 0)),
         "chain": [("Mul", "scalar", "right")], "act": "Tanh"},
        {"kind": "affine", "chain": [("Div", "1c11", "right"), ("Div", "c11", "left")],
         "conv": _conv(k=(1, 1), stride=2, group=4, pads=(0, 0, 0, 0), auto_pad="SAME_LOWER", bn=True,
                       add="full")},
        {"kind": "hsigmoid", "form": "near_miss", "gate": False},
        {"kind": "split", "sizes": (2, 2), "swap": True, "conv": None},
        {"kind": "transpose", "op": "Mul", "back": True},
    )),
    NetSpec(opset=16, batch=3, channels=3, height=3, width=6, seed=1125691530, head=None, blocks=(
        {"kind": "affine", "chain": [("Div", "c11", "right")], "conv": None},
        {"kind": "resize", "mode": "linear"},
        {"kind": "hswish", "form": "clip_div", "swap": False},
    )),
]


@pytest.mark.parametrize("index", range(len(REGRESSIONS)))
def test_regression_each_pass(index: int) -> None:
    check_each_pass(REGRESSIONS[index])


@pytest.mark.parametrize("index", range(len(REGRESSIONS)))
def test_regression_pipeline(index: int) -> None:
    check_pipeline(REGRESSIONS[index])
