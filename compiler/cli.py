"""Command line: a thin layer over the Python API (edgec.api). User mistakes exit 2 with one line."""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path
from typing import Any

from edgec import calib
from edgec.errors import EXIT_INTERNAL, EXIT_USER, BudgetNotMet, EdgecError
from edgec.explore import add_parser as explore_parser
from edgec.explore import run as cmd_explore


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shape", action="append", metavar="NAME=D,D,..",
                   help="pin an input's dims, e.g. x=1,3,224,224 (repeatable)")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    p.add_argument("-v", "--verbose", action="store_true", help="show tracebacks")


def _add_trt(p: Any, compile_flags: bool = False) -> None:
    p.add_argument("--min-shape", action="append", metavar="NAME=D,..", help="TensorRT profile: smallest shape")
    p.add_argument("--opt-shape", action="append", metavar="NAME=D,..", help="TensorRT profile: tuned shape")
    p.add_argument("--max-shape", action="append", metavar="NAME=D,..", help="TensorRT profile: largest shape")
    p.add_argument("--trt-version", help="TensorRT version the model is for (default 10.3.0, JetPack 6.1/6.2; 11.x: strongly typed)")
    if compile_flags:
        p.add_argument("--no-engine", action="store_true", help="do not try to build a TensorRT engine")


