"""The pass manager: run, validate, measure, record. Passes never measure themselves.

For each pass: run it, check the model (onnx checker, full), measure its figures, and run the sample
inputs through ONNX Runtime to compare the outputs with the INPUT model's. An exact pass whose drift
exceeds 1e-4 relative fails, naming the pass and the diverging output; with ``keep_going`` the pass
is rolled back and the pipeline continues.

Two sets of inputs: ``ctx.samples`` (a few calibration samples: exactness is checked on them, and passes
may look at them) and the held-aside evaluation set, which no pass sees. A lossy pass, and every pass
after one, is scored on the held-aside set (as many samples as ``eval_seconds`` of float runs allow, at
most ``eval_cap``): its record's drift is the truth about inputs calibration never saw, with the spread.
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from edgec import graphdiff, metrics, model_io, runtime
from edgec.context import HeldAside
from edgec.errors import EXIT_INTERNAL, EdgecError
from edgec.graph import opset_version
from edgec.pass_infra import Feed, Pass, PassContext
from edgec.records import Drift, PassRecord

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


class Manager:
    def __init__(self, ctx: PassContext, *, keep_going: bool = False, dump_dir: str | Path | None = None,
                 check_drift: bool = True, on_step: Callable[[str], None] | None = None,
                 eval_feeds: Iterable[Feed] | None = None, eval_indices: Sequence[int] | None = None,
                 eval_cap: int = 256, eval_seconds: float = EVAL_SECONDS) -> None:
        self.ctx = ctx
        self.keep_going = keep_going
        self.dump_dir = Path(dump_dir) if dump_dir else None
        self.check_drift = check_drift and bool(ctx.samples)
        self.on_step = on_step
        self.reference: list[Feed] | None = None
        self.records: list[PassRecord] = []
        # False when the input model itself fails ONNX's full check (shape inference) although ORT runs it.
        self.full_check = True
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
        self.differ = graphdiff.DiffInstrument()  # node-level diff of every pass, for the record

    # -- measurement ------------------------------------------------------------------------------
    def start(self, model: ir.Model) -> PassRecord:
        proto = model_io.to_proto(model)
        try:
            onnx.checker.check_model(model_io.checkable_proto(proto), full_check=True)
        except onnx.shape_inference.InferenceError as exc:
            # onnx's inference rejects some models ORT runs (MeanVarianceNormalization's function body
            # at IR 7, Ifs whose branches it types differently): passes are then held to the structural
            # check and to ORT running them, not blamed for the input's own inference errors.
            self.full_check = False
            self.ctx.warn(f"the input model fails ONNX shape inference ({_first_line(exc)}); passes are checked "
                          "structurally and by running them in ONNX Runtime")
        except onnx.checker.ValidationError:
            pass  # a structural fault: the first changed pass reports it, as before
        if self.check_drift:
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
        rec = PassRecord(name="input", params={}, exact=True, seconds=0.0, changed=False,
                         summary=metrics.summarize(model, proto),
                         drift=Drift(0.0, 0.0, math.inf, 1.0) if self.check_drift else None)
        self.records.append(rec)
        return rec

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

    # -- running ----------------------------------------------------------------------------------
    def run(self, model: ir.Model, passes: Sequence[Pass]) -> ir.Model:
        if not self.records:
            self.start(model)
        for index, p in enumerate(passes, 1):
            model = self._run_one(model, p, index)
        return model

    def _run_one(self, model: ir.Model, p: Pass, index: int) -> ir.Model:
        if self.on_step:
            self.on_step(p.name)
        backup = model_io.to_bytes(model) if self.keep_going else None
        self.ctx.details = {}
        # The outputs of the model as it enters the pass, on ctx.samples: a lossy pass comparing its own
        # candidates (quantize's method choice) reads them instead of running the float model again.
        self.ctx.entering_outputs = self.final_outputs
        self.differ.run_before_pass(model)
        t0 = time.perf_counter()
        try:
            if p.min_opset and opset_version(model) < p.min_opset:
                model = model_io.ensure_opset(model, p.min_opset)
                self.ctx.details["opset_upgraded_to"] = p.min_opset
            changed = bool(p.apply(model, self.ctx))
            seconds = time.perf_counter() - t0
            # An unchanged model (the pass says so, and ``changed`` is honest) after a checked pass has the
            # same validity, summary, outputs and drift: serializing, checking, shape-inferring (for the
            # MAC count) and running it again cost ResNet-18 ~4 s per no-op pass.
            unchanged = not changed and "opset_upgraded_to" not in self.ctx.details and len(self.records) > 1
            proto = None if unchanged else model_io.to_proto(model)
            if proto is None:
                drift, outputs = self.records[-1].drift, None
            else:
                self._validate(proto, p)
                drift, outputs = self._drift(model, proto, p)
        except PassFailed as exc:
            if not self.keep_going or backup is None:
                raise
            return self._roll_back(p, backup, exc, time.perf_counter() - t0)
        except EdgecError:
            raise
        except Exception as exc:
            # A crash inside a pass is a bug in edgec; keep the traceback for --verbose.
            err = PassFailed(f"pass '{p.name}' crashed: {type(exc).__name__}: {exc}",
                             hint="rerun with --verbose for the traceback; --keep-going skips the pass")
            err.__cause__ = exc
            err.traceback = traceback.format_exc()  # type: ignore[attr-defined]
            if not self.keep_going or backup is None:
                raise err from exc
            return self._roll_back(p, backup, err, time.perf_counter() - t0)
        if outputs is not None:
            self.final_outputs = outputs
        summary = self.records[-1].summary if proto is None else metrics.summarize(model, proto)
        rec = PassRecord(name=p.name, params=p.params, exact=p.is_exact(), seconds=seconds, changed=changed,
                         summary=summary, drift=drift, details=dict(self.ctx.details),
                         diff=self.differ.run_after_pass(model, changed=proto is not None))
        self.records.append(rec)
        if self.dump_dir is not None:
            model_io.save(model, self.dump_dir / f"{index:02d}_{p.name}.onnx")
        return model

    def _roll_back(self, p: Pass, backup: bytes, exc: EdgecError, seconds: float) -> ir.Model:
        """Restore the model from before ``p`` and record the pass as rolled back (``--keep-going``)."""
        restored = model_io.from_proto(onnx.ModelProto.FromString(backup))
        self.differ.forget()
        self.records.append(PassRecord(
            name=p.name, params=p.params, exact=p.is_exact(), seconds=seconds, changed=False,
            summary=metrics.summarize(restored), drift=self.records[-1].drift, status="rolled-back",
            message=exc.message, details=dict(self.ctx.details)))
        return restored

    def _validate(self, proto: onnx.ModelProto, p: Pass) -> None:
        try:
            # Big and external weights are swapped for typed inputs: the full check then works for
            # models on external data and above 2 GiB instead of being skipped.
            onnx.checker.check_model(model_io.checkable_proto(proto), full_check=self.full_check)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
            raise PassFailed(f"pass '{p.name}' produced an invalid model: {str(exc).strip().splitlines()[0][:300]}",
                             hint="a bug in edgec: please report it; --keep-going skips the pass") from None

    def _drift(self, model: ir.Model, proto: onnx.ModelProto,
               p: Pass) -> tuple[Drift | None, list[Feed] | None]:
        if not self.check_drift or self.reference is None:
            return None, None
        # Lossy, or after a lossy pass: the drift to the input model is scored on the held-aside set.
        scored = (not p.is_exact() or self.lossy_seen) and self._eval_source is not None
        self.lossy_seen = self.lossy_seen or not p.is_exact()
        try:
            with model_io.ort_source(model, proto) as (source, external_dir):
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
            step = check if self.final_outputs is self.reference else metrics.drift(self.final_outputs or [], outputs)
            scale = step.max_abs / step.max_rel if step.max_rel > 0 else 0.0
            if step.max_abs > EXACT_RTOL * scale + EXACT_ATOL:
                raise PassFailed(f"exact pass '{p.name}' changed output '{step.worst_output}' by "
                                 f"{step.max_rel:.2e} relative (limit {EXACT_RTOL:g})",
                                 hint="--keep-going rolls the pass back and continues")
        return d, outputs


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


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
        if any(not isinstance(a, np.ndarray) for f in chunk for a in f.values()) or any(a.ndim == 0 or a.shape[0] != 1 for a in first.values()) or any(
                {k: a.shape for k, a in f.items()} != {k: a.shape for k, a in first.items()} for f in chunk):
            results += runtime.run(sess, feeds[start:start + EVAL_BATCH])
            continue
        stacked = sess.run(names, {k: np.concatenate([f[k] for f in chunk]) for k in first})
        if any(np.ndim(o) == 0 or np.shape(o)[0] != len(chunk) for o in stacked):
            results += runtime.run(sess, feeds[start:start + EVAL_BATCH])
            continue
        results += [{n: o[i:i + 1] for n, o in zip(names, stacked)} for i in range(len(chunk))]
    return results
