"""Instruments: what the pass manager does around every pass, one class per concern (TVM's PassInstrument).

The manager (edgec.manager) runs a pass as ``p.bind(ctx)(model)`` and nothing else; everything it checks
or measures is an instrument with up to four hooks:

- ``enter(model, proto)``: once, on the input model (``Manager.start``); e.g. the float reference run.
- ``should_run(model, p)``: False skips the pass (no record); all instruments must agree to run it.
- ``run_before_pass(model, step)`` and ``run_after_pass(model, step)``: around each pass. They nest like
  context managers: before-hooks run last-to-first and after-hooks first-to-last, so the first instrument
  in the list sits closest to the pass (``Timing`` first times the pass alone, not the others' snapshots).
  An after-hook raises ``PassFailed`` to reject the pass (the manager then rolls back with ``keep_going``).
- ``forget()``: the model was replaced behind the instrument's back (a roll-back).

Each hook fills fields of the ``Step`` the manager turns into the pass's ``PassRecord``. ``default()``
builds the compile pipeline's set; a caller that needs less (sensitivity's candidates: validity only, no
drift) passes its own list to ``Manager(ctx, instruments=[...])``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from edgec import graphdiff, metrics, model_io, runtime
from edgec.context import HeldAside
from edgec.errors import EXIT_INTERNAL, EdgecError
from edgec.pass_infra import Feed, Pass, PassContext
from edgec.records import Drift, PassRecord, Summary

EXACT_RTOL = 1e-4
# Below this absolute error a difference is float32 summation order, whatever the output's scale (a
# sigmoid map that is ~0 everywhere on noise inputs would otherwise fail on 1e-7 differences).
EXACT_ATOL = 1e-6
# Scoring the held-aside set: its float reference run may take this long (each later run costs about
# the same), and its inputs plus reference outputs may hold this many bytes.
EVAL_SECONDS = 5.0
EVAL_BYTES = 256 * 2**20
EVAL_BATCH = 16


class PassFailed(EdgecError):
    """A pass crashed, broke the model (invalid, or ONNX Runtime cannot run it) or, being exact, changed its
    outputs. Each is a bug in edgec, not the user's mistake: the CLI exits EXIT_INTERNAL (1) naming the pass
    (``-v`` prints the traceback). A pass that finds bad input raises a plain EdgecError instead (exit 2)."""

    exit_code = EXIT_INTERNAL


@dataclasses.dataclass
class Step:
    """One pass as the instruments see it; the manager makes the record from it."""

    p: Pass
    index: int
    previous: PassRecord | None  # the record before this pass (the input's for the first pass)
    changed: bool = False
    # True when the pass changed nothing (and said so): validity, figures, outputs and drift are then the
    # previous record's. Serializing, checking, shape-inferring and running it again cost ResNet-18 ~4 s
    # per no-op pass.
    unchanged: bool = False
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    started: float = 0.0
    seconds: float = 0.0
    summary: Summary | None = None
    drift: Drift | None = None
    diff: dict[str, Any] | None = None
    _proto: onnx.ModelProto | None = None

    def proto(self, model: ir.Model) -> onnx.ModelProto:
        """The model after the pass, serialized once for every instrument that needs it."""
        if self._proto is None:
            self._proto = model_io.to_proto(model)
        return self._proto


class Instrument:
    """Base: every hook does nothing.

    ``judges``: the instrument checks the pass, so its crash is reported as the pass's failure (and rolled
    back with ``keep_going``), like the pass's own; any other instrument's crash is edgec's and propagates.
    """

    judges: ClassVar[bool] = False

    def enter(self, model: ir.Model, proto: onnx.ModelProto) -> None:
        pass

    def should_run(self, model: ir.Model, p: Pass) -> bool:
        return True

    def run_before_pass(self, model: ir.Model, step: Step) -> None:
        pass

    def run_after_pass(self, model: ir.Model, step: Step) -> None:
        pass

    def forget(self) -> None:
        pass


class OnStep(Instrument):
    """Tells a progress display which pass starts."""

    def __init__(self, callback: Callable[[str], None]) -> None:
        self.callback = callback

    def run_before_pass(self, model: ir.Model, step: Step) -> None:
        self.callback(step.p.name)


class Timing(Instrument):
    """Wall time of the pass itself (and the opset upgrade it asked for): the record's ``seconds``."""

    def run_before_pass(self, model: ir.Model, step: Step) -> None:
        step.started = time.perf_counter()

    def run_after_pass(self, model: ir.Model, step: Step) -> None:
        step.seconds = time.perf_counter() - step.started


