"""The Python API. The CLI is a thin layer over these functions, with the same names and defaults."""

from __future__ import annotations

import dataclasses
import importlib.resources
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import onnx_ir as ir

from edgec import data, model_io, targets
from edgec.backends import get as get_backend
from edgec.errors import EdgecError
from edgec.graph import initializer_inputs_to_constants
from edgec.manager import Manager
from edgec.pass_infra import Feed, Pass, PassContext, parse_pipeline, parse_spec
from edgec.records import Artifacts, PassRecord
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


def sample_feeds(model: ir.Model, calib: data.FeedSource | None, samples: Any, n: int,
                 preprocess: Any, warnings: list[str]) -> tuple[list[Feed], str]:
    """A few real feeds for drift: ``samples`` if given, else spread over the calibration data, else
    random noise with a loud warning."""
    if isinstance(samples, (list, tuple)):
        return [dict(f) for f in samples][:n], f"{min(n, len(samples))} given feeds"
    if samples is not None:
        src = data.load_feeds(samples, model, limit=n, preprocess=preprocess)
        assert src is not None
        if src.synthetic:
            warnings.append(data.RANDOM_WARNING)
        return src.head(n), src.description
    if calib is not None:
        step = max(1, len(calib) // n)
        picked = [calib[i] for i in range(0, len(calib), step)][:n]
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
    num_samples: int = 8,
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
) -> CompileResult:
    """Run a target's pipeline (or an explicit pass list) and emit the backend's artifacts.

    ``passes`` overrides the target's pipeline; the target still gives the numeric scheme and backend
    (``cpu-fp32`` when neither is given). With ``out_dir`` the backend writes ``model.onnx`` (or
    ``.tflite``...) plus ``report.json`` and ``report.html`` there.
    """
    options = dict(options or {})
    if report is not None and Path(report).suffix not in (".json", ".html"):
        # Checked before anything runs, so a typo never leaves a half-written -o folder behind.
        raise EdgecError(f"--report {report}: unknown report format", hint="use a .json or .html file name")
    tgt = targets.get(target or "cpu-fp32", target_file)
    pipeline = parse_pipeline(tgt.passes if passes is None else passes) if not (
        passes and all(isinstance(p, Pass) for p in passes)) else list(passes)  # type: ignore[arg-type]
    pipeline = _recovery_passes(pipeline, options)
    loaded = load_model(model, shapes)
    warnings: list[str] = []
    preprocess = options.get("preprocess")
    if isinstance(calib, (list, tuple)):  # feeds given directly from Python
        feeds_list = [dict(f) for f in calib][:calib_limit]
        calib_src: data.FeedSource | None = data.FeedSource(len(feeds_list), feeds_list.__getitem__,
                                                             f"{len(feeds_list)} given feeds")
    else:
        calib_src = data.load_feeds(calib, loaded, limit=calib_limit, preprocess=preprocess)
    if calib_src is not None and calib_src.synthetic:
        warnings.append(data.RANDOM_WARNING)
    feeds, desc = sample_feeds(loaded, calib_src, samples, num_samples, preprocess, warnings)
    ctx = PassContext(samples=feeds, calib=calib_src, scheme=tgt.scheme, options=options, target=tgt)
    backend = get_backend(tgt.backend)
    if hasattr(backend, "layer_timer"):  # the target runtime times small models itself (not ORT)
        ctx.layer_timer, ctx.layer_runtime = backend.layer_timer, backend.LAYER_RUNTIME
    ctx.warnings.extend(warnings)
    mgr = Manager(ctx, keep_going=keep_going, dump_dir=dump_dir, on_step=on_step)
    mgr.start(loaded)
    if mgr.reference is not None:
        ctx.cache["reference_outputs"] = mgr.reference
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
    rep = Report(model=name, target=tgt.name, records=mgr.records, warnings=ctx.warnings, samples=desc)
    artifacts = None
    if out_dir is not None:
        out = Path(out_dir)
        # Everything goes to a temp folder first and is moved in at the end: a failure (a full disk
        # included) leaves -o exactly as it was.
        with model_io.staged_dir(out) as stage:
            artifacts = get_backend(tgt.backend).emit(result_model, tgt, ctx, stage)
            artifacts.files = {k: out / Path(v).relative_to(stage) if Path(v).is_relative_to(stage) else v
                               for k, v in artifacts.files.items()}
            rep.artifacts = artifacts
            rep.to_json(stage / "report.json")
            rep.to_html(stage / "report.html")
    if report is not None:
        _write_report(rep, Path(report))
    return CompileResult(result_model, mgr.records, artifacts, rep, ctx)


def _recovery_passes(pipeline: list[Pass], options: dict[str, Any]) -> list[Pass]:
    """``equalize`` (before quantize) and empirical ``bias-correct`` (after it) when the options ask.

    Empirical bias correction replaces the quantize pass's own analytic one (both would correct twice).
    """
    names = [p.name for p in pipeline]
    if "quantize" not in names:
        if options.get("equalize") or options.get("bias_correct"):
            raise EdgecError("--equalize/--bias-correct need a pipeline with 'quantize' (an int8 target)")
        return pipeline
    at = names.index("quantize")
    out = list(pipeline)
    if options.get("bias_correct") and "bias-correct" not in names:
        out.insert(at + 1, parse_spec("bias-correct"))
        options.setdefault("bias_correction", False)
    if options.get("equalize") and "equalize" not in names:
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
         num_samples: int = 8, shapes: dict[str, tuple[int, ...]] | None = None) -> dict[str, Any]:
    """Structural and numeric difference between two models with the same interface."""
    from edgec import metrics, runtime

    ma, mb = load_model(a, shapes), load_model(b, shapes)
    sa, sb = metrics.summarize(ma), metrics.summarize(mb)
    ia = [v.name or "" for v in ma.graph.inputs]
    ib = [v.name or "" for v in mb.graph.inputs]
    if sorted(ia) != sorted(ib):
        raise EdgecError(f"{b}: inputs {ib} differ from {a}'s {ia}: the models cannot be compared numerically")
    warnings: list[str] = []
    calib_src = data.load_feeds(calib, ma, limit=None)
    feeds, desc = sample_feeds(ma, calib_src, None, num_samples, None, warnings)
    outs_a = runtime.run(runtime.session(ma), feeds)
    outs_b = runtime.run(runtime.session(mb), feeds)
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
