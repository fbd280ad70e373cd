"""QuantScheme: the target's int8 numeric scheme (targets.toml ``[name.scheme]``), validated once."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from edgec.calib import Levels, levels
from edgec.errors import EdgecError
from edgec.passes.quantize.rules import RULES, RuntimeRules

PLACEMENTS = tuple(RULES)  # ort | tensorrt | tflite: the rule table each name picks (rules.py)


@dataclasses.dataclass(frozen=True)
class QuantScheme:
    """How weights, activations and biases are stored, and which runtime's fusions Q/DQ placement serves."""

    weight_dtype: str = "int8"
    weight_symmetric: bool = True
    per_channel: bool = True
    act_dtype: str = "uint8"
    act_symmetric: bool = False
    bias: str = "int32"  # int32 | float
    placement: str = "ort"  # ort | tensorrt | tflite: names the runtime's rule table (rules.py)
    softmax: bool = False  # quantize Softmax (TFLite always does; ORT keeps it float by default)
    # Weight width, chosen for the machine that RUNS the model, never read from the one that compiles it.
    # 7 on the portable ORT x86 target: without VNNI, MLAS multiplies u8 activations by s8 weights with
    # VPMADDUBSW, which adds two products into a saturating int16 (255*127*2 > 32767; the digits model
    # measured 35.6 dB simulated vs 10.4 dB in ORT's fused kernels); |w| <= 63 cannot saturate. VNNI/AMX
    # (VPDPBUSD), ARM SDOT/UDOT, TensorRT and XNNPACK accumulate in int32 and take the full 8 bits.
    weight_bits: int = 8

    @classmethod
    def from_mapping(cls, scheme: Mapping[str, Any]) -> QuantScheme:
        if scheme.get("precision", "int8") != "int8":
            raise EdgecError(f"quantize needs an int8 target scheme, this target's precision is "
                             f"'{scheme.get('precision')}'", hint="use --target cpu-int8, jetson-int8 or tflite-int8")
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in scheme.items() if k in known}
        s = cls(**kwargs)
        if s.weight_dtype != "int8":
            raise EdgecError(f"scheme weight_dtype '{s.weight_dtype}' is not supported", hint="int8")
        if s.act_dtype not in ("uint8", "int8"):
            raise EdgecError(f"scheme act_dtype '{s.act_dtype}' is not supported", hint="uint8 or int8")
        if s.bias not in ("int32", "float"):
            raise EdgecError(f"scheme bias '{s.bias}' is not supported", hint="int32 or float")
        if s.weight_bits not in (7, 8):
            raise EdgecError(f"scheme weight_bits {s.weight_bits!r} is not supported", hint="7 or 8")
        if s.placement not in PLACEMENTS:
            raise EdgecError(f"scheme placement '{s.placement}' is unknown", hint=" | ".join(PLACEMENTS))
        return s

    @property
    def rules(self) -> RuntimeRules:
        """The runtime's rule table placement and insertion follow."""
        return RULES[self.placement]

    @property
    def act_levels(self) -> Levels:
        return levels(self.act_dtype, self.act_symmetric)

    @property
    def act_np(self) -> type[np.integer]:
        return np.uint8 if self.act_dtype == "uint8" else np.int8