def _trt_profile(args: argparse.Namespace) -> dict[str, Any] | None:
    if not (args.min_shape or args.opt_shape or args.max_shape):
        return None
    from edgec.backends.tensorrt import parse_profile

    return parse_profile(args.min_shape, args.opt_shape, args.max_shape)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="edgec", description="graph-level ONNX optimization compiler")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    c = sub.add_parser("compile", help="run a target's pipeline (or --passes) and emit artifacts")
    c.add_argument("model", nargs="?", help="an .onnx file (omit with --example)")
    c.add_argument("--example", action="store_true", help="compile the bundled digits model with its real samples")
    c.add_argument("-t", "--target", help="target name (`edgec targets`); default cpu-fp32")
    c.add_argument("--target-file", help="a TOML file defining more targets")
    c.add_argument("-p", "--passes", help="comma-separated pass list overriding the target's, e.g. fold,fuse-bn,dce")
    c.add_argument("--add", action="append", default=[], metavar="PASS[:ARGS]",
                   help="insert a pass into the target's pipeline at its stage, e.g. --add depthwise (repeatable)")
    c.add_argument("--calib", help="calibration/sample data: image folder, .npz/.npy, module:function, or random")
    c.add_argument("--samples", "--eval", dest="samples",
                   help="held-aside inputs drift is scored on (default: every 4th sample of --calib, which "
                        "calibration then never sees)")
    c.add_argument("--num-samples", type=int,
                   help="score on at most this many held-aside samples (default: all, up to 256, within a "
                        "5 s budget of float runs; the count is printed)")
    c.add_argument("--calib-limit", type=int, help="use at most this many calibration samples")
    c.add_argument("--calib-method", choices=list(calib.METHODS),
                   help="activation range method for quantize")
    c.add_argument("--preprocess", help="image preprocessing preset or spec (see docs)")
    c.add_argument("--exclude", action="append", help="node names or op types to keep in float (repeatable)")
    c.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                   help="pass option, e.g. --set bench_runs=50 (repeatable)")
    q = c.add_argument_group("quantization (int8 targets)")
    q.add_argument("--per-channel", dest="per_channel", action="store_true", default=None,
                   help="per-channel weight scales (the int8 targets' default)")
    q.add_argument("--per-tensor", dest="per_channel", action="store_false", help="one weight scale per tensor")
    q.add_argument("--fallback", choices=["auto", "off"], help="auto: keep float where int8 is not faster")
    q.add_argument("--bias-correct", action="store_true",
                   help="empirical bias correction after quantizing (replaces quantize's analytic one)")
    q.add_argument("--equalize", action="store_true", help="cross-layer equalization before quantizing")
    q.add_argument("--metric", help="mixed precision metric: sqnr, top1 or module:function")
    q.add_argument("--max-drop", type=float, help="mixed precision: largest allowed top-1 drop (points)")
    q.add_argument("--min-sqnr", type=float, help="mixed precision: lowest allowed output SQNR (dB)")
    q.add_argument("--budget-on", choices=["mean", "p10", "min"], default="p10",
                   help="which held-aside SQNR --min-sqnr bounds: the aggregate over all samples (mean), the "
                        "10th-percentile sample (p10, default: a collapsing tenth of the inputs fails it, one "
                        "odd input does not) or the worst sample (min)")
    q.add_argument("--max-float", type=int, help="mixed precision: keep at most this many layers float")
    _add_executor(q, "the mixed-precision search's candidates")
    pr = c.add_argument_group("pruning and depthwise replacement")
    pr.add_argument("--prune-skip", action="append", help="node names the prune pass leaves alone")
    pr.add_argument("--no-reconstruct", action="store_true", help="prune without least-squares reconstruction")
    pr.add_argument("--dw-rank", type=int, help="depthwise: channel multiplier r; 0 = smallest meeting the floor, >= K*K = full rank (exact)")
    pr.add_argument("--dw-max-error", type=float, help="depthwise: per-layer SQNR floor in dB")
    pr.add_argument("--dw-min-macs", type=float, help="depthwise: only layers with at least this fraction of the MACs (0.02 = 2%%)")
    pr.add_argument("--dw-layers", action="append", help="depthwise: node name patterns to consider")
    pr.add_argument("--dw-latency", action="store_true",
                    help="depthwise: keep a replacement only if ONNX Runtime runs the pair faster than the conv")
    tf = c.add_argument_group("TFLite")
    tf.add_argument("--io", choices=["int8", "float"], help="tflite-int8: quantized or float model inputs/outputs")
    tf.add_argument("--keep-nchw-io", action="store_true", help="tflite: keep ONNX (NCHW) layout at the boundary")
    _add_trt(c.add_argument_group("TensorRT"), compile_flags=True)
    c.add_argument("-o", "--out", help="output folder for the artifacts and report.json/report.html")
    c.add_argument("--report", help="also write the report to this .json or .html file")
    c.add_argument("--dump-dir", help="write the model after every pass into this folder")
    c.add_argument("--keep-going", action="store_true", help="roll back a failing pass and continue")
    _add_common(c)

    i = sub.add_parser("inspect", help="ops, params, MACs, size, inputs/outputs of a model")
    i.add_argument("model")
    i.add_argument("--json", action="store_true", help="print JSON")
    _add_common(i)

    d = sub.add_parser("diff", help="node-level and numeric difference between two models, or one pass of a compile")
    d.add_argument("a", help="an .onnx file, or a compile's report.json (with --pass)")
    d.add_argument("b", nargs="?", help="the second .onnx file")
    d.add_argument("--pass", dest="pass_name", help="with a report.json: show this pass's node-level diff")
    d.add_argument("--html", help="also write the before/after drawing page to this .html file")
    d.add_argument("--samples", "--calib", dest="calib",
                   help="inputs to compare on (image folder, .npz, module:function); default random")
    d.add_argument("--num-samples", type=int, help="compare on at most this many of them (default all, up to 256)")
    d.add_argument("--json", action="store_true")
    _add_common(d)

    explore_parser(sub)

    sub.add_parser("passes", help="list the registered passes")
    sub.add_parser("targets", help="list the targets")

    b = sub.add_parser("bench", help="time a model in ONNX Runtime (median, 2 threads)")
    b.add_argument("model")
    b.add_argument("--runs", type=int, default=50)
    b.add_argument("--threads", type=int, default=2)
    b.add_argument("--optimization", choices=["disable", "basic", "extended", "all"], default="all")
    b.add_argument("--calib", help="input data (default random)")
    _add_common(b)

    qr = sub.add_parser("quant-report", help="per-layer quantization SQNR of a model: which layers hurt")
    qr.add_argument("model")
    qr.add_argument("--calib", help="calibration data (image folder, .npz, module:function, random)")
    qr.add_argument("-t", "--target", default="cpu-int8")
    qr.add_argument("--calib-method", choices=list(calib.METHODS))
    qr.add_argument("--calib-limit", type=int)
    qr.add_argument("--exclude", action="append")
    qr.add_argument("--preprocess")
    qr.add_argument("--top", type=int, default=20, help="rows to print")
    qr.add_argument("-o", "--out", help="write the report to this .json or .html file")
    _add_common(qr)

    se = sub.add_parser("sensitivity", help="rank layers by how much quantizing them hurts the output")
    se.add_argument("model")
    se.add_argument("-t", "--target", default="cpu-int8")
    se.add_argument("--target-file")
    se.add_argument("--calib", help="calibration data; the last quarter is held aside unless --eval is given")
    se.add_argument("--eval", help="held-aside evaluation data")
    se.add_argument("--metric", default="sqnr", help="sqnr, top1 or module:function")
    se.add_argument("--limit", type=int, help="use at most this many calibration samples")
    se.add_argument("--preprocess")
    se.add_argument("-o", "--out", help="folder for sensitivity.json/.txt/.svg")
    _add_executor(se, "the candidate evaluations")
    _add_common(se)

    lt = sub.add_parser("lint", help="check a model against TensorRT's Q/DQ and op rules")
    lt.add_argument("model")
    lt.add_argument("-t", "--target", default="jetson-int8")
    lt.add_argument("--target-file")
    lt.add_argument("--json", action="store_true")
    _add_trt(lt)
    _add_common(lt)

    pp = sub.add_parser("prune-plan", help="channel-pruning dependency groups: channels, MAC share, why skipped")
    pp.add_argument("model")
    pp.add_argument("--json", action="store_true")
    _add_common(pp)

    e = sub.add_parser("export", help="PyTorch -> ONNX once (needs edgec[torch])")
    e.add_argument("factory", help="pkg.module:factory returning an nn.Module")
    e.add_argument("--shape", action="append", required=True, help="input shape, e.g. 1,3,224,224 (one per input)")
    e.add_argument("-o", "--out", required=True, help="output .onnx path")
    e.add_argument("--opset", type=int, default=17)
    e.add_argument("--dynamic-batch", action="store_true")
    e.add_argument("--keep-bn", action="store_true", help="keep BatchNormalization nodes (no constant folding)")
    e.add_argument("-q", "--quiet", action="store_true")
    e.add_argument("-v", "--verbose", action="store_true")

    b = sub.add_parser("build", help="compile a manifest of models x targets, incrementally (README: Fleet builds)")
    b.add_argument("manifest", help="a TOML manifest, e.g. edgec.toml")
    _add_executor(b, "the pairs")
    b.add_argument("--force", action="store_true", help="rebuild every pair, changed or not")
    b.add_argument("-q", "--quiet", action="store_true")
    b.add_argument("-v", "--verbose", action="store_true")
    return ap


