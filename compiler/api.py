"""The Python API. The CLI is a thin layer over these functions, with the same names and defaults."""

from __future__ import annotations

import copy
import dataclasses
import importlib.resources
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import onnx_ir as ir

from edgec import data, model_io, outputs, settings, targets
from edgec.backends import get as get_backend
from edgec.errors import EdgecError
from edgec.graph import initializer_inputs_to_constants
from edgec.manager import Manager
from edgec.pass_infra import Feed, Pass, PassContext, parse_pipeline, parse_spec
from edgec.records import COLLAPSE_DB, Artifacts, Drift, PassRecord
from edgec.report import Report


@dataclasses.dataclass
class CompileResult:
    model: ir.Model
    records: list[PassRecord]
    artifacts: Artifacts | None
    report: Report
    context: PassContext


def example_paths() -> tuple[Path, Path]:
    """The bundled example: a small CNN with BatchNorm trained on scikit-learn's digits, and real samples."""
    root = importlib.resources.files("edgec").joinpath("assets")
    return Path(str(root.joinpath("digits.onnx"))), Path(str(root.joinpath("digits_samples.npz")))


def load_model(model: str | os.PathLike | ir.Model, shapes: dict[str, tuple[int, ...]] | None = None, *,
               allow_custom_ops: bool = False) -> ir.Model:
    if isinstance(model, ir.Model):
        initializer_inputs_to_constants(model)
        if shapes:
            model_io.pin_shapes(model, shapes)
        return model
    loaded = model_io.load(model, allow_custom_ops=allow_custom_ops)
    if shapes:
        model_io.pin_shapes(loaded, model_io.resolve_star_shape(loaded, dict(shapes)), source=str(model))
    return loaded


#: Every HOLD_EVERY-th sample of the user's one data set (positions 3, 7, 11, ...) is held aside for
#: scoring: interleaved, so a folder sorted by kind (photos, then text) is held aside in its proportions.
HOLD_EVERY = 4
#: Held-aside samples scored at most by default (the manager's time and memory budgets may stop sooner).
EVAL_CAP = 256
#: Exact passes are checked on this many calibration samples: exactness needs few inputs, not many.
CHECK_SAMPLES = 8
BUDGET_ON = ("mean", "p10", "min")


@dataclasses.dataclass
class SampleSets:
    """The user's data, split: what calibrates, what checks exactness, what scores (held aside)."""

    calib: data.FeedSource | None  # what calibration sees (None: the passes fall back to ``checks``)
    checks: list[Feed]  # a few calibration samples: exactness checks, and passes that look at outputs
    held: Sequence[Feed] | None  # the held-aside set, lazy (None: drift is scored on ``checks``)
    held_indices: list[int] | None  # positions of ``held`` in the user's data
    how: str  # where ``held`` comes from, for a person
    apart: bool = True  # False when ``held`` is the calibration data itself (given as both)