class Validity(Instrument):
    """ONNX's checker (full: with shape inference) on the model after every pass that changed it."""

    judges = True

    def __init__(self, warn: Callable[[str], None] | None = None) -> None:
        # False when the input model itself fails ONNX's full check (shape inference) although ORT runs it.
        self.full_check = True
        self.warn = warn or (lambda message: None)

    def enter(self, model: ir.Model, proto: onnx.ModelProto) -> None:
        try:
            onnx.checker.check_model(model_io.checkable_proto(proto), full_check=True)
        except onnx.shape_inference.InferenceError as exc:
            # onnx's inference rejects some models ORT runs (MeanVarianceNormalization's function body
            # at IR 7, Ifs whose branches it types differently): passes are then held to the structural
            # check and to ORT running them, not blamed for the input's own inference errors.
            self.full_check = False
            self.warn(f"the input model fails ONNX shape inference ({model_io.first_line(exc)}); passes are checked "
                      "structurally and by running them in ONNX Runtime")
        except onnx.checker.ValidationError:
            pass  # a structural fault: the first changed pass reports it, as before

    def run_after_pass(self, model: ir.Model, step: Step) -> None:
        if step.unchanged:
            return
        try:
            # Big and external weights are swapped for typed inputs: the full check then works for
            # models on external data and above 2 GiB instead of being skipped.
            onnx.checker.check_model(model_io.checkable_proto(step.proto(model)), full_check=self.full_check)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
            raise PassFailed(f"pass '{step.p.name}' produced an invalid model: "
                             f"{str(exc).strip().splitlines()[0][:300]}",
                             hint="a bug in edgec: please report it; --keep-going skips the pass") from None