def _add_executor(p: Any, what: str) -> None:
    """-j / --ray: where independent jobs run (compiler/build.py's Executor); results do not depend on it."""
    p.add_argument("-j", "--jobs", type=int, default=1, help=f"run {what} on N local processes (default 1)")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help=f"run {what} as Ray tasks (edgec[ray]); without ADDRESS a local Ray is started")


def _options(args: argparse.Namespace) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise EdgecError(f"--set {item!r}: expected KEY=VALUE")
        opts[key.replace("-", "_")] = _scalar(value)
    opts.update(_quant_options(args))
    for key in ("per_channel", "fallback", "dw_rank", "dw_max_error", "dw_min_macs", "io"):
        if getattr(args, key) is not None:
            opts[key] = getattr(args, key)
    for key in ("bias_correct", "keep_nchw_io", "equalize", "dw_latency"):
        if getattr(args, key):
            opts[key] = True
    profile = _trt_profile(args)
    if profile:
        opts["trt_profile"] = profile
    if args.trt_version:
        from edgec.backends.tensorrt_cache import version_number

        version_number(args.trt_version)  # a malformed version fails now, not after the whole pipeline
        opts["trt_version"] = args.trt_version
    if args.no_engine:
        opts["build_engine"] = False
    if args.no_reconstruct:
        opts["reconstruct"] = False
    if args.prune_skip:
        opts["prune_skip"] = [x for e in args.prune_skip for x in e.split(",") if x]
    if args.dw_layers:
        opts["dw_layers"] = [x for e in args.dw_layers for x in e.split(",") if x]
    return opts


def _quant_options(args: argparse.Namespace) -> dict[str, Any]:
    """--calib-method, --exclude and --preprocess, shared by compile and quant-report."""
    opts: dict[str, Any] = {}
    if args.calib_method:
        opts["calib_method"] = args.calib_method
    if args.exclude:
        opts["exclude"] = [x for e in args.exclude for x in e.split(",") if x]
    if args.preprocess:
        opts["preprocess"] = args.preprocess
    return opts


