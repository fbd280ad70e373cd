"""Command line: a thin layer over the Python API (edgec.api). User mistakes exit 2 with one line."""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path
from typing import Any

from edgec.cli_args import compile_options, parser, quant_options, trt_profile
from edgec.errors import EXIT_INTERNAL, EXIT_USER, BudgetNotMet, EdgecError
from edgec.explore import run as cmd_explore


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
    opts = compile_options(args)
    from edgec import settings

    settings.resolve(opts)  # an unknown --set key or a bad value fails now, before a search runs
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

    opts = quant_options(args)
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
                                       target_file=args.target_file, profile=trt_profile(args),
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
    args = parser().parse_args(argv)
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
