"""The command line's arguments: the parser of every command, and the compile flags -> the settings dict
edgec.settings checks (``--set KEY=VALUE`` and the named flags, one key each)."""

from __future__ import annotations

import argparse
from typing import Any

from edgec import calib
from edgec.errors import EdgecError
from edgec.explore import add_parser as explore_parser


def add_common(p: argparse.ArgumentParser) -> None:
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


def trt_profile(args: argparse.Namespace) -> dict[str, Any] | None:
    if not (args.min_shape or args.opt_shape or args.max_shape):
        return None
    from edgec.backends.tensorrt import parse_profile

    return parse_profile(args.min_shape, args.opt_shape, args.max_shape)


def parser() -> argparse.ArgumentParser:
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
                   help="a setting of a pass or backend, e.g. --set bench_runs=50 (repeatable; README: Settings)")
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
                    help="depthwise: keep a replacement only if the target's runtime (LiteRT for tflite-*, else "
                         "ONNX Runtime) runs the pair faster than the conv")
    pr.add_argument("--dw-min-sqnr", type=float,
                    help="depthwise: end-to-end output SQNR budget in dB; pairs are accepted by gain while the "
                         "outputs on held-out calibration feeds stay above it")
    tf = c.add_argument_group("TFLite")
    tf.add_argument("--io", choices=["int8", "float"], help="tflite-int8: quantized or float model inputs/outputs")
    tf.add_argument("--keep-nchw-io", action="store_true", help="tflite: keep ONNX (NCHW) layout at the boundary")
    _add_trt(c.add_argument_group("TensorRT"), compile_flags=True)
    c.add_argument("-o", "--out", help="output folder for the artifacts and report.json/report.html")
    c.add_argument("--report", help="also write the report to this .json or .html file")
    c.add_argument("--dump-dir", help="write the model after every pass into this folder")
    c.add_argument("--keep-going", action="store_true", help="roll back a failing pass and continue")
    add_common(c)

    i = sub.add_parser("inspect", help="ops, params, MACs, size, inputs/outputs of a model")
    i.add_argument("model")
    i.add_argument("--json", action="store_true", help="print JSON")
    add_common(i)

    d = sub.add_parser("diff", help="node-level and numeric difference between two models, or one pass of a compile")
    d.add_argument("a", help="an .onnx file, or a compile's report.json (with --pass)")
    d.add_argument("b", nargs="?", help="the second .onnx file")
    d.add_argument("--pass", dest="pass_name", help="with a report.json: show this pass's node-level diff")
    d.add_argument("--html", help="also write the before/after drawing page to this .html file")
    d.add_argument("--samples", "--calib", dest="calib",
                   help="inputs to compare on (image folder, .npz, module:function); default random")
    d.add_argument("--num-samples", type=int, help="compare on at most this many of them (default all, up to 256)")
    d.add_argument("--json", action="store_true")
    add_common(d)

    explore_parser(sub)

    sub.add_parser("passes", help="list the registered passes")
    sub.add_parser("targets", help="list the targets")

    b = sub.add_parser("bench", help="time a model in ONNX Runtime (median, 2 threads)")
    b.add_argument("model")
    b.add_argument("--runs", type=int, default=50)
    b.add_argument("--threads", type=int, default=2)
    b.add_argument("--optimization", choices=["disable", "basic", "extended", "all"], default="all")
    b.add_argument("--calib", help="input data (default random)")
    add_common(b)

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
    add_common(qr)

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
    add_common(se)

    lt = sub.add_parser("lint", help="check a model against TensorRT's Q/DQ and op rules")
    lt.add_argument("model")
    lt.add_argument("-t", "--target", default="jetson-int8")
    lt.add_argument("--target-file")
    lt.add_argument("--json", action="store_true")
    _add_trt(lt)
    add_common(lt)

    pp = sub.add_parser("prune-plan", help="channel-pruning dependency groups: channels, MAC share, why skipped")
    pp.add_argument("model")
    pp.add_argument("--json", action="store_true")
    add_common(pp)

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


def compile_options(args: argparse.Namespace) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise EdgecError(f"--set {item!r}: expected KEY=VALUE")
        opts[key.replace("-", "_")] = _scalar(value)
    opts.update(quant_options(args))
    for key in ("per_channel", "fallback", "dw_rank", "dw_max_error", "dw_min_macs", "dw_min_sqnr", "io"):
        if getattr(args, key) is not None:
            opts[key] = getattr(args, key)
    for key in ("bias_correct", "keep_nchw_io", "equalize", "dw_latency"):
        if getattr(args, key):
            opts[key] = True
    profile = trt_profile(args)
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


def quant_options(args: argparse.Namespace) -> dict[str, Any]:
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