def _scalar(text: str) -> Any:
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def cmd_compile(args: argparse.Namespace) -> int:
    import edgec
    from edgec.model_io import parse_shapes

    if args.example:
        if args.model:
            raise EdgecError("give a model file or --example, not both")
        model_path, samples = edgec.example_paths()
        model: str = str(model_path)
        calib = args.calib or str(samples)
        out = args.out or "edgec-example"
    else:
        if not args.model:
            raise EdgecError("no model given", hint="edgec compile model.onnx -o out/  (or --example)")
        model, calib, out = args.model, args.calib, args.out
    if args.num_samples is not None and args.num_samples < 1:
        raise EdgecError(f"--num-samples {args.num_samples}: must be at least 1", hint="e.g. --num-samples 8")
    console = _console(args)
    opts = _options(args)
    searched = None
    if args.max_drop is not None or args.min_sqnr is not None:
        searched = _search(args, model, calib, out, opts, console)
    status = console.status("compiling") if console is not None and console.is_terminal else None
    if status is not None:
        status.start()
    try:
        result = edgec.compile(
            model, target=args.target, passes=args.passes, add=args.add, calib=calib, samples=args.samples,
            num_samples=args.num_samples, calib_limit=args.calib_limit, out_dir=out,
            shapes=parse_shapes(args.shape), target_file=args.target_file, keep_going=args.keep_going,
            dump_dir=args.dump_dir, options=opts, report=args.report,
            on_step=(lambda name: status.update(f"pass {name}")) if status is not None else None,
            progress=status is not None, min_sqnr=args.min_sqnr, budget_on=args.budget_on)
    finally:
        if status is not None:
            status.stop()
    if console is not None:
        result.report.print(console)
        if out:
            console.print(f"wrote {out}/ (model, report.json, report.html)")
    if searched is not None and not searched.met:
        # The best model found is written above; exit 3 so build scripts notice the budget was missed.
        raise BudgetNotMet(searched.message.split("; see the Pareto table")[0])
    judged = result.report.extra.get("budget") if searched is not None else None
    if judged and not judged.get("met", True):
        # The search met it in simulation, the shipped artifact does not (ORT's fused int8 kernels differ).
        raise BudgetNotMet(f"budget NOT met by the artifact: held-aside SQNR ({judged['on']}) {judged['figure']:.2f} "
                           f"dB, short by {judged['min_sqnr'] - judged['figure']:.2f} dB of --min-sqnr {judged['min_sqnr']:g}")
    return 0


def _search(args: argparse.Namespace, model: str, calib: str | None, out: str | None, opts: dict[str, Any],
            console: Any) -> Any:
    """Budgeted mixed precision: find which layers stay float, then the compile below uses them."""
    from edgec import mixed_precision

    if args.passes:
        raise EdgecError("--max-drop/--min-sqnr search the target's pipeline; drop --passes")
    if calib is None:
        raise EdgecError("--max-drop/--min-sqnr need --calib (part of it is held aside for evaluation)")
    res = mixed_precision.run_search(model, args.target or "cpu-int8", calib, max_drop=args.max_drop,
                                     min_sqnr=args.min_sqnr, metric=args.metric, eval_spec=args.samples,
                                     out_dir=out, equalize=args.equalize, bias_correct=args.bias_correct,
                                     limit=args.calib_limit, preprocess=opts.get("preprocess"),
                                     target_file=args.target_file, max_steps=args.max_float,
                                     budget_on=args.budget_on, jobs=args.jobs, use_ray=args.ray is not None,
                                     ray_address=args.ray or None)
    opts["exclude"] = sorted(set(opts.get("exclude", [])) | set(res.exclude))
    if res.a16:
        opts["a16"] = list(res.a16)
    for key, value in res.fixed.items():  # the range rule and bias correction the search measured with
        opts.setdefault(key, value)
    if console is not None:
        console.print(res.message)
        console.print(res.pareto_table())
    return res


