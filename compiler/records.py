"""Records: what every pass and backend leaves behind. The report is a list of these."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any


@dataclasses.dataclass
class Summary:
    """Cheap structural figures of a model."""

    nodes: int
    ops: dict[str, int]
    params: int
    macs: int
    bytes: int
    opset: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


COLLAPSE_DB = 10.0  # below this per-sample SQNR the noise is a third of the signal's amplitude
CONFIDENT = 0.8  # a top-1 flip where either model gives its class this probability is a wrong answer


@dataclasses.dataclass
class Drift:
    """Numeric drift of a model's outputs against a reference on the same inputs (worst output)."""

    max_abs: float
    max_rel: float  # max |a - b| / max |a|, per output; the worst output
    sqnr_db: float  # 10 log10(sum a^2 / sum (a-b)^2); inf when identical
    cosine: float
    top1: float | None = None  # argmax agreement when the output looks like logits
    worst_output: str = ""
    per_output: dict[str, dict[str, float | None]] = dataclasses.field(default_factory=dict)
    # The spread an aggregate hides, one figure per sample (its worst output). Sample numbers are the
    # positions in the user's data (``indices``), so "sample 13" is the 14th array of their .npz.
    samples: int = 0
    sqnr_min: float | None = None
    sqnr_p10: float | None = None
    sqnr_median: float | None = None
    worst_sample: int | None = None
    below_10db: int = 0
    flips: list[int] = dataclasses.field(default_factory=list)  # samples whose top-1 class changed
    confident_flips: list[int] = dataclasses.field(default_factory=list)  # ... with either side >= 0.8 sure
    per_sample_sqnr: list[float] = dataclasses.field(default_factory=list)
    sample_indices: list[int] = dataclasses.field(default_factory=list)  # empty: 0, 1, 2 ...

    def budget_figure(self, on: str) -> float:
        """The SQNR a budget is checked against: the aggregate (``mean``), the 10th percentile (``p10``)
        or the worst sample (``min``)."""
        figure = {"mean": self.sqnr_db, "p10": self.sqnr_p10, "min": self.sqnr_min}[on]
        return self.sqnr_db if figure is None else figure

    def collapsed(self) -> list[int]:
        """Samples on which the candidate is no longer the model: SQNR < 10 dB or a confident top-1 flip."""
        low = [i for i, s in zip(self.indices(), self.per_sample_sqnr) if s < COLLAPSE_DB]
        return sorted(set(low) | set(self.confident_flips))

    def indices(self) -> list[int]:
        return self.sample_indices or list(range(len(self.per_sample_sqnr)))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class PassRecord:
    name: str
    params: dict[str, Any]
    exact: bool
    seconds: float
    changed: bool
    summary: Summary
    drift: Drift | None
    status: str = "ok"  # ok | rolled-back | failed
    message: str = ""
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    # Node-level diff against the model before the pass (edgec.graphdiff), computed by the manager.
    diff: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return d


@dataclasses.dataclass
class Artifacts:
    """What a backend wrote and measured.

    ``files``: role -> path (e.g. {"model": out/model.onnx, "script": out/build_engine.sh}).
    ``figures``: measured numbers (latency_ms, bytes, drift, op histogram ...) for the report.
    ``notes``: plain sentences for a person (e.g. "engine not built: TensorRT not available").
    """

    backend: str
    files: dict[str, Path] = dataclasses.field(default_factory=dict)
    figures: dict[str, Any] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "files": {k: str(v) for k, v in self.files.items()},
                "figures": self.figures, "notes": self.notes}
