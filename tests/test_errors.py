"""Bad input: every case gives one line naming the file/node/option and what to do, exit code 2, and
leaves the output folder exactly as it was.

The table CASES is the single source: each case builds its inputs in a fresh folder, runs the CLI
in-process (``edgec.cli.main``), and checks the message. ``test_errors_doc_is_current`` renders the
table with the real messages into docs/errors.md (regenerating it when it is stale, and failing so the
change is noticed). A couple of cases also run as a subprocess to prove the exit code and that no
traceback reaches the user.

Also here: passes never corrupt (a pass that breaks the model, drifts while claiming to be exact, or
crashes fails inside the manager naming the pass, and --keep-going rolls it back), symbolic dims
compile without pinning, and model_io.staged_dir's all-or-nothing output folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgec
from edgec import cli, model_io
from edgec.errors import EdgecError
from edgec.manager import Manager, PassFailed
from edgec.pass_infra import Pass, PassContext

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "errors.md"
DIGITS, DIGITS_SAMPLES = edgec.example_paths()
HAVE_IMAGES = importlib.util.find_spec("edgec.images") is not None


# -- small models --------------------------------------------------------------------------------------

def _model(nodes: list[onnx.NodeProto], *, inputs: list[str] = ("x",), outputs: list[str] = ("y",),
           inits: list[onnx.TensorProto] = (), opsets: dict[str, int] | None = None,
           shape: list[int | str] = (1, 4)) -> onnx.ModelProto:
    graph = helper.make_graph(
        list(nodes), "bad",
        [helper.make_tensor_value_info(i, TensorProto.FLOAT, list(shape)) for i in inputs],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs], list(inits))
    ops = [helper.make_opsetid(d, v) for d, v in (opsets or {"": 13}).items()]
    m = helper.make_model(graph, opset_imports=ops)
    m.ir_version = 8
    return m


def _write(model: onnx.ModelProto, path: Path) -> Path:
    # Serialized by hand: onnx.save would refuse some of these broken graphs.
    path.write_bytes(model.SerializeToString())
    return path


def _dynamic_conv(path: Path) -> Path:
    """A conv net whose input is [N, 3, H, W] with every spatial dim symbolic."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv0", pads=[1, 1, 1, 1])], "dyn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, "H", "W"])], [w])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return _write(m, path)


# -- the table -----------------------------------------------------------------------------------------

@dataclasses.dataclass
class Case:
    id: str
    what: str
    # Builds the inputs inside the given folder (which already holds model.onnx = digits, samples.npz,
    # and out/ with an earlier result) and returns the CLI arguments.
    setup: Callable[[Path], list[str]]
    # Text the message must name (file, node, option); "{w}" is the case's folder.
    names: tuple[str, ...]
    needs: str | None = None  # "images" | "tmpfs": skip when that is not available here
    out: str = "out"  # the output folder, relative to the case's folder, that must stay unchanged
    # Set while the fix is a diff in a file this test's author does not own (see the reliability
    # report); the case then runs as a strict xfail, so the day the fix lands the marker must go.
    pending: str | None = None
    # The message must say what to do ("(hint: ...)"). False where the message comes from a file the
    # reliability work does not own and already reads as an instruction, or a hint is proposed.
    hint: bool = True


def _compile(*args: str) -> list[str]:
    return ["compile", *args]


def _empty(w: Path) -> list[str]:
    (w / "empty.onnx").write_bytes(b"")
    return _compile(str(w / "empty.onnx"), "-o", str(w / "out"))