def cmd_sensitivity(args: argparse.Namespace) -> int:
    from edgec import sensitivity

    res = sensitivity.run_sensitivity(args.model, args.target, args.calib or "random", eval_spec=args.eval,
                                      metric=args.metric, out_dir=args.out, limit=args.limit,
                                      preprocess=args.preprocess, target_file=args.target_file,
                                      jobs=args.jobs, use_ray=args.ray is not None, ray_address=args.ray or None)
    if not args.quiet:
        print(res.table())
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    import edgec
    from edgec.model_io import parse_shapes

    info = edgec.inspect(args.model, shapes=parse_shapes(args.shape) or None)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    console = _console(args)
    if console is None:
        return 0
    from rich.table import Table

    console.print(f"[bold]{args.model}[/]  opsets {info['opsets']}  ir {info['ir_version']}  "
                  f"producer {info['producer'] or '?'}")
    console.print(f"nodes {info['nodes']}  params {info['params']:,}  MACs {info['macs']:,}  bytes {info['bytes']:,}")
    for role in ("inputs", "outputs"):
        for v in info[role]:
            console.print(f"  {role[:-1]} {v['name']}: {v['dtype']} {v['shape']}")
    t = Table("op", "count")
    for op, n in sorted(info["ops"].items(), key=lambda kv: -kv[1]):
        t.add_row(op, str(n))
    console.print(t)
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    import edgec
    from edgec import graphdiff, report_html
    from edgec.model_io import parse_shapes

    if args.a.endswith(".json") or args.pass_name:
        return graphdiff.show_report(args.a, args.b, args.pass_name, args.html, args.json, args.quiet)
    if not args.b:
        raise EdgecError("edgec diff: give two .onnx files, or a report.json with --pass NAME")
    nodes = graphdiff.diff_files(args.a, args.b, shapes=parse_shapes(args.shape) or None)
    if args.html:
        graphdiff.write_page(args.html, report_html.diff_page(nodes, args.a, args.b))
    res = edgec.diff(args.a, args.b, calib=args.calib, num_samples=args.num_samples,
                     shapes=parse_shapes(args.shape) or None)
    if args.json:
        print(json.dumps({**res, "nodes": nodes}, indent=2, default=str))
        return 0
    console = _console(args)
    if console is None:
        return 0
    for line in graphdiff.format_text(nodes):
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    sa, sb = res["summary_a"], res["summary_b"]
    for key in ("nodes", "params", "macs", "bytes"):
        console.print(f"{key:>7}: {sa[key]:>14,} -> {sb[key]:>14,}  ({sb[key] - sa[key]:+,})")
    for op, (na, nb) in res["ops_changed"].items():
        console.print(f"  {op}: {na} -> {nb}")
    from edgec.report import drift_line

    console.print(f"drift of b vs a{drift_line(res['drift'], held='')}  (inputs: {res['samples']})")
    for w in res["warnings"]:
        console.print(f"[bold yellow]warning:[/] {w}")
    return 0


def cmd_passes(args: argparse.Namespace) -> int:
    import dataclasses

    from edgec.pass_infra import doc_line, registry

    for name, cls in registry().items():
        params = ", ".join(f"{f.name}={f.default!r}" for f in dataclasses.fields(cls)
                           if f.default is not dataclasses.MISSING)
        kind = "exact" if cls.exact else "lossy"
        print(f"{name:<16} {kind:<6} {doc_line(cls)}" + (f"  [{params}]" if params else ""))
    return 0


