"""The pass manager: run passes, let the instruments check and measure them, keep the records.

For each pass the manager binds the run's context and calls it as the onnx_ir pass it is
(``p.bind(ctx)(model)``); the instruments (edgec.instruments) around the call check the model (onnx
checker, full), run the sample inputs through ONNX Runtime to compare the outputs with the INPUT model's
(an exact pass whose drift exceeds 1e-4 relative fails, naming the pass and the diverging output), time
it, take its figures and its node-level diff, and dump it. With ``keep_going`` a failing pass is rolled
back and the pipeline continues. The default instruments are the compile pipeline's; ``instruments=``
replaces them (e.g. ``[instruments.Validity()]`` for a candidate that needs no drift).
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import onnx_ir as ir

from edgec import instruments as inst
from edgec import metrics, model_io
from edgec.errors import EdgecError
from edgec.graph import opset_version
from edgec.instruments import (  # noqa: F401 - re-exported: callers import them from here
    EVAL_BATCH,
    EVAL_BYTES,
    EVAL_SECONDS,
    EXACT_ATOL,
    EXACT_RTOL,
    PassFailed,
    run_batched,
)
from edgec.pass_infra import Feed, Pass, PassContext
from edgec.records import PassRecord


class Manager:
    def __init__(self, ctx: PassContext, *, keep_going: bool = False, dump_dir: str | Path | None = None,
                 check_drift: bool = True, on_step: Callable[[str], None] | None = None,
                 eval_feeds: Iterable[Feed] | None = None, eval_indices: Sequence[int] | None = None,
                 eval_cap: int = 256, eval_seconds: float = EVAL_SECONDS,
                 instruments: Sequence[inst.Instrument] | None = None) -> None:
        self.ctx = ctx
        self.keep_going = keep_going
        self.instruments = list(instruments) if instruments is not None else inst.default(
            ctx, check_drift=check_drift, dump_dir=dump_dir, on_step=on_step, eval_feeds=eval_feeds,
            eval_indices=eval_indices, eval_cap=eval_cap, eval_seconds=eval_seconds)
        self.records: list[PassRecord] = []
        drift = [i for i in self.instruments if isinstance(i, inst.DriftCheck)]
        self._drift = drift[0] if drift else None
        self.check_drift = self._drift is not None

    # -- what the drift instrument measured (None / empty without one) ----------------------------
    @property
    def reference(self) -> list[Feed] | None:
        return self._drift.reference if self._drift else None

    @property
    def final_outputs(self) -> list[Feed] | None:
        return self._drift.final_outputs if self._drift else None

    @property
    def eval_feeds(self) -> list[Feed]:
        return self._drift.eval_feeds if self._drift else []

    @property
    def eval_reference(self) -> list[Feed] | None:
        return self._drift.eval_reference if self._drift else None

    @property
    def eval_indices(self) -> list[int]:
        return self._drift.eval_indices if self._drift else []

    @property
    def eval_truncated(self) -> str:
        return self._drift.eval_truncated if self._drift else ""

    @property
    def full_check(self) -> bool:
        return all(i.full_check for i in self.instruments if isinstance(i, inst.Validity))

    # -- running ----------------------------------------------------------------------------------
    def start(self, model: ir.Model) -> PassRecord:
        """The input model's record; the instruments take what they need from it (the float reference)."""
        proto = model_io.to_proto(model)
        for i in self.instruments:
            i.enter(model, proto)
        rec = PassRecord(name="input", params={}, exact=True, seconds=0.0, changed=False,
                         summary=metrics.summarize(model, proto),
                         drift=inst.input_drift() if self.check_drift else None)
        self.records.append(rec)
        return rec

    def run(self, model: ir.Model, passes: Sequence[Pass]) -> ir.Model:
        if not self.records:
            self.start(model)
        for index, p in enumerate(passes, 1):
            if all(i.should_run(model, p) for i in self.instruments):
                model = self._run_one(model, p, index)
        return model

    def _run_one(self, model: ir.Model, p: Pass, index: int) -> ir.Model:
        step = inst.Step(p=p, index=index, previous=self.records[-1] if self.records else None)
        self.ctx.details = {}
        # The outputs of the model as it enters the pass, on ctx.samples (None without a drift check): a
        # lossy pass comparing its own candidates (quantize's method choice) reads them instead of running
        # the float model again.
        self.ctx.entering_outputs = self.final_outputs
        backup = model_io.to_bytes(model) if self.keep_going else None  # not timed as part of the pass
        for i in reversed(self.instruments):  # the first instrument sits closest to the pass
            i.run_before_pass(model, step)
        current: inst.Instrument | None = None  # the instrument whose after-hook runs (None: the pass)
        try:
            if p.min_opset and opset_version(model) < p.min_opset:
                model = model_io.ensure_opset(model, p.min_opset)
                step.details["opset_upgraded_to"] = p.min_opset
            result = p.bind(self.ctx)(model)
            model = result.model
            step.changed = bool(result.modified)
            step.details.update(getattr(result, "details", {}))
            step.unchanged = (not step.changed and "opset_upgraded_to" not in step.details
                              and len(self.records) > 1)
            for current in self.instruments:
                current.run_after_pass(model, step)
        except PassFailed as exc:
            if not self.keep_going or backup is None:
                raise
            return self._roll_back(step, backup, exc)
        except EdgecError:
            raise
        except Exception as exc:
            if current is not None and not current.judges:
                raise  # figures, diff, dump: a fault of the instrument, not of the pass
            # A crash inside a pass is a bug in edgec; keep the traceback for --verbose.
            err = PassFailed(f"pass '{p.name}' crashed: {type(exc).__name__}: {exc}",
                             hint="rerun with --verbose for the traceback; --keep-going skips the pass")
            err.__cause__ = exc
            err.traceback = traceback.format_exc()  # type: ignore[attr-defined]
            if not self.keep_going or backup is None:
                raise err from exc
            return self._roll_back(step, backup, err)
        summary = step.summary if step.summary is not None else metrics.summarize(model, step.proto(model))
        self.records.append(PassRecord(
            name=p.name, params=p.params, exact=p.is_exact(), seconds=step.seconds, changed=step.changed,
            summary=summary, drift=step.drift, details=dict(step.details), diff=step.diff))
        return model

    def _roll_back(self, step: inst.Step, backup: bytes, exc: EdgecError) -> ir.Model:
        """Restore the model from before the pass and record it as rolled back (``--keep-going``)."""
        p = step.p
        restored = model_io.from_bytes(backup)
        for i in self.instruments:
            i.forget()
        seconds = step.seconds or (time.perf_counter() - step.started if step.started else 0.0)
        self.records.append(PassRecord(
            name=p.name, params=p.params, exact=p.is_exact(), seconds=seconds, changed=False,
            summary=metrics.summarize(restored), drift=self.records[-1].drift, status="rolled-back",
            message=exc.message, details={**step.details, **self.ctx.details}))
        return restored
