"""PassContext: what a pass may read besides the model, and what passes hand each other, as typed fields.

Nothing here is a string-keyed protocol. The user's settings reach passes as their dataclass fields
(edgec.settings applies ``--set``/CLI flags to the pipeline's pass instances); the settings no pass owns
are ``BackendOptions`` and ``SchemeOverrides``. What one pass (or the driver) computes and a later pass or
the backend reads is one field each, named for what it holds:

  reference_outputs   the user's input model run on ``samples`` (the driver; drift, bias-correct's guard)
  held_aside          feeds calibration never saw, the input model's outputs on them, their positions
                      (the manager; backends score the artifact on them)
  entering_outputs    the model entering the running pass, run on ``samples`` (the manager; quantize's
                      method choice reads it instead of running the float model again)
  calibration         statistics quantize measured on the float model (the TensorRT backend's ranges)
  calib_union         statistics of a superset of tensors (the mixed-precision search calibrates once)
  shipped_float       the float model quantize received, as it would ship (HardSwish one op): what int8
                      must beat in speed, and what ``fallback=auto`` ships when int8 is slower
  float_reference     the float graph int8 was built from (HardSwish decomposed, node names matching the
                      quantized graph): what bias-correct and adaround fit against
  float_weights       {node name: float weight}: the lighter hand-over bias-correct also accepts
  quantized_weight_bits   the weight width quantize used (adaround rounds to the same grid)
  final_out_dir       the -o folder the staged artifacts move into (an earlier run's TensorRT timing cache)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgec.errors import EdgecError

if TYPE_CHECKING:
    import onnx_ir as ir

    from edgec.calib import TensorStats

Feed = dict[str, np.ndarray]


@dataclasses.dataclass
class BackendOptions:
    """Settings the backends read (no pass owns them); ``--set KEY=VALUE`` and the CLI flags fill them."""

    bench_runs: int = 30  # latency runs of the artifact (0: not timed)
    trt_version: str | None = None  # TensorRT the model is for; None: tensorrt_cache.DEFAULT_TRT_VERSION
    trt_profile: dict[str, Any] | None = None  # {input: [min, opt, max]} for dynamic inputs (--min-shape...)
    build_engine: bool = True  # try to build a TensorRT engine (--no-engine: False)
    io: str | None = None  # tflite-int8: "int8" or "float" model inputs/outputs (None: float)
    keep_nchw_io: bool = False  # tflite: keep ONNX (NCHW) layout at the boundary
    keep_names: bool = False  # ort: the file kept its long Q/DQ names on purpose (no note about qdq-compact)
    fallback: str = ""  # ort: "auto" ships the float model when the artifact's int8 is measured slower


@dataclasses.dataclass
class SchemeOverrides:
    """The user's overrides of the target's numeric scheme (targets.toml), read by quantize and backends."""

    weight_bits: int | None = None  # 7 or 8 (--set weight_bits=N)
    per_channel: bool | None = None  # --per-channel / --per-tensor


@dataclasses.dataclass
class CalibStats:
    """What ``calibrate`` measured: statistics of ``tensors`` on the float model over the calibration feeds."""

    tensors: tuple[str, ...]
    stats: dict[str, TensorStats]
    histogram: bool  # False: min/max only (a later request that needs histograms measures again)
    info: dict[str, Any]  # samples, tensors, seconds, peak_rss_mb: for the pass record


@dataclasses.dataclass
class HeldAside:
    """Feeds calibration never saw, the input model's outputs on them, and their positions in the user's data."""

    feeds: Sequence[Feed]
    reference: list[Feed] | None
    indices: list[int] | None


@dataclasses.dataclass
class PassContext:
    """What a pass may read besides the model. Nothing else: no globals, no CLI.

    ``samples``: a few real input feeds, used for drift and by passes that look at activations.
    ``calib``: calibration feeds (may be many; iterate, do not hold), or None when the user gave none.
    ``scheme``: the target's numeric scheme (a table from targets.toml), {} for float targets;
      ``overrides`` holds the user's changes to it.
    ``details``: the running pass writes what it decided here (per layer); the manager stores it in the
      pass's record and clears it for the next pass.
    The hand-over fields below are described in this module's docstring.
    """

    samples: list[Feed] = dataclasses.field(default_factory=list)
    calib: Sequence[Feed] | None = None
    scheme: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    target: Any = None
    backend: BackendOptions = dataclasses.field(default_factory=BackendOptions)
    overrides: SchemeOverrides = dataclasses.field(default_factory=SchemeOverrides)
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    warnings: list[str] = dataclasses.field(default_factory=list)
    progress: Callable[[str, int], Any] | None = None
    # The target runtime's timer for small models (serialized ONNX, one feed) -> median ms each, taken in
    # turn; None means ONNX Runtime. Set by the driver from the target's backend (a pass never imports one).
    layer_timer: Callable[[Sequence[bytes], Feed], list[float]] | None = None
    layer_runtime: str = "ONNX Runtime"
    # ---- handed from pass to pass (and to the backend): see the module docstring
    reference_outputs: list[Feed] | None = None
    held_aside: HeldAside | None = None
    entering_outputs: list[Feed] | None = None
    calibration: CalibStats | None = None
    calib_union: dict[str, TensorStats] | None = None
    shipped_float: bytes | None = None
    float_reference: bytes | ir.Model | None = None
    float_weights: dict[str, np.ndarray] | None = None
    quantized_weight_bits: int | None = None
    final_out_dir: Path | None = None

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)

    def calibration_feeds(self) -> Sequence[Feed]:
        """Calibration feeds, falling back to the sample feeds (with a warning) when none were given."""
        if self.calib is not None:
            return self.calib
        if not self.samples:
            raise EdgecError("this pass needs calibration data and none was given", hint="pass --calib DIR|FILE.npz")
        self.warn("no --calib given: calibrating on the sample inputs only")
        return self.samples