def cmd_targets(args: argparse.Namespace) -> int:
    from edgec.targets import add_points, builtin

    for t in builtin().values():
        print(f"{t.name:<13} {t.backend:<9} {t.description}")
        print(f"{'':<13} stages: {t.outline()}")
        print(f"{'':<13} passes: {','.join(t.passes)}")
        for stage, names in add_points(t).items():
            print(f"{'':<13} --add {'|'.join(names)}: after {stage}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from edgec import data, runtime
    from edgec.api import load_model
    from edgec.model_io import parse_shapes

    shapes = parse_shapes(args.shape) or None
    model = load_model(args.model, shapes)
    src = data.load_feeds(args.calib or "random", model, limit=1)
    assert src is not None
    sess = runtime.session(model, threads=args.threads, optimization=args.optimization)
    t = runtime.time_session(sess, src[0], runs=args.runs)
    if not args.quiet:
        print(f"{args.model}: median {t['median_ms']:.3f} ms  p10 {t['p10_ms']:.3f}  p90 {t['p90_ms']:.3f}  "
              f"({args.runs} runs, {args.threads} threads, optimization {args.optimization})")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from edgec.export import export_factory
    from edgec.model_io import parse_shapes

    shapes = []
    for s in args.shape:
        parsed = parse_shapes([s])
        shapes.extend(parsed.values())
    path = export_factory(args.factory, shapes, args.out, opset=args.opset, dynamic_batch=args.dynamic_batch,
                          keep_bn=args.keep_bn)
    if not args.quiet:
        print(f"wrote {path}")
    return 0


def cmd_quant_report(args: argparse.Namespace) -> int:
    from edgec import quant_report
    from edgec.model_io import parse_shapes

    opts = _quant_options(args)
    if args.out and Path(args.out).suffix not in (".json", ".html"):
        raise EdgecError(f"-o {args.out}: unknown report format", hint="use a .json or .html file name")
    rep = quant_report.quant_report(args.model, args.calib, target=args.target, calib_limit=args.calib_limit,
                                    options=opts, shapes=parse_shapes(args.shape) or None)
    if args.out:
        quant_report.write(rep, args.out)
    if not args.quiet:
        print(quant_report.format_table(rep, top=args.top))
    return 0


def cmd_lint(args: argparse.Namespace) -> int:
    from edgec.backends import tensorrt_lint
    from edgec.model_io import parse_shapes

    findings = tensorrt_lint.lint_file(args.model, args.target, shapes=parse_shapes(args.shape) or None,
                                       target_file=args.target_file, profile=_trt_profile(args),
                                       trt_version=args.trt_version)
    if args.json:
        print(json.dumps([f.to_dict() for f in findings], indent=2))
    elif not args.quiet:
        print(tensorrt_lint.format_findings(findings, source=args.model))
    return tensorrt_lint.exit_code(findings)


def cmd_prune_plan(args: argparse.Namespace) -> int:
    from edgec.model_io import parse_shapes
    from edgec.passes.prune import format_plan, plan

    rows = plan(args.model, shapes=parse_shapes(args.shape) or None)
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
    elif not args.quiet:
        print(format_plan(rows))
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from edgec import build

    manifest = build.load_manifest(args.manifest)
    console = _console(args)
    on_row = None
    if console is not None:
        def on_row(row: dict[str, Any]) -> None:
            err = f"  {row['error']}" if row.get("error") else ""
            console.print(f"{row['status']:>7}  {row['model']}/{row['target']}{err}", markup=False, highlight=False)
    rows = build.build(manifest, jobs=args.jobs, use_ray=args.ray is not None, ray_address=args.ray or None,
                       force=args.force, on_row=on_row)
    if console is not None:
        from rich.table import Table

        table = Table("model", "target", "status", "bytes", "latency ms", "SQNR dB", "build s", "error")
        for cells in build.iter_rows(rows):
            table.add_row(*cells)
        console.print(table)
        counts = {s: sum(r["status"] == s for r in rows) for s in ("built", "cached", "failed")}
        console.print(f"{counts['built']} built, {counts['cached']} unchanged, {counts['failed']} failed; "
                      f"index: {manifest.out / 'index.html'}")
    return build.exit_code(rows)


def _console(args: argparse.Namespace):
    if getattr(args, "quiet", False):
        return None
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console = Console(width=140)  # piped or captured: do not squeeze the tables to 80 columns
    return console


COMMANDS = {"compile": cmd_compile, "inspect": cmd_inspect, "diff": cmd_diff, "passes": cmd_passes,
            "targets": cmd_targets, "bench": cmd_bench, "export": cmd_export, "quant-report": cmd_quant_report,
            "lint": cmd_lint, "prune-plan": cmd_prune_plan, "sensitivity": cmd_sensitivity, "build": cmd_build,
            "explore": cmd_explore}


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.cmd](args)
    except EdgecError as exc:
        if getattr(args, "verbose", False):
            traceback.print_exc()
        code = getattr(exc, "exit_code", EXIT_USER)
        # EXIT_INTERNAL: edgec's own fault (a pass crashed or broke the model, TensorRT refused what we wrote).
        kind = "internal error" if code == EXIT_INTERNAL else "error"
        print(f"edgec: {kind}: {exc}", file=sys.stderr)
        return code
    except BrokenPipeError:
        # `edgec inspect x --json | head`: the reader left; nothing to report.
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("edgec: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - a bug: say so in one line unless --verbose
        if getattr(args, "verbose", False):
            traceback.print_exc()
        first = str(exc).splitlines()[0][:300] if str(exc) else ""
        print(f"edgec: internal error: {type(exc).__name__}: {first} (rerun with --verbose and report it)",
              file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