class DriftCheck(Instrument):
    """Runs the samples through ONNX Runtime after every pass: drift to the INPUT model for the record, and
    exactness (1e-4 relative) against the model before the pass for exact passes.

    Two sets of inputs: ``ctx.samples`` (a few calibration samples: exactness is checked on them, and passes
    may look at them) and the held-aside evaluation set, which no pass sees. A lossy pass, and every pass
    after one, is scored on the held-aside set (as many samples as ``eval_seconds`` of float runs allow, at
    most ``eval_cap``): its record's drift is the truth about inputs calibration never saw, with the spread.
    """

    judges = True

    def __init__(self, ctx: PassContext, *, eval_feeds: Iterable[Feed] | None = None,
                 eval_indices: Sequence[int] | None = None, eval_cap: int = 256,
                 eval_seconds: float = EVAL_SECONDS) -> None:
        self.ctx = ctx
        self.reference: list[Feed] | None = None
        self.final_outputs: list[Feed] | None = None
        # The held-aside set as given (lazy), then as scored: the feeds the budget allowed, their float
        # outputs and their positions in the user's data. Without one, drift is scored on ctx.samples.
        self._eval_source = eval_feeds
        self._eval_source_indices = list(eval_indices) if eval_indices is not None else None
        self.eval_cap, self.eval_seconds = eval_cap, eval_seconds
        self.eval_feeds: list[Feed] = []
        self.eval_reference: list[Feed] | None = None
        self.eval_indices: list[int] = []
        self.eval_truncated = ""  # why fewer than all held-aside samples were scored ("" when all were)
        self.lossy_seen = False

    def enter(self, model: ir.Model, proto: onnx.ModelProto) -> None:
        try:
            with model_io.ort_source(model, proto) as (source, external_dir):
                sess = runtime.session(source, optimization="basic", external_dir=external_dir)
                self.reference = runtime.run(sess, self.ctx.samples)
                self._score_reference(sess)
        except EdgecError:
            raise
        except Exception as exc:  # noqa: BLE001 - ORT's errors name the node at fault
            raise EdgecError(f"ONNX Runtime cannot run the input model: {str(exc).splitlines()[0][:300]}") from None
        self.final_outputs = self.reference
        self.ctx.held_aside = HeldAside(self.eval_feeds, self.eval_reference, self.eval_indices)

    def _score_reference(self, sess: ort.InferenceSession) -> None:
        """Run the float model on the held-aside set, in batches, until the time or memory budget or the
        cap is reached; the samples run are the ones every later lossy result is scored on."""
        if self._eval_source is None:
            self.eval_feeds, self.eval_reference = list(self.ctx.samples), self.reference
            self.eval_indices = list(range(len(self.eval_feeds)))
            return
        feeds: list[Feed] = []
        outputs: list[Feed] = []
        used, t0 = 0, time.perf_counter()
        source = iter(self._eval_source)
        while len(feeds) < self.eval_cap:
            chunk = [f for _, f in zip(range(min(EVAL_BATCH, self.eval_cap - len(feeds))), source)]
            if not chunk:
                break
            feeds += chunk
            outputs += run_batched(sess, chunk)
            used += sum(a.nbytes for f in chunk for a in f.values())
            used += sum(np.asarray(a).nbytes for o in outputs[-len(chunk):] for a in o.values())
            if time.perf_counter() - t0 > self.eval_seconds:
                self.eval_truncated = f"the {self.eval_seconds:g} s time budget"
                break
            if used > EVAL_BYTES:
                self.eval_truncated = f"the {EVAL_BYTES >> 20} MB memory budget"
                break
        else:
            self.eval_truncated = f"the cap of {self.eval_cap}"
        if self.eval_truncated and next(source, None) is None:
            self.eval_truncated = ""  # the budget ran out exactly at the last sample
        self.eval_feeds, self.eval_reference = feeds, outputs
        given = self._eval_source_indices
        self.eval_indices = given[:len(feeds)] if given is not None else list(range(len(feeds)))

    def run_after_pass(self, model: ir.Model, step: Step) -> None:
        if step.unchanged:
            step.drift = step.previous.drift if step.previous is not None else None
            return
        if self.reference is None:
            return
        p = step.p
        # Lossy, or after a lossy pass: the drift to the input model is scored on the held-aside set.
        scored = (not p.is_exact() or self.lossy_seen) and self._eval_source is not None
        self.lossy_seen = self.lossy_seen or not p.is_exact()
        try:
            with model_io.ort_source(model, step.proto(model)) as (source, external_dir):
                sess = runtime.session(source, optimization="basic", external_dir=external_dir)
                outputs = runtime.run(sess, self.ctx.samples)
                held = run_batched(sess, self.eval_feeds) if scored else None
        except Exception as exc:  # noqa: BLE001
            raise PassFailed(f"pass '{p.name}' produced a model ONNX Runtime cannot run: "
                             f"{str(exc).splitlines()[0][:300]}") from None
        check = metrics.drift(self.reference, outputs)
        d = check if held is None else metrics.drift(self.eval_reference or [], held, self.eval_indices)
        if p.is_exact():
            # Exactness is judged against the model before this pass, so an exact pass after a lossy
            # one (quantize, prune) is not blamed for the earlier drift.
            step_drift = check if self.final_outputs is self.reference else metrics.drift(self.final_outputs or [],
                                                                                          outputs)
            scale = step_drift.max_abs / step_drift.max_rel if step_drift.max_rel > 0 else 0.0
            if step_drift.max_abs > EXACT_RTOL * scale + EXACT_ATOL:
                raise PassFailed(f"exact pass '{p.name}' changed output '{step_drift.worst_output}' by "
                                 f"{step_drift.max_rel:.2e} relative (limit {EXACT_RTOL:g})",
                                 hint="--keep-going rolls the pass back and continues")
        step.drift = d
        self.final_outputs = outputs


class Figures(Instrument):
    """The model's figures after the pass (nodes, ops, params, MACs, bytes): the record's ``summary``."""

    def run_after_pass(self, model: ir.Model, step: Step) -> None:
        if step.unchanged and step.previous is not None:
            step.summary = step.previous.summary
        else:
            step.summary = metrics.summarize(model, step.proto(model))


