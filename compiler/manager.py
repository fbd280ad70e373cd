"""The pass manager: run, validate, measure, record. Passes never measure themselves.

For each pass: run it, check the model (onnx checker, full), measure its figures, and run the sample
inputs through ONNX Runtime to compare the outputs with the INPUT model's. An exact pass whose drift
exceeds 1e-4 relative fails, naming the pass and the diverging output; with ``keep_going`` the pass
is rolled back and the pipeline continues.
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

import onnx
import onnx_ir as ir

from edgec import metrics, model_io, runtime
from edgec.errors import EdgecError
from edgec.graph import opset_version
from edgec.pass_infra import Feed, Pass, PassContext
from edgec.records import Drift, PassRecord

EXACT_RTOL = 1e-4
# Below this absolute error a difference is float32 summation order, whatever the output's scale (a
# sigmoid map that is ~0 everywhere on noise inputs would otherwise fail on 1e-7 differences).
EXACT_ATOL = 1e-6


class PassFailed(EdgecError):
    """A pass broke the model or, being exact, changed its outputs."""


class Manager:
    def __init__(self, ctx: PassContext, *, keep_going: bool = False, dump_dir: str | Path | None = None,
                 check_drift: bool = True, on_step: Callable[[str], None] | None = None) -> None:
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

    # -- measurement ------------------------------------------------------------------------------
    def _outputs(self, model: ir.Model, proto: onnx.ModelProto) -> list[Feed]:
        # Bytes plus the folder of the external data (ORT would look in the working directory), or a
        # temp file when the in-memory weights exceed the 2 GiB proto limit.
        with model_io.ort_source(model, proto) as (source, external_dir):
            sess = runtime.session(source, optimization="basic", external_dir=external_dir)
            return runtime.run(sess, self.ctx.samples)

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
                self.reference = self._outputs(model, proto)
            except EdgecError:
                raise
            except Exception as exc:  # noqa: BLE001 - ORT's errors name the node at fault
                raise EdgecError(f"ONNX Runtime cannot run the input model: {str(exc).splitlines()[0][:300]}") from None
            self.final_outputs = self.reference
        rec = PassRecord(name="input", params={}, exact=True, seconds=0.0, changed=False,
                         summary=metrics.summarize(model, proto),
                         drift=Drift(0.0, 0.0, math.inf, 1.0) if self.check_drift else None)
        self.records.append(rec)
        return rec

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
        self.ctx.cache["sample_outputs"] = self.final_outputs
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
                         summary=summary, drift=drift, details=dict(self.ctx.details))
        self.records.append(rec)
        if self.dump_dir is not None:
            model_io.save(model, self.dump_dir / f"{index:02d}_{p.name}.onnx")
        return model

    def _roll_back(self, p: Pass, backup: bytes, exc: EdgecError, seconds: float) -> ir.Model:
        """Restore the model from before ``p`` and record the pass as rolled back (``--keep-going``)."""
        restored = model_io.from_proto(onnx.ModelProto.FromString(backup))
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
        try:
            outputs = self._outputs(model, proto)
        except Exception as exc:  # noqa: BLE001
            raise PassFailed(f"pass '{p.name}' produced a model ONNX Runtime cannot run: "
                             f"{str(exc).splitlines()[0][:300]}") from None
        d = metrics.drift(self.reference, outputs)
        if p.is_exact():
            # Exactness is judged against the model before this pass, so an exact pass after a lossy
            # one (quantize, prune) is not blamed for the earlier drift.
            step = d if self.final_outputs is self.reference else metrics.drift(self.final_outputs or [], outputs)
            scale = step.max_abs / step.max_rel if step.max_rel > 0 else 0.0
            if step.max_abs > EXACT_RTOL * scale + EXACT_ATOL:
                raise PassFailed(f"exact pass '{p.name}' changed output '{step.worst_output}' by "
                                 f"{step.max_rel:.2e} relative (limit {EXACT_RTOL:g})",
                                 hint="--keep-going rolls the pass back and continues")
        return d, outputs


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