def split_samples(model: ir.Model, calib: Any, samples: Any, *, calib_limit: int | None = None,
                  preprocess: Any = None, warnings: list[str]) -> SampleSets:
    """Calibration, check and held-aside feeds from ``--calib`` and ``--samples``/``--eval``.

    One set given (``calib`` or ``samples``): every HOLD_EVERY-th sample is held aside and never reaches
    calibration. Both given: ``calib`` calibrates, ``samples`` scores. Random data is not split (it is
    noise either way, and says so loudly)."""
    cal_src = _source(calib, model, calib_limit if _is_random(calib) else None, preprocess)
    held_src = _source(samples, model, None, preprocess)
    for src in (cal_src, held_src):
        if src is not None and src.synthetic:
            warnings.append(data.RANDOM_WARNING)
    if cal_src is None and held_src is None:
        warnings.append("no --calib/--samples given: drift is measured on RANDOM inputs, not real data")
        rnd = data.random_feeds(model, 4)
        return SampleSets(None, rnd.head(4), None, None, rnd.description)
    if cal_src is not None and held_src is not None:
        cal = cal_src[:calib_limit] if calib_limit is not None else cal_src
        same = samples is calib or (isinstance(calib, (str, os.PathLike)) and isinstance(samples, (str, os.PathLike))
                                    and Path(calib).resolve() == Path(samples).resolve())
        if same:
            warnings.append("--samples is the --calib data: the figures are scored on samples calibration saw")
        return SampleSets(cal, _spread(cal, CHECK_SAMPLES), held_src, list(range(len(held_src))),
                          held_src.description, apart=not same)
    one = cal_src if cal_src is not None else held_src
    assert one is not None
    if one.synthetic or len(one) < HOLD_EVERY:
        if not one.synthetic:
            warnings.append(f"{one.description}: too few samples to hold some aside; drift is scored on "
                            "samples calibration also saw (give more, or a separate --eval set)")
        cal = one[:calib_limit] if calib_limit is not None else one
        checks = _spread(cal, CHECK_SAMPLES)
        return SampleSets(cal if cal_src is not None else None, checks, None, None, one.description)
    held_idx = [i for i in range(len(one)) if i % HOLD_EVERY == HOLD_EVERY - 1]
    cal_idx = [i for i in range(len(one)) if i % HOLD_EVERY != HOLD_EVERY - 1][:calib_limit]
    cal = _subset(one, cal_idx, f"{len(cal_idx)} of {one.description}")
    held = _subset(one, held_idx, f"every {HOLD_EVERY}th of {one.description}")
    # Given as --samples with no --calib: the passes calibrate on the check samples (a loud warning from
    # PassContext), drawn from the part that is not held aside.
    return SampleSets(cal if cal_src is not None else None, _spread(cal, CHECK_SAMPLES), held, held_idx,
                      f"every {HOLD_EVERY}th sample of {one.description}")


def _is_random(spec: Any) -> bool:
    return isinstance(spec, str) and spec == "random"


def _source(spec: Any, model: ir.Model, limit: int | None, preprocess: Any) -> data.FeedSource | None:
    if isinstance(spec, (list, tuple)):  # feeds given directly from Python
        feeds = [dict(f) for f in spec]
        return data.FeedSource(len(feeds), feeds.__getitem__, f"{len(feeds)} given feeds")
    return data.load_feeds(spec, model, limit=limit, preprocess=preprocess)


def _subset(src: data.FeedSource, idx: list[int], description: str) -> data.FeedSource:
    return data.FeedSource(len(idx), lambda i: src[idx[i]], description, src.synthetic)