class Diff(Instrument):
    """The node-level diff of every pass (edgec.graphdiff), for the record's ``diff``."""

    def __init__(self) -> None:
        self.differ = graphdiff.DiffInstrument()

    def run_before_pass(self, model: ir.Model, step: Step) -> None:
        self.differ.run_before_pass(model)

    def run_after_pass(self, model: ir.Model, step: Step) -> None:
        step.diff = self.differ.run_after_pass(model, changed=not step.unchanged)

    def forget(self) -> None:
        self.differ.forget()


class Dump(Instrument):
    """Writes the model after every pass into ``dump_dir`` (``--dump-dir``) as NN_pass.onnx."""

    def __init__(self, dump_dir: str | Path) -> None:
        self.dump_dir = Path(dump_dir)

    def run_after_pass(self, model: ir.Model, step: Step) -> None:
        model_io.save(model, self.dump_dir / f"{step.index:02d}_{step.p.name}.onnx")


def default(ctx: PassContext, *, check_drift: bool = True, diff: bool = True, dump_dir: str | Path | None = None,
            on_step: Callable[[str], None] | None = None, eval_feeds: Iterable[Feed] | None = None,
            eval_indices: Sequence[int] | None = None, eval_cap: int = 256,
            eval_seconds: float = EVAL_SECONDS) -> list[Instrument]:
    """The compile pipeline's instruments, innermost first: time, check, run and score, figure, diff, dump.

    ``default(ctx, check_drift=False, diff=False)`` is the cheap set for candidates a caller scores itself
    (time, validity, figures): no reference run, no ORT run per pass, no graph snapshots.
    """
    out: list[Instrument] = [Timing(), Validity(ctx.warn)]
    if check_drift and ctx.samples:
        out.append(DriftCheck(ctx, eval_feeds=eval_feeds, eval_indices=eval_indices, eval_cap=eval_cap,
                              eval_seconds=eval_seconds))
    out.append(Figures())
    if diff:
        out.append(Diff())
    if dump_dir:
        out.append(Dump(dump_dir))
    if on_step is not None:
        out.append(OnStep(on_step))
    return out


def run_batched(sess: ort.InferenceSession, feeds: Sequence[Feed]) -> list[Feed]:
    """Outputs per feed, computed ``EVAL_BATCH`` feeds per run when the model has a free batch axis that
    every input and output carries (one call instead of 16 halves ORT's per-run overhead on small models).
    Anything else (fixed batch, differing shapes, a batch-mixing output) runs feed by feed."""
    ins, outs = sess.get_inputs(), sess.get_outputs()
    free = all(m.shape and not isinstance(m.shape[0], int) for m in [*ins, *outs])
    if not free or len(feeds) < 2:
        return runtime.run(sess, feeds)
    names = [o.name for o in outs]
    results: list[Feed] = []
    for start in range(0, len(feeds), EVAL_BATCH):
        chunk = [runtime.input_feed(sess, f) for f in feeds[start:start + EVAL_BATCH]]
        first = chunk[0]
        # OrtValues (bfloat16, float8) and sequences cannot be stacked: those run feed by feed.
        if any(not isinstance(a, np.ndarray) for f in chunk for a in f.values()) or any(
                a.ndim == 0 or a.shape[0] != 1 for a in first.values()) or any(
                {k: a.shape for k, a in f.items()} != {k: a.shape for k, a in first.items()} for f in chunk):
            results += runtime.run(sess, feeds[start:start + EVAL_BATCH])
            continue
        stacked = sess.run(names, {k: np.concatenate([f[k] for f in chunk]) for k in first})
        if any(np.ndim(o) == 0 or np.shape(o)[0] != len(chunk) for o in stacked):
            results += runtime.run(sess, feeds[start:start + EVAL_BATCH])
            continue
        results += [{n: o[i:i + 1] for n, o in zip(names, stacked)} for i in range(len(chunk))]
    return results


def input_drift() -> Drift:
    """The input record's drift: the input model against itself."""
    return Drift(0.0, 0.0, math.inf, 1.0)
