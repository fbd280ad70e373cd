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