def _spread(src: Sequence[Feed], n: int) -> list[Feed]:
    step = max(1, len(src) // n)
    return [src[i] for i in range(0, len(src), step)][:n]


def sample_feeds(model: ir.Model, calib: data.FeedSource | None, samples: Any, n: int,
                 preprocess: Any, warnings: list[str]) -> tuple[list[Feed], str]:
    """A few real feeds: ``samples`` if given, else spread over the calibration data, else random noise
    with a loud warning (``edgec diff`` and callers that need no held-aside set)."""
    if isinstance(samples, (list, tuple)):
        return [dict(f) for f in samples][:n], f"{min(n, len(samples))} given feeds"
    if samples is not None:
        src = data.load_feeds(samples, model, limit=n, preprocess=preprocess)
        assert src is not None
        if src.synthetic:
            warnings.append(data.RANDOM_WARNING)
        return src.head(n), src.description
    if calib is not None:
        picked = _spread(calib, n)
        return picked, f"{len(picked)} of {calib.description}"
    warnings.append("no --calib/--samples given: drift is measured on RANDOM inputs, not real data")
    src = data.random_feeds(model, min(n, 4))
    return src.head(n), src.description


def compile(
    model: str | os.PathLike | ir.Model,
    *,
    target: str | None = None,
    passes: str | Sequence[str] | Sequence[Pass] | None = None,
    calib: str | os.PathLike | Sequence[Feed] | None = None,
    samples: str | os.PathLike | Sequence[Feed] | None = None,
    num_samples: int | None = None,
    calib_limit: int | None = None,
    out_dir: str | os.PathLike | None = None,
    shapes: dict[str, tuple[int, ...]] | None = None,
    target_file: str | os.PathLike | None = None,
    keep_going: bool = False,
    dump_dir: str | os.PathLike | None = None,
    options: dict[str, Any] | None = None,
    report: str | os.PathLike | None = None,
    on_step: Callable[[str], None] | None = None,
    progress: bool = False,
    min_sqnr: float | None = None,
    budget_on: str = "p10",
    add: Sequence[str] = (),
) -> CompileResult:
    """Run a target's pipeline (or an explicit pass list) and emit the backend's artifacts.

    ``passes`` overrides the target's pipeline; ``add`` inserts passes (specs) into it, each at the end of
    the stage its class names (``edgec targets`` shows where); the target still gives the numeric scheme and backend
    (``cpu-fp32`` when neither is given). With ``out_dir`` the backend writes ``model.onnx`` (or
    ``.tflite``...) plus ``report.json`` and ``report.html`` there.

    Drift is scored on samples calibration never saw: ``samples`` (the CLI's ``--samples``/``--eval``)
    when given, else every 4th sample of ``calib`` held aside (see ``split_samples``); ``num_samples``
    caps how many are scored (default EVAL_CAP, within the manager's time budget). ``min_sqnr`` checks the
    artifact's held-aside SQNR by ``budget_on``: ``mean`` (the aggregate over all samples), ``p10`` (the
    10th-percentile sample, the default: a collapsing tenth of the inputs fails it, one odd input does
    not) or ``min`` (the worst sample).

    ``options`` are the user's settings by key, as ``--set KEY=VALUE`` takes them (``{"exclude": [...],
    "bench_runs": 0}``): edgec.settings checks them and puts each in its pass field, ``BackendOptions``
    or ``SchemeOverrides``; an unknown key is an EdgecError before anything runs.
    """
    user = settings.resolve(options)  # every key checked (one line naming an unknown one) before any work
    if budget_on not in BUDGET_ON:
        raise EdgecError(f"--budget-on {budget_on}: unknown", hint="use mean, p10 or min")
    if num_samples is not None and num_samples < 1:
        raise EdgecError(f"--num-samples {num_samples}: must be at least 1", hint="e.g. --num-samples 64")
    if report is not None and Path(report).suffix not in (".json", ".html"):
        # Checked before anything runs, so a typo never leaves a half-written -o folder behind.
        raise EdgecError(f"--report {report}: unknown report format", hint="use a .json or .html file name")
    tgt = targets.get(target or "cpu-fp32", target_file)
    if add and passes is not None:
        raise EdgecError("--add inserts passes into a target's pipeline; with --passes, list them there")
    base = targets.with_added(tgt, add) if add else tgt.passes
    pipeline = parse_pipeline(base if passes is None else passes) if not (
        passes and all(isinstance(p, Pass) for p in passes)) else list(passes)  # type: ignore[arg-type]
    pipeline = _recovery_passes(pipeline, user.driver)
    loaded = load_model(model, shapes)
    warnings: list[str] = []
    if passes is not None:
        pipeline = _required_legalize(tgt, pipeline, warnings)
    pipeline = user.configure(pipeline)  # the user's settings in the passes' fields
    sets = split_samples(loaded, calib, samples, calib_limit=calib_limit, preprocess=user.driver.preprocess,
                         warnings=warnings)
    calib_src = sets.calib
    ctx = user.context(samples=sets.checks, calib=calib_src, scheme=tgt.scheme, target=tgt)
    backend = get_backend(tgt.backend)
    if hasattr(backend, "layer_timer"):  # the target runtime times small models itself (not ORT)
        ctx.layer_timer, ctx.layer_runtime = backend.layer_timer, backend.LAYER_RUNTIME
    ctx.warnings.extend(warnings)
    mgr = Manager(ctx, keep_going=keep_going, dump_dir=dump_dir, on_step=on_step, eval_feeds=sets.held,
                  eval_indices=sets.held_indices, eval_cap=num_samples or EVAL_CAP)
    mgr.start(loaded)
    if mgr.reference is not None:
        ctx.reference_outputs = mgr.reference
    close = None
    if progress and calib_src is not None:
        from edgec.calib import rich_progress

        update, close = rich_progress()
        ctx.progress = lambda stage, done: update(done, len(calib_src))
    try:
        result_model = mgr.run(loaded, pipeline)
    finally:
        if close is not None:
            close()
    name = str(model) if not isinstance(model, ir.Model) else (model.graph.name or "model")
    held = _held_aside(sets, mgr, calib_src)
    rep = Report(model=name, target=tgt.name, records=mgr.records, warnings=ctx.warnings, samples=held["line"],
                 extra={"held_aside": held})
    artifacts = None
    if out_dir is not None:
        out = Path(out_dir)
        # Everything goes to a temp folder first and is moved in at the end: a failure (a full disk
        # included) leaves -o exactly as it was.
        with model_io.staged_dir(out) as stage:
            ctx.final_out_dir = out  # what an earlier run left (the TensorRT timing cache) is there
            artifacts = get_backend(tgt.backend).emit(result_model, tgt, ctx, stage)
            artifacts.files = {k: out / Path(v).relative_to(stage) if Path(v).is_relative_to(stage) else v
                               for k, v in artifacts.files.items()}
            # Files an earlier run wrote and this one does not (its model.engine, calibration.cache...) go,
            # so nothing stale sits beside the new model; the TensorRT timing cache is a cache, it stays.
            written = outputs.written_files(stage, ("report.json", "report.html"))
            stale = outputs.stale_files(out, written, keep=("timing.cache",) if tgt.backend == "tensorrt" else ())
            if stale:
                artifacts.notes.append("removed from an earlier run in -o: " + ", ".join(p.name for p in stale))
            rep.extra["files_written"] = written
            rep.artifacts = artifacts
            _judge(rep, min_sqnr, budget_on)
            rep.to_json(stage / "report.json")
            rep.to_html(stage / "report.html")
        outputs.remove(stale)
    else:
        _judge(rep, min_sqnr, budget_on)
    if report is not None:
        _write_report(rep, Path(report))
    result = CompileResult(result_model, mgr.records, artifacts, rep, ctx)
    engine = artifacts.figures.get("engine") if artifacts is not None else None
    if isinstance(engine, dict) and engine.get("failed"):
        from edgec.backends.tensorrt_engine import EngineBuildFailed

        raise EngineBuildFailed(str(engine.get("reason")), result)
    return result


def _held_aside(sets: SampleSets, mgr: Manager, calib_src: data.FeedSource | None) -> dict[str, Any]:
    """What the figures were scored on, for the terminal line, report.json and report.html."""
    n_cal = len(calib_src) if calib_src is not None else 0
    if sets.held is None:
        line = (f"scored on {len(mgr.eval_feeds)} samples ({sets.how}); none held aside: the figures include "
                "samples calibration saw" if calib_src is not None else f"scored on {sets.how}")
        return {"calibrated_on": n_cal, "held_aside": 0, "scored": len(mgr.eval_feeds), "indices": [],
                "source": sets.how, "line": line}
    scored = len(mgr.eval_feeds)
    of = f"{scored} of " if mgr.eval_truncated else ""
    calibrated = any(not r.exact for r in mgr.records)  # a float pipeline calibrates nothing: say nothing
    cal = "" if not calibrated else f"calibrated on {n_cal}, " if calib_src is not None else \
        "calibrated on the check samples, "
    which = f"{len(sets.held)} held aside" if sets.apart else f"the same {len(sets.held)} samples"
    line = f"{cal}scored on {of}{which} ({sets.how})"
    if mgr.eval_truncated:
        line += f": stopped by {mgr.eval_truncated} (--num-samples sets the cap)"
    return {"calibrated_on": n_cal, "held_aside": len(sets.held) if sets.apart else 0, "scored": scored,
            "indices": mgr.eval_indices,
            "source": sets.how, "truncated_by": mgr.eval_truncated, "checks": len(sets.checks), "line": line}


def final_drift(rep: Report) -> tuple[str, Drift] | None:
    """The figure a user reads: the artifact's drift in its runtime, else the last lossy pass's."""
    figs = rep.artifacts.figures if rep.artifacts else {}
    d = figs.get("drift")
    if isinstance(d, dict) and "sqnr_db" in d:
        names = {f.name for f in dataclasses.fields(Drift)}
        return "the artifact", Drift(**{k: v for k, v in d.items() if k in names})
    lossy = [r for r in rep.records if not r.exact and r.drift is not None and r.status == "ok"]
    return (f"pass '{lossy[-1].name}'", lossy[-1].drift) if lossy and lossy[-1].drift else None


def _judge(rep: Report, min_sqnr: float | None, budget_on: str) -> None:
    """Warn about collapsed held-aside inputs, and check ``min_sqnr`` on the ``budget_on`` figure."""
    found = final_drift(rep)
    if found is None:
        return
    who, d = found
    warning = collapse_warning(who, d)
    if warning:
        rep.warnings.append(warning)
    if min_sqnr is not None:
        figure = d.budget_figure(budget_on)
        met = figure >= min_sqnr
        rep.extra["budget"] = {"min_sqnr": min_sqnr, "on": budget_on, "figure": figure, "met": met}
        if not met:
            rep.warnings.append(f"{who}: held-aside SQNR ({budget_on}) {figure:.1f} dB is below the budget "
                                f"--min-sqnr {min_sqnr:g}")


def collapse_warning(who: str, d: Drift) -> str:
    """One line naming how many inputs collapsed and the worst one; "" when none did."""
    bad = d.collapsed()
    if not bad:
        return ""
    per = dict(zip(d.indices(), d.per_sample_sqnr))
    worst = min(bad, key=lambda i: per.get(i, math.inf))
    flips = len(d.confident_flips)
    return (f"{who}: {len(bad)} of {d.samples} held-aside inputs collapse (SQNR < {COLLAPSE_DB:g} dB"
            f"{f', {flips} confident top-1 flips' if flips else ''}); worst is sample {worst} at "
            f"{per.get(worst, math.nan):.1f} dB")


def _required_legalize(tgt: targets.Target, pipeline: list[Pass], warnings: list[str]) -> list[Pass]:
    """``--passes`` without a legalize pass the backend needs (its writer maps only the one-op forms;
    the module says so with ``LEGALIZE_REQUIRED``): appended last, checked and recorded like the others."""
    if not getattr(get_backend(tgt.backend), "LEGALIZE_REQUIRED", False):
        return pipeline
    have = {p.name for p in pipeline}
    missing = [p for stage, ps in tgt.stages if stage.startswith("legalize-") for p in ps if p not in have]
    if not missing:
        return pipeline
    warnings.append(f"--passes left out {', '.join(missing)}, which the {tgt.backend} backend needs: "
                    "appended at the end (checked and recorded like the others)")
    return pipeline + parse_pipeline(missing)


def _recovery_passes(pipeline: list[Pass], driver: settings.DriverOptions) -> list[Pass]:
    """``equalize`` (before quantize) and empirical ``bias-correct`` (after it) when the settings ask.

    Empirical bias correction replaces the quantize pass's own analytic one (both would correct twice).
    """
    names = [p.name for p in pipeline]
    if "quantize" not in names:
        if driver.equalize or driver.bias_correct:
            raise EdgecError("--equalize/--bias-correct need a pipeline with 'quantize' (an int8 target)")
        return pipeline
    at = names.index("quantize")
    out = list(pipeline)
    if driver.bias_correct:
        if "bias-correct" not in names:
            out.insert(at + 1, parse_spec("bias-correct"))
        quantize = copy.copy(out[at])
        quantize.analytic_bias_correction = False  # type: ignore[attr-defined]
        out[at] = quantize
    if driver.equalize and "equalize" not in names:
        out.insert(at, parse_spec("equalize:clip=split"))
    return out


def _write_report(rep: Report, path: Path) -> None:
    # The suffix was checked before the pipeline ran (compile), so a typo costs no work.
    if path.suffix == ".html":
        rep.to_html(path)
    else:
        rep.to_json(path)


def inspect(model: str | os.PathLike | ir.Model, shapes: dict[str, tuple[int, ...]] | None = None) -> dict[str, Any]:
    """Op histogram, params, MACs, bytes, inputs/outputs and opsets of a model."""
    from edgec import metrics

    m = load_model(model, shapes, allow_custom_ops=True)  # inspecting needs no runtime
    s = metrics.summarize(m)

    def io(values: Sequence[ir.Value]) -> list[dict[str, Any]]:
        return [{"name": v.name, "dtype": str(v.dtype.name if v.dtype is not None else "?"),
                 "shape": [d if isinstance(d, int) else str(d) for d in (v.shape or [])]} for v in values]

    return {"file": str(model) if not isinstance(model, ir.Model) else None, "nodes": s.nodes, "ops": s.ops,
            "params": s.params, "macs": s.macs, "bytes": s.bytes,
            "opsets": dict(m.opset_imports), "ir_version": m.ir_version, "producer": m.producer_name,
            "inputs": io(m.graph.inputs), "outputs": io(m.graph.outputs),
            "initializers": len(m.graph.initializers)}


def diff(a: str | os.PathLike, b: str | os.PathLike, *, calib: str | os.PathLike | None = None,
         num_samples: int | None = None, shapes: dict[str, tuple[int, ...]] | None = None) -> dict[str, Any]:
    """Structural and numeric difference between two models with the same interface.

    The numbers are over every sample of ``calib`` (the CLI's ``--samples``), up to ``num_samples``
    (default EVAL_CAP), with the same per-sample spread compile reports."""
    from edgec import metrics, runtime
    from edgec.manager import run_batched

    ma, mb = load_model(a, shapes), load_model(b, shapes)
    sa, sb = metrics.summarize(ma), metrics.summarize(mb)
    ia = [v.name or "" for v in ma.graph.inputs]
    ib = [v.name or "" for v in mb.graph.inputs]
    if sorted(ia) != sorted(ib):
        raise EdgecError(f"{b}: inputs {ib} differ from {a}'s {ia}: the models cannot be compared numerically",
                         hint="diff compares two versions of one model (same input names)")
    warnings: list[str] = []
    calib_src = data.load_feeds(calib, ma, limit=None)
    n = num_samples or EVAL_CAP
    if calib_src is not None:
        feeds, desc = calib_src.head(n), f"{min(len(calib_src), n)} of {calib_src.description}"
    else:
        feeds, desc = sample_feeds(ma, None, None, n, None, warnings)
    outs_a = run_batched(runtime.session(ma), feeds)
    outs_b = run_batched(runtime.session(mb), feeds)
    oa, ob = [o.name for o in ma.graph.outputs], [o.name for o in mb.graph.outputs]
    if oa != ob:
        # Same count: compare by position, renaming b's outputs to a's.
        if len(oa) != len(ob):
            raise EdgecError(f"{b}: has {len(ob)} outputs, {a} has {len(oa)}")
        outs_b = [{na: o[nb] for na, nb in zip(oa, ob)} for o in outs_b]
    d = metrics.drift(outs_a, outs_b)
    ops = {op: (sa.ops.get(op, 0), sb.ops.get(op, 0)) for op in sorted(set(sa.ops) | set(sb.ops))
           if sa.ops.get(op, 0) != sb.ops.get(op, 0)}
    return {"a": str(a), "b": str(b), "summary_a": sa.to_dict(), "summary_b": sb.to_dict(), "ops_changed": ops,
            "drift": d.to_dict(), "samples": desc, "warnings": warnings}