def _truncated(w: Path) -> list[str]:
    data = DIGITS.read_bytes()
    (w / "cut.onnx").write_bytes(data[: len(data) // 3])
    return _compile(str(w / "cut.onnx"), "-o", str(w / "out"))


def _not_onnx(w: Path) -> list[str]:
    (w / "photo.onnx").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    return _compile(str(w / "photo.onnx"), "-o", str(w / "out"))


def _text_file(w: Path) -> list[str]:
    (w / "notes.onnx").write_text("this is a README, not a model\n" * 20)
    return _compile(str(w / "notes.onnx"), "-o", str(w / "out"))


def _missing(w: Path) -> list[str]:
    return _compile(str(w / "nope.onnx"), "-o", str(w / "out"))


def _directory(w: Path) -> list[str]:
    (w / "adir.onnx").mkdir()
    return _compile(str(w / "adir.onnx"), "-o", str(w / "out"))


def _cycle(w: Path) -> list[str]:
    m = _model([helper.make_node("Add", ["x", "t2"], ["t1"], name="add_a"),
                helper.make_node("Relu", ["t1"], ["t2"], name="relu_b"),
                helper.make_node("Relu", ["t1"], ["y"], name="out")])
    return _compile(str(_write(m, w / "cycle.onnx")), "-o", str(w / "out"))


def _dangling(w: Path) -> list[str]:
    m = _model([helper.make_node("Add", ["x", "ghost"], ["y"], name="add_ghost")])
    return _compile(str(_write(m, w / "dangling.onnx")), "-o", str(w / "out"))


def _duplicate(w: Path) -> list[str]:
    m = _model([helper.make_node("Relu", ["x"], ["t"], name="first"),
                helper.make_node("Sigmoid", ["x"], ["t"], name="second"),
                helper.make_node("Relu", ["t"], ["y"], name="last")])
    return _compile(str(_write(m, w / "dup.onnx")), "-o", str(w / "out"))


def _duplicate_init(w: Path) -> list[str]:
    a = numpy_helper.from_array(np.ones(4, np.float32), "k")
    m = _model([helper.make_node("Add", ["x", "k"], ["y"], name="add")], inits=[a, a])
    return _compile(str(_write(m, w / "dupinit.onnx")), "-o", str(w / "out"))


def _unproduced_output(w: Path) -> list[str]:
    m = _model([helper.make_node("Relu", ["x"], ["y"], name="relu")], outputs=["y", "z"])
    return _compile(str(_write(m, w / "noout.onnx")), "-o", str(w / "out"))


def _future_opset(w: Path) -> list[str]:
    m = _model([helper.make_node("Relu", ["x"], ["y"], name="relu")], opsets={"": 99})
    return _compile(str(_write(m, w / "opset99.onnx")), "-o", str(w / "out"))


def _unknown_op(w: Path) -> list[str]:
    m = _model([helper.make_node("FancyRelu", ["x"], ["y"], name="fancy")])
    return _compile(str(_write(m, w / "unknown_op.onnx")), "-o", str(w / "out"))


def _unimported_domain(w: Path) -> list[str]:
    m = _model([helper.make_node("Swish", ["x"], ["y"], name="swish0", domain="com.acme")])
    return _compile(str(_write(m, w / "nodomain.onnx")), "-o", str(w / "out"))


def _custom_op(w: Path) -> list[str]:
    m = _model([helper.make_node("Swish", ["x"], ["y"], name="swish0", domain="com.acme")],
               opsets={"": 13, "com.acme": 1})
    return _compile(str(_write(m, w / "custom.onnx")), "-o", str(w / "out"))


def _missing_external(w: Path) -> list[str]:
    big = numpy_helper.from_array(np.ones((4, 4), np.float32), "wbig")
    m = _model([helper.make_node("MatMul", ["x", "wbig"], ["y"], name="mm")], inits=[big])
    onnx.save(m, str(w / "ext.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="ext.onnx.data", size_threshold=0)
    (w / "ext.onnx.data").unlink()
    return _compile(str(w / "ext.onnx"), "-o", str(w / "out"))


def _shape_unknown_input(w: Path) -> list[str]:
    return _compile(str(w / "model.onnx"), "--shape", "image=1,1,8,8", "-o", str(w / "out"))


def _keep_names_not_bool(w: Path) -> list[str]:
    return _compile(str(w / "model.onnx"), "--set", "keep_names=maybe", "-o", str(w / "out"))


def _set_unknown_key(w: Path) -> list[str]:
    return _compile(str(w / "model.onnx"), "--set", "bench_run=5", "-o", str(w / "out"))


def _shape_rank(w: Path) -> list[str]:
    return _compile(str(w / "model.onnx"), "--shape", "input=1,8,8", "-o", str(w / "out"))


def _shape_fixed_dim(w: Path) -> list[str]:
    return _compile(str(w / "model.onnx"), "--shape", "input=1,3,8,8", "-o", str(w / "out"))


def _shape_not_int(w: Path) -> list[str]:
    return _compile(str(w / "model.onnx"), "--shape", "input=1,1,eight,8", "-o", str(w / "out"))


def _shape_zero(w: Path) -> list[str]:
    _dynamic_conv(w / "dyn.onnx")
    return _compile(str(w / "dyn.onnx"), "--shape", "x=1,3,0,16", "-o", str(w / "out"))


def _dynamic_unpinned(w: Path) -> list[str]:
    _dynamic_conv(w / "dyn.onnx")
    return _compile(str(w / "dyn.onnx"), "-o", str(w / "out"))


def _npz_missing_input(w: Path) -> list[str]:
    np.savez(w / "calib.npz", image=np.zeros((4, 1, 1, 8, 8), np.float32))
    return _compile(str(w / "model.onnx"), "--calib", str(w / "calib.npz"), "-o", str(w / "out"))


def _npz_wrong_shape(w: Path) -> list[str]:
    np.savez(w / "calib.npz", input=np.zeros((4, 1, 3, 8, 8), np.float32))
    return _compile(str(w / "model.onnx"), "--calib", str(w / "calib.npz"), "-o", str(w / "out"))


def _npz_corrupt(w: Path) -> list[str]:
    (w / "calib.npz").write_bytes(b"PK\x03\x04" + b"\x00" * 40)
    return _compile(str(w / "model.onnx"), "--calib", str(w / "calib.npz"), "-o", str(w / "out"))


def _calib_missing(w: Path) -> list[str]:
    return _compile(str(w / "model.onnx"), "--calib", str(w / "no_such_images"), "-o", str(w / "out"))


def _images_undecodable(w: Path) -> list[str]:
    d = w / "images"
    d.mkdir()
    from PIL import Image

    for i in range(3):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(d / f"ok{i}.png")
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    return _compile(str(w / "model.onnx"), "--calib", str(d), "-o", str(w / "out"))


def _four_channel_model(path: Path) -> Path:
    w = numpy_helper.from_array(np.ones((2, 4, 3, 3), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="conv0")], "c4",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return _write(m, path)


def _photos(d: Path, size: int) -> Path:
    from PIL import Image

    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(d / f"im{i}.png")
    return d


def _images_wrong_channels(w: Path) -> list[str]:
    # Images decode to RGB (3 channels); this model wants 4.
    d = _photos(w / "images", 8)
    return _compile(str(_four_channel_model(w / "c4.onnx")), "--calib", str(d), "-o", str(w / "out"))


def _images_wrong_size(w: Path) -> list[str]:
    # 12x12 images with resizing turned off, for a model that takes 8x8.
    d = _photos(w / "images", 12)
    return _compile(str(w / "model.onnx"), "--calib", str(d), "--preprocess", "raw,resize=none",
                    "-o", str(w / "out"))


def _images_empty_dir(w: Path) -> list[str]:
    (w / "images").mkdir()
    (w / "images" / "readme.txt").write_text("no images here")
    return _compile(str(w / "model.onnx"), "--calib", str(w / "images"), "-o", str(w / "out"))


def _out_under_file(w: Path) -> list[str]:
    (w / "afile").write_text("x")
    return _compile(str(w / "model.onnx"), "--calib", str(w / "samples.npz"), "-o", str(w / "afile" / "out"))


def _out_is_file(w: Path) -> list[str]:
    (w / "out.txt").write_text("x")
    return _compile(str(w / "model.onnx"), "--calib", str(w / "samples.npz"), "-o", str(w / "out.txt"))


def _can_mount_tmpfs() -> bool:
    return sys.platform.startswith("linux") and hasattr(os, "geteuid") and os.geteuid() == 0


_MOUNTS: list[Path] = []


def _tiny_disk(w: Path, size: str) -> Path:
    """A tmpfs of ``size`` at w/full holding an earlier result in full/out: a real full disk."""
    mnt = w / "full"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True,
                         check=False)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.decode().strip()}")
    _MOUNTS.append(mnt)
    (mnt / "out").mkdir()
    (mnt / "out" / "model.onnx").write_bytes(b"an earlier result that must survive")
    (mnt / "out" / "notes.txt").write_text("user file")
    return mnt / "out"


def _disk_full_model(w: Path) -> list[str]:
    # 32 KiB: the 42 KB model itself does not fit.
    out = _tiny_disk(w, "32k")
    return _compile(str(w / "model.onnx"), "--calib", str(w / "samples.npz"), "-o", str(out))


def _disk_full_report(w: Path) -> list[str]:
    # 64 KiB: the model and report.json fit, report.html does not (tmpfs counts 4 KiB pages).
    out = _tiny_disk(w, "64k")
    return _compile(str(w / "model.onnx"), "--calib", str(w / "samples.npz"), "-o", str(out))


def _unknown_target(w: Path) -> list[str]:
    return _compile(str(w / "model.onnx"), "-t", "cpu-fp64", "-o", str(w / "out"))


def _unknown_pass(w: Path) -> list[str]:
    return _compile(str(w / "model.onnx"), "-p", "fold,fuse-everything", "-o", str(w / "out"))


def _bad_target_file(w: Path) -> list[str]:
    (w / "targets.toml").write_text("[mine\npasses = [")
    return _compile(str(w / "model.onnx"), "--target-file", str(w / "targets.toml"), "-o", str(w / "out"))


def _num_samples(w: Path) -> list[str]:
    return _compile(str(w / "model.onnx"), "--num-samples", "0", "-o", str(w / "out"))


def _report_suffix(w: Path) -> list[str]:
    return _compile(str(w / "model.onnx"), "--calib", str(w / "samples.npz"), "--report", str(w / "r.txt"),
                    "-o", str(w / "out"))


# -- the other subcommands: the same rules (one line naming the input, exit 2, nothing written) ------

def _inspect_missing(w: Path) -> list[str]:
    return ["inspect", str(w / "nope.onnx")]


def _inspect_truncated(w: Path) -> list[str]:
    _truncated(w)
    return ["inspect", str(w / "cut.onnx")]


def _diff_missing(w: Path) -> list[str]:
    return ["diff", str(w / "model.onnx"), str(w / "other.onnx")]


def _diff_inputs_differ(w: Path) -> list[str]:
    return ["diff", str(w / "model.onnx"), str(_dynamic_conv(w / "dyn.onnx")), "--num-samples", "1"]


def _bench_not_onnx(w: Path) -> list[str]:
    _text_file(w)
    return ["bench", str(w / "notes.onnx"), "--runs", "1"]


def _bench_bad_calib(w: Path) -> list[str]:
    np.savez(w / "calib.npz", image=np.zeros((2, 1, 1, 8, 8), np.float32))
    return ["bench", str(w / "model.onnx"), "--calib", str(w / "calib.npz"), "--runs", "1"]


def _quant_report_suffix(w: Path) -> list[str]:
    return ["quant-report", str(w / "model.onnx"), "--calib", str(w / "samples.npz"), "--calib-limit", "4",
            "-o", str(w / "out" / "r.txt")]


def _quant_report_target(w: Path) -> list[str]:
    return ["quant-report", str(w / "model.onnx"), "-t", "cpu-int4", "--calib", str(w / "samples.npz")]


def _lint_missing(w: Path) -> list[str]:
    return ["lint", str(w / "nope.onnx")]


def _lint_trt_version(w: Path) -> list[str]:
    return ["lint", str(w / "model.onnx"), "--trt-version", "ten"]


def _compile_trt_version(w: Path) -> list[str]:
    return _compile(str(w / "model.onnx"), "-t", "jetson-int8", "--trt-version", "ten", "-o", str(w / "out"))


def _prune_plan_missing(w: Path) -> list[str]:
    return ["prune-plan", str(w / "nope.onnx")]


def _prune_plan_cycle(w: Path) -> list[str]:
    _cycle(w)
    return ["prune-plan", str(w / "cycle.onnx")]


def _sensitivity_metric(w: Path) -> list[str]:
    return ["sensitivity", str(w / "model.onnx"), "--calib", str(w / "samples.npz"), "--limit", "8",
            "--metric", "accuracy99", "-o", str(w / "out")]


def _sensitivity_calib(w: Path) -> list[str]:
    return ["sensitivity", str(w / "model.onnx"), "--calib", str(w / "no_such.npz"), "-o", str(w / "out")]


def _export_factory(w: Path) -> list[str]:
    return ["export", "no_such_pkg.models:build", "--shape", "1,3,8,8", "-o", str(w / "out" / "m.onnx")]


CASES: list[Case] = [
    Case("empty-file", "model file is empty", _empty, ("{w}/empty.onnx",)),
    Case("truncated", "truncated protobuf (first third of a real model)", _truncated, ("{w}/cut.onnx",)),
    Case("not-onnx-binary", "a binary non-ONNX file (PNG bytes) named .onnx", _not_onnx, ("{w}/photo.onnx",)),
    Case("not-onnx-text", "a text file named .onnx", _text_file, ("{w}/notes.onnx",)),
    Case("missing-file", "model path does not exist", _missing, ("{w}/nope.onnx",)),
    Case("directory", "model path is a directory", _directory, ("{w}/adir.onnx",)),
    Case("cycle", "the graph has a cycle", _cycle, ("{w}/cycle.onnx", "cycle")),
    Case("dangling-input", "a node reads a tensor nothing produces", _dangling, ("{w}/dangling.onnx", "add_ghost",
                                                                                "ghost")),
    Case("duplicate-output", "two nodes produce the same tensor name", _duplicate, ("{w}/dup.onnx", "'t'", "first",
                                                                                   "second")),
    Case("duplicate-initializer", "two initializers share a name", _duplicate_init, ("{w}/dupinit.onnx", "'k'")),
    Case("unproduced-output", "a graph output nothing produces", _unproduced_output, ("{w}/noout.onnx", "'z'")),
    Case("future-opset", "default-domain opset newer than onnx knows", _future_opset, ("{w}/opset99.onnx", "99")),
    Case("unknown-op", "an op type that does not exist in the default domain", _unknown_op,
         ("{w}/unknown_op.onnx", "fancy", "FancyRelu")),
    Case("unimported-domain", "a node's domain is not in the model's opset imports", _unimported_domain,
         ("{w}/nodomain.onnx", "swish0", "com.acme")),
    Case("custom-op", "a custom-domain op ONNX Runtime has no kernel for", _custom_op,
         ("{w}/custom.onnx", "swish0", "com.acme")),
    Case("missing-external-data", "the external data file next to the model is gone", _missing_external,
         ("{w}/ext.onnx", "ext.onnx.data")),
    Case("shape-unknown-input", "--shape names an input the model does not have", _shape_unknown_input,
         ("--shape", "image")),
    Case("shape-rank", "--shape with the wrong rank", _shape_rank, ("--shape", "input", "rank")),
    Case("shape-fixed-dim", "--shape contradicts a fixed dim", _shape_fixed_dim, ("--shape", "input", "dim 1")),
    Case("shape-not-int", "--shape with a non-integer dim", _shape_not_int, ("--shape", "eight")),
    Case("shape-zero", "--shape with a zero dim", _shape_zero, ("--shape", "x")),
    Case("dynamic-unpinned", "symbolic spatial dims and no --shape (random samples need sizes)", _dynamic_unpinned,
         ("'x'", "'H'", "--shape")),
    Case("npz-missing-input", ".npz has no array named like the model input", _npz_missing_input,
         ("{w}/calib.npz", "'input'")),
    Case("npz-wrong-shape", ".npz array has the wrong shape", _npz_wrong_shape, ("{w}/calib.npz", "'input'")),
    Case("npz-corrupt", ".npz that is not a readable zip", _npz_corrupt, ("{w}/calib.npz",)),
    Case("calib-missing", "--calib path does not exist", _calib_missing, ("--calib", "{w}/no_such_images")),
    Case("images-undecodable", "a calibration image fails to decode", _images_undecodable, ("broken.png",),
         needs="images", hint=False),
    Case("images-wrong-channels", "calibration images (RGB) for a 4-channel input", _images_wrong_channels,
         ("'x'", "--calib"), needs="images"),
    Case("images-wrong-size", "calibration images of the wrong size with resizing off", _images_wrong_size,
         ("'input'", "--calib"), needs="images"),
    Case("images-none", "calibration folder with no images", _images_empty_dir, ("{w}/images",), needs="images", hint=False),
    Case("out-under-file", "-o inside a path that is a regular file (unwritable)", _out_under_file,
         ("{w}/afile",)),
    Case("out-is-file", "-o names an existing regular file", _out_is_file, ("-o", "{w}/out.txt"), hint=False),
    Case("disk-full-model", "disk full while writing the model (32 KiB tmpfs)", _disk_full_model,
         ("{w}/full/out", "No space left"), needs="tmpfs", out="full/out"),
    Case("disk-full-report", "disk full while writing report.html (64 KiB tmpfs)", _disk_full_report,
         ("{w}/full/out", "No space left"), needs="tmpfs", out="full/out"),
    Case("unknown-target", "-t names no target", _unknown_target, ("cpu-fp64",)),
    Case("unknown-pass", "-p names no registered pass", _unknown_pass, ("fuse-everything",)),
    Case("bad-target-file", "--target-file that is not valid TOML", _bad_target_file, ("{w}/targets.toml",)),
    Case("num-samples", "--num-samples 0", _num_samples, ("--num-samples",)),
    Case("report-suffix", "--report with an unknown extension", _report_suffix, ("--report", "{w}/r.txt")),
    Case("keep-names-not-bool", "--set keep_names with a value other than true/false", _keep_names_not_bool,
         ("keep_names", "maybe"), hint=False),
    Case("set-unknown-key", "--set KEY no pass or backend reads (a typo)", _set_unknown_key, ("bench_run",)),
    Case("compile-trt-version", "compile --trt-version that is not a version", _compile_trt_version,
         ("TensorRT version", "ten")),
    Case("inspect-missing", "inspect: model path does not exist", _inspect_missing, ("{w}/nope.onnx",)),
    Case("inspect-truncated", "inspect: truncated protobuf", _inspect_truncated, ("{w}/cut.onnx",)),
    Case("diff-missing", "diff: the second model does not exist", _diff_missing, ("{w}/other.onnx",)),
    Case("diff-inputs-differ", "diff: models with different inputs", _diff_inputs_differ, ("{w}/dyn.onnx", "inputs")),
    Case("bench-not-onnx", "bench: a text file named .onnx", _bench_not_onnx, ("{w}/notes.onnx",)),
    Case("bench-bad-calib", "bench: .npz without the model's input", _bench_bad_calib, ("{w}/calib.npz", "'input'")),
    Case("quant-report-suffix", "quant-report -o with an unknown extension", _quant_report_suffix,
         ("-o", "{w}/out/r.txt")),
    Case("quant-report-target", "quant-report -t names no target", _quant_report_target, ("cpu-int4",)),
    Case("lint-missing", "lint: model path does not exist", _lint_missing, ("{w}/nope.onnx",)),
    Case("lint-trt-version", "lint --trt-version that is not a version", _lint_trt_version, ("TensorRT version", "ten")),
    Case("prune-plan-missing", "prune-plan: model path does not exist", _prune_plan_missing, ("{w}/nope.onnx",)),
    Case("prune-plan-cycle", "prune-plan: the graph has a cycle", _prune_plan_cycle, ("{w}/cycle.onnx", "cycle")),
    Case("sensitivity-metric", "sensitivity --metric that is no metric", _sensitivity_metric, ("accuracy99",)),
    Case("sensitivity-calib", "sensitivity --calib that does not exist", _sensitivity_calib, ("{w}/no_such.npz",)),
    Case("export-factory", "export: a factory module that does not exist", _export_factory,
         ("no_such_pkg.models",)),
]


# -- running one case ----------------------------------------------------------------------------------

def _tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` (hidden temp files included) with a hash of its bytes."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


def _workdir(tmp: Path) -> Path:
    w = tmp / "work"
    w.mkdir()
    shutil.copy(DIGITS, w / "model.onnx")
    shutil.copy(DIGITS_SAMPLES, w / "samples.npz")
    out = w / "out"
    out.mkdir()
    (out / "model.onnx").write_bytes(b"an earlier result that must survive")
    (out / "notes.txt").write_text("user file")
    return w


def _skip_reason(case: Case) -> str | None:
    if case.needs == "images" and not HAVE_IMAGES:
        return "image loader not present yet"
    if case.needs == "tmpfs" and not _can_mount_tmpfs():
        return "needs root on Linux to mount a tiny tmpfs"
    return None


def run_case(case: Case, tmp: Path, capsys: pytest.CaptureFixture[str]) -> tuple[str, list[str]]:
    """Run one case in-process. Returns the message (paths replaced by <dir>) and the failed checks:
    exit code 2, one stderr line "edgec: error: ...", every name present, output folder unchanged."""
    w = _workdir(tmp)
    try:
        argv = case.setup(w)
        out = w / case.out
        before = _tree(out)
        capsys.readouterr()
        code = cli.main(argv + ["-q"])
        captured = capsys.readouterr()
        after = _tree(out)
    finally:
        while _MOUNTS:
            subprocess.run(["umount", str(_MOUNTS.pop())], check=False)
    lines = [ln for ln in captured.err.splitlines() if ln.strip()]
    problems = []
    if code != 2:
        problems.append(f"exit code {code}")
    if len(lines) != 1:
        problems.append(f"{len(lines)} stderr lines")
    line = lines[0] if lines else ""
    if not line.startswith("edgec: error: "):
        problems.append("does not start with 'edgec: error: '")
    problems += [f"does not name {n.format(w=w)!r}" for n in case.names if n.format(w=w) not in line]
    if case.hint and "(hint: " not in line:
        problems.append("no hint")
    if "Traceback" in captured.err:
        problems.append("traceback shown")
    if after != before:
        problems.append("the output folder changed")
    return line.replace(str(w), "<dir>"), [p.replace(str(w), "<dir>") for p in problems]


def _params() -> list:
    return [pytest.param(c, id=c.id, marks=[pytest.mark.xfail(strict=True, reason=c.pending)] if c.pending else [])
            for c in CASES]


@pytest.mark.parametrize("case", _params())
def test_bad_input(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    reason = _skip_reason(case)
    if reason:
        pytest.skip(reason)
    line, problems = run_case(case, tmp_path, capsys)
    SEEN[case.id] = (line, problems)
    assert not problems, f"{case.id}: {'; '.join(problems)}: {line!r}"


def test_table_has_enough_cases() -> None:
    assert len(CASES) >= 20
    assert len({c.id for c in CASES}) == len(CASES)


# Messages seen by test_bad_input in this session, reused by the doc test instead of running twice.
SEEN: dict[str, tuple[str, list[str]]] = {}


def render_doc(messages: dict[str, tuple[str, list[str]] | None]) -> str:
    rows = ["# Errors: what edgec says about bad input", "",
            "GENERATED by tests/test_errors.py from its table CASES (`python -m pytest tests/test_errors.py`",
            "rewrites this file when a message changes). Every case exits with code 2, prints exactly this one",
            "line on stderr, and leaves the output folder (`-o`) as it was. `<dir>` is the folder holding",
            "the inputs.", "",
            "| case | input | message |", "|---|---|---|"]
    for case in CASES:
        seen = messages.get(case.id)
        if seen is None:
            text = "_(not run here: " + (_skip_reason(case) or "?") + ")_"
        else:
            msg, problems = seen
            # A pending case shows today's message and what is still wrong, so the table never lies.
            text = f"`` {msg} ``" + (f" **pending:** {'; '.join(problems)}" if problems else "")
        rows.append(f"| {case.id} | {case.what} | {text.replace('|', '&#124;')} |")
    return "\n".join(rows) + "\n"


def test_errors_doc_is_current(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    messages: dict[str, tuple[str, list[str]] | None] = {}
    for i, case in enumerate(CASES):
        if _skip_reason(case):
            messages[case.id] = None
        elif case.id in SEEN:
            messages[case.id] = SEEN[case.id]
        else:
            d = tmp_path / str(i)
            d.mkdir()
            messages[case.id] = run_case(case, d, capsys)
    old = DOC.read_text() if DOC.exists() else ""
    # Sections after the generated table (the conformance refusals, kept by tests/test_conformance.py)
    # are written by hand: carried over as they are.
    text = render_doc(messages) + old[old.find("\n## "):] if "\n## " in old else render_doc(messages)
    if old != text:
        DOC.parent.mkdir(parents=True, exist_ok=True)
        DOC.write_text(text)
        pytest.fail("docs/errors.md was stale and has been regenerated: review and commit it")


# -- passes never corrupt: the manager names the pass, --keep-going rolls it back ------------------------

class _DropProducer(Pass):
    """Test-only: remove the first Relu without rewiring its readers (a dangling input)."""

    name = "drop-producer"
    exact = True

    def apply(self, model, ctx) -> bool:  # type: ignore[no-untyped-def]
        node = next(n for n in model.graph if n.op_type == "Relu")
        for out in node.outputs:
            out.name = "vanished"
        model.graph.remove(node, safe=False)
        return True


class _ScaleWeights(Pass):
    """Test-only: claims to be exact but doubles the first Conv's weights."""

    name = "scale-weights"
    exact = True

    def apply(self, model, ctx) -> bool:  # type: ignore[no-untyped-def]
        from edgec.graph import const_array, set_input_const

        conv = next(n for n in model.graph if n.op_type == "Conv")
        set_input_const(conv, 1, const_array(conv.inputs[1]) * 2)
        return True


class _Crash(Pass):
    name = "crash"
    exact = True

    def apply(self, model, ctx) -> bool:  # type: ignore[no-untyped-def]
        raise ZeroDivisionError("boom")


def _manager(keep_going: bool) -> tuple[Manager, object]:
    model = model_io.load(DIGITS)
    samples = np.load(DIGITS_SAMPLES)["input"][:4]
    ctx = PassContext(samples=[{"input": s} for s in samples])
    return Manager(ctx, keep_going=keep_going), model


@pytest.mark.parametrize(("bad", "says"), [(_DropProducer, "produced an invalid model"),
                                           (_ScaleWeights, "changed output 'logits'"), (_Crash, "crashed")],
                         ids=["invalid", "drift", "crash"])
def test_bad_pass_fails_naming_it(bad: type[Pass], says: str) -> None:
    mgr, model = _manager(keep_going=False)
    with pytest.raises(PassFailed) as info:
        mgr.run(model, [bad()])
    assert f"'{bad.name}'" in info.value.message
    assert says in info.value.message, info.value.message
    assert isinstance(info.value, EdgecError)


@pytest.mark.parametrize("bad", [_DropProducer, _ScaleWeights, _Crash], ids=["invalid", "drift", "crash"])
def test_keep_going_rolls_back(bad: type[Pass]) -> None:
    from edgec.pass_infra import parse_spec

    mgr, model = _manager(keep_going=True)
    before = model_io.to_bytes(model)
    out = mgr.run(model, [bad(), parse_spec("fuse-bn")])
    statuses = {r.name: r.status for r in mgr.records}
    assert statuses[bad.name] == "rolled-back"
    assert statuses["fuse-bn"] == "ok"
    # The rolled-back pass left no trace: what fuse-bn saw was the input model.
    assert mgr.records[-1].drift is not None and mgr.records[-1].drift.max_rel < 1e-4
    assert "BatchNormalization" not in [n.op_type for n in out.graph]
    assert len(before) > 0


def test_dynamic_dims_compile_without_pinning(tmp_path: Path) -> None:
    """Symbolic batch and spatial dims stay symbolic: cleanup and fusions need no fixed sizes."""
    rng = np.random.default_rng(0)
    c = 4
    inits = [numpy_helper.from_array(rng.standard_normal((c, 3, 3, 3)).astype(np.float32), "w")]
    for name, arr in (("g", rng.uniform(0.5, 1.5, c)), ("b", rng.standard_normal(c)), ("m", rng.standard_normal(c)),
                      ("v", rng.uniform(0.5, 2.0, c))):
        inits.append(numpy_helper.from_array(arr.astype(np.float32), name))
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
         helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["bn"], name="bn"),
         helper.make_node("Relu", ["bn"], ["y"], name="relu")], "dyn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", c, "H", "W"])], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    _write(m, tmp_path / "dyn.onnx")
    # Real sizes come from the data (two sizes, two batch sizes), not from --shape.
    np.savez(tmp_path / "a.npz", x=rng.standard_normal((1, 2, 3, 20, 12)).astype(np.float32))
    res = edgec.compile(str(tmp_path / "dyn.onnx"), calib=str(tmp_path / "a.npz"), out_dir=str(tmp_path / "out"),
                        options={"bench_runs": 0})
    assert all(r.status == "ok" for r in res.records)
    out = onnx.load(str(tmp_path / "out" / "model.onnx"))
    assert [n.op_type for n in out.graph.node] == ["Conv", "Relu"]
    dims = [d.dim_param or d.dim_value for d in out.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["N", 3, "H", "W"]
    # The compiled model still takes any size, and matches the original there.
    import onnxruntime as ort

    x = rng.standard_normal((3, 3, 7, 9)).astype(np.float32)
    ref = ort.InferenceSession(str(tmp_path / "dyn.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    new = ort.InferenceSession(str(tmp_path / "out" / "model.onnx"),
                               providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.max(np.abs(new - ref)) <= 1e-4 * np.max(np.abs(ref)) + 1e-6


@pytest.mark.parametrize("case_id", ["truncated", "npz-missing-input"])
def test_subprocess_exit_code_and_no_traceback(case_id: str, tmp_path: Path) -> None:
    """The real entry point: exit status 2 and one line on stderr, no Python traceback."""
    case = next(c for c in CASES if c.id == case_id)
    w = _workdir(tmp_path)
    argv = case.setup(w)
    before = _tree(w / "out")
    res = subprocess.run([sys.executable, "-m", "edgec.cli", *argv], check=False, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("edgec: error: "), res.stderr
    assert "Traceback" not in res.stderr
    assert _tree(w / "out") == before


def test_staged_dir_leaves_output_alone_on_failure(tmp_path: Path) -> None:
    """model_io.staged_dir: all-or-nothing writes into -o (what api.compile should write through)."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.onnx").write_text("old")
    with pytest.raises(EdgecError) as info, model_io.staged_dir(out) as stage:
        (stage / "model.onnx").write_text("new")
        raise OSError(28, "No space left on device")
    assert "-o" in info.value.message and str(out) in info.value.message and info.value.hint
    assert (out / "model.onnx").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp folder left behind
    with model_io.staged_dir(out) as stage:
        (stage / "model.onnx").write_text("new")
        (stage / "report.json").write_text("{}")
    assert (out / "model.onnx").read_text() == "new" and (out / "report.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    # A writer's error names the final folder, not the temp one.
    with pytest.raises(EdgecError) as info, model_io.staged_dir(out) as stage:
        raise EdgecError(f"{stage}/model.onnx: cannot write (No space left on device)")
    assert str(out / "model.onnx") in info.value.message and ".tmp" not in info.value.message


# -- internal errors exit 1, naming the pass; -v shows the traceback -------------------------------------

@pytest.mark.parametrize(("bad", "says"), [(_Crash, "crashed: ZeroDivisionError: boom"),
                                           (_DropProducer, "produced an invalid model"),
                                           (_ScaleWeights, "changed output 'logits'")],
                         ids=["crash", "invalid", "drift"])
def test_pass_bug_exits_1_naming_the_pass(bad: type[Pass], says: str, tmp_path: Path, monkeypatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    from edgec import pass_infra

    pass_infra.registry()  # load the real passes first
    monkeypatch.setitem(pass_infra._REGISTRY, bad.name, dataclasses.dataclass(bad))
    out = tmp_path / "out"
    argv = ["compile", str(DIGITS), "--calib", str(DIGITS_SAMPLES), "-p", f"fuse-bn,{bad.name}", "-o", str(out),
            "-q"]
    code = cli.main(argv)
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert code == 1, err  # edgec's bug, not the user's mistake (2)
    assert len(err) == 1 and err[0].startswith("edgec: internal error: "), err
    assert f"'{bad.name}'" in err[0] and says in err[0], err[0]
    assert not out.exists()  # nothing half-written
    assert cli.main([*argv, "-v"]) == 1
    verbose = capsys.readouterr().err
    assert "Traceback" in verbose and f"'{bad.name}'" in verbose
    if bad is _Crash:
        assert "ZeroDivisionError" in verbose and "raise ZeroDivisionError" in verbose  # the pass's own frame


def test_budget_miss_exits_3(tmp_path: Path, monkeypatch, capsys: pytest.CaptureFixture[str]) -> None:
    """BudgetNotMet (raised by the mixed-precision search once the best model is written) -> exit 3, one line."""
    from edgec import mixed_precision
    from edgec.errors import EXIT_BUDGET, BudgetNotMet

    def miss(*args, **kwargs):
        raise BudgetNotMet("--min-sqnr 200: best found 31.2 dB (model written to out/)")

    monkeypatch.setattr(mixed_precision, "run_search", miss)
    code = cli.main(["compile", str(DIGITS), "-t", "cpu-int8", "--calib", str(DIGITS_SAMPLES), "--min-sqnr", "200",
                     "-o", str(tmp_path / "out"), "-q"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert code == EXIT_BUDGET == 3, err
    assert len(err) == 1 and err[0].startswith("edgec: error: --min-sqnr 200"), err


def test_recompile_into_the_same_folder_leaves_nothing_stale(tmp_path: Path) -> None:
    """-o: what the earlier run wrote and this one does not is removed (listed in its report.json); a file
    of the user's in the folder is never touched."""
    import json

    out = tmp_path / "out"
    first = edgec.compile(DIGITS, target="tflite-fp32", calib=str(DIGITS_SAMPLES), out_dir=out,
                          options={"bench_runs": 0})
    assert (out / "model.tflite").exists() and first.artifacts is not None
    assert "model.tflite" in json.loads((out / "report.json").read_text())["files_written"]
    (out / "mine.txt").write_text("the user's")
    second = edgec.compile(DIGITS, target="cpu-fp32", calib=str(DIGITS_SAMPLES), out_dir=out,
                           options={"bench_runs": 0})
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt", "model.onnx", "report.html", "report.json"]
    assert second.artifacts is not None and any("model.tflite" in n for n in second.artifacts.notes)
    # A third run writing the same files removes nothing.
    third = edgec.compile(DIGITS, target="cpu-fp32", calib=str(DIGITS_SAMPLES), out_dir=out,
                          options={"bench_runs": 0})
    assert third.artifacts is not None and not any("removed" in n for n in third.artifacts.notes)
    assert (out / "mine.txt").read_text() == "the user's"
