"""Candidate evaluations of the sensitivity analysis and the mixed-precision search, on any executor.

A candidate is one (exclude, wide) configuration of a ``sensitivity.Quantizer``: quantize the float model
with those node names float and those tensors on 16-bit activations, run it in ONNX Runtime on the
held-aside feeds (and, for the search's acceptance rule, on a few calibration feeds) and score it against
the fp32 outputs. Candidates are independent of each other, so ``Pool`` runs them through
``build.Executor``: in-process, on ``-j N`` local processes or as Ray tasks. Every worker receives one
``Bench`` (plain data: the float model's bytes, the feeds, the fp32 outputs, the calibration statistics
and the range rule fixed on the all-int8 model) once, and each call is a pure function of it and of the
configuration, so the scores, and what the callers decide from them, are the same whatever ran them.
"""

from __future__ import annotations

import dataclasses
import pickle
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from edgec import runtime
from edgec.build import Executor
from edgec.errors import EdgecError
from edgec.pass_infra import Feed
from edgec.sensitivity import Evaluator, MetricFn, Quantizer, Score

if TYPE_CHECKING:  # Python 3.10 has no typing.Self
    from typing_extensions import Self

Config = tuple[Sequence[str], Sequence[str]]  # (exclude: node names kept float, wide: 16-bit tensors)


@dataclasses.dataclass
class Bench:
    """Everything a worker needs to evaluate candidates; sent once per worker, never a path."""

    token: str  # which live objects a worker process built from this bench (one cache per bench)
    quantizer: dict[str, Any]  # Quantizer.state()
    eval_feeds: list[Feed]
    reference: list[Feed]  # fp32 outputs on eval_feeds
    metric: str | MetricFn
    budget_on: str
    check_feeds: list[Feed]  # calibration feeds the search's acceptance rule is judged on ([] for none)
    check_reference: list[Feed]
    threads: int = 2  # ONNX Runtime threads per scoring session (1 when several workers share the cores)


@dataclasses.dataclass
class Outcome:
    score: Score  # on the held-aside feeds
    check_sqnr_db: float | None  # output SQNR on the bench's calibration feeds (None without them)
    size_bytes: int
    model: bytes | None  # the quantized model, when asked for


# Per process: the Quantizer and Evaluators built from a bench (or, in-process, the caller's own objects,
# so their memo of quantized configurations is shared with the caller).
_LIVE: dict[str, tuple[Quantizer, Evaluator, Evaluator | None]] = {}


def evaluate(bench: Bench, exclude: Sequence[str], wide: Sequence[str], want_model: bool) -> Outcome:
    """One candidate: quantize, run, score. A module-level function: executors pickle it by reference."""
    live = _LIVE.get(bench.token)
    if live is None:
        _LIVE.clear()  # one bench at a time per worker: a finished search's models are not kept
        check = Evaluator.from_reference(bench.check_feeds, bench.check_reference, "sqnr") \
            if bench.check_feeds else None
        live = (Quantizer.from_state(bench.quantizer),
                Evaluator.from_reference(bench.eval_feeds, bench.reference, bench.metric, bench.budget_on), check)
        _LIVE[bench.token] = live
    q, ev, cev = live
    model, _ = q(exclude, wide)
    from edgec import model_io

    data = model_io.to_bytes(model)
    sess = runtime.session(data, optimization="basic", threads=bench.threads)  # one session, both feed sets
    check = cev.score(data, sess).sqnr_db if cev is not None else None
    return Outcome(ev.score(data, sess), check, len(data), data if want_model else None)


class Pool:
    """Evaluates candidates of ``q`` (scored by ``ev``; ``cev``: the acceptance figure) on an executor.

    Use as a context manager; ``width`` is how many candidates run at once (1 in-process).
    """

    def __init__(self, q: Quantizer, ev: Evaluator, cev: Evaluator | None = None, *, jobs: int = 1,
                 use_ray: bool = False, address: str | None = None) -> None:
        self.q, self.ev, self.cev = q, ev, cev
        self.jobs, self.use_ray, self.address = jobs, use_ray, address
        self.token = uuid.uuid4().hex
        self.executor: Executor | None = None

    @property
    def parallel(self) -> bool:
        return self.jobs > 1 or self.use_ray

    def __enter__(self) -> Self:
        metric: str | MetricFn = self.ev.fn if self.ev.fn is not None else self.ev.metric_name
        if self.parallel and callable(metric):
            try:
                pickle.dumps(metric)
            except (pickle.PicklingError, AttributeError, TypeError):
                raise EdgecError("a metric given as a local Python function cannot be sent to worker processes",
                                 hint="give it as module:function, or run with jobs=1") from None
        q = self.q
        # Parallel workers score with one ORT thread each: N workers x 2 threads on N cores measure nothing
        # faster and oversubscribe the machine (the outputs do not depend on the thread count; tested).
        bench = Bench(self.token, q.state(), self.ev.feeds, self.ev.reference, metric, self.ev.budget_on,
                      self.cev.feeds if self.cev else [], self.cev.reference if self.cev else [],
                      threads=1 if self.parallel else 2)
        if not self.parallel:
            _LIVE[self.token] = (q, self.ev, self.cev)
        self.executor = Executor(self.jobs, self.use_ray, self.address, shared=bench).__enter__()
        return self

    @property
    def width(self) -> int:
        return self.executor.width if self.executor is not None else 1

    def submit(self, configs: Sequence[Config], want_model: bool = False) -> list[Callable[[], Outcome]]:
        """Start every configuration now; each callable returns its outcome (in-process: computes it then)."""
        assert self.executor is not None, "use Pool as a context manager"
        return [self.executor.submit(evaluate, list(ex), list(wide), want_model) for ex, wide in configs]

    def map(self, configs: Sequence[Config], want_model: bool = False) -> list[Outcome]:
        return [get() for get in self.submit(configs, want_model)]

    def __exit__(self, *exc: object) -> None:
        _LIVE.pop(self.token, None)
        if self.executor is not None:
            self.executor.__exit__(*exc)
