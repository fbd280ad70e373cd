"""Stand-ins for the ``tensorrt`` Python module, shaped like TensorRT 10.x and 11.x (test-only).

Each is a module object with exactly the attributes edgec's engine path touches, named and shaped as in
the real bindings (TensorRT Python API reference: Builder, NetworkDefinitionCreationFlag, BuilderFlag,
IBuilderConfig, OnnxParser, IOptimizationProfile, ITimingCache; and the 10.x -> 11.x migration guide's
"Removed Python APIs"): what 11.x removed is ABSENT here too (BuilderFlag.INT8/FP16,
Builder.platform_has_fast_fp16, NetworkDefinitionCreationFlag.EXPLICIT_BATCH), so touching it raises the
same AttributeError the real module raises. Injected with ``monkeypatch.setitem(sys.modules, "tensorrt", m)``.

The stand-in parser really reads the ONNX file (onnx.load) for the network's inputs, and fails the way
TensorRT's does on what the real parser rejects and we can check cheaply: a non-zero Q/DQ zero point
("TRT only supports symmetric quantization") and an op in ``unsupported``. The builder records every call
so a test can assert what edgec asked for (flags, network creation bits, profile, timing cache).
"""

from __future__ import annotations

import enum
import types
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper


class _Severity(enum.IntEnum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4


class Logger:
    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = (_Severity(i) for i in range(5))
    Severity = _Severity

    def __init__(self, min_severity: _Severity = _Severity.WARNING) -> None:
        self.min_severity = min_severity


class ParserError:
    """tensorrt.ParserError: code(), desc(), node(), node_name(), node_operator(); str() is its text."""

    def __init__(self, desc: str, node: int = -1, name: str = "", op: str = "") -> None:
        self._desc, self._node, self._name, self._op = desc, node, name, op

    def desc(self) -> str:
        return self._desc

    def node(self) -> int:
        return self._node

    def node_name(self) -> str:
        return self._name

    def node_operator(self) -> str:
        return self._op

    def code(self) -> int:
        return 8  # ErrorCode.UNSUPPORTED_NODE

    def __str__(self) -> str:
        return f"In node {self._node} with name: {self._name} and operator: {self._op} (parse): {self._desc}"


class _Tensor:
    def __init__(self, name: str, shape: tuple[int, ...]) -> None:
        self.name, self.shape = name, shape


class INetworkDefinition:
    def __init__(self, flags: int) -> None:
        self.flags = flags
        self._inputs: list[_Tensor] = []

    @property
    def num_inputs(self) -> int:
        return len(self._inputs)

    def get_input(self, index: int) -> _Tensor:
        return self._inputs[index]


class OnnxParser:
    def __init__(self, network: INetworkDefinition, logger: Logger) -> None:
        self.network, self.logger = network, logger
        self._errors: list[ParserError] = []

    @property
    def num_errors(self) -> int:
        return len(self._errors)

    def get_error(self, index: int) -> ParserError:
        return self._errors[index]

    def parse_from_file(self, model: str) -> bool:
        proto = onnx.load(model)
        inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
        for i, node in enumerate(proto.graph.node):
            if node.op_type in self._module.unsupported:
                self._errors.append(ParserError(f"No importer registered for op: {node.op_type}", i, node.name,
                                                node.op_type))
            if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2:
                zp = inits.get(node.input[2])
                if zp is not None and np.any(zp != 0):
                    self._errors.append(ParserError("Assertion failed: shiftIsAllZeros(zeroPoint) && \"TRT only "
                                                    "supports symmetric quantization - zeroPt must be all zeros\"",
                                                    i, node.name, node.op_type))
        if self._errors:
            return False
        names = {t.name for t in proto.graph.initializer}
        for v in proto.graph.input:
            if v.name in names:
                continue
            dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim)
            self.network._inputs.append(_Tensor(v.name, dims))
        return True

    _module: Any = None  # set per stand-in module


class ITimingCache:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def serialize(self) -> memoryview:
        return memoryview(b"TIMING" + self.data[-64:])


class IOptimizationProfile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple[tuple[int, ...], ...]] = {}

    def set_shape(self, input: str, min: tuple[int, ...], opt: tuple[int, ...], max: tuple[int, ...]) -> None:
        self.shapes[input] = (tuple(min), tuple(opt), tuple(max))


class IBuilderConfig:
    def __init__(self, module: Any) -> None:
        self._module = module
        self.flags: set[Any] = set()
        self.profiles: list[IOptimizationProfile] = []
        self._cache: ITimingCache | None = None

    def set_flag(self, flag: Any) -> None:
        if not isinstance(flag, self._module.BuilderFlag):
            raise TypeError("set_flag(): incompatible function arguments")
        self.flags.add(flag)

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, serialized_timing_cache: bytes) -> ITimingCache:
        return ITimingCache(bytes(serialized_timing_cache))

    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
        self._cache = cache
        return True

    def get_timing_cache(self) -> ITimingCache:
        assert self._cache is not None
        return self._cache


class Builder:
    def __init__(self, logger: Logger) -> None:
        self.logger = logger
        self._module.builders.append(self)
        self.networks: list[INetworkDefinition] = []
        self.configs: list[IBuilderConfig] = []

    _module: Any = None

    def create_network(self, flags: int = 0) -> INetworkDefinition:
        net = INetworkDefinition(int(flags))
        self.networks.append(net)
        return net

    def create_builder_config(self) -> IBuilderConfig:
        cfg = IBuilderConfig(self._module)
        self.configs.append(cfg)
        return cfg

    def create_optimization_profile(self) -> IOptimizationProfile:
        return IOptimizationProfile()

    def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig) -> memoryview | None:
        if self._module.builder_fails:
            return None  # what TensorRT returns when the build fails (the reason goes to its logger)
        dynamic = [t.name for t in network._inputs if any(d < 0 for d in t.shape)]
        if dynamic and not config.profiles:
            return None
        return memoryview(b"PLAN" + repr(sorted(str(f) for f in config.flags)).encode() + b"\0" * 64)


def _make(version: str, *, builder_flags: list[str], creation_flags: dict[str, int],
          platform_has_fast_fp16: bool) -> types.ModuleType:
    m = types.ModuleType("tensorrt")
    m.__version__ = version  # type: ignore[attr-defined]
    m.Logger = Logger  # type: ignore[attr-defined]
    m.ParserError = ParserError  # type: ignore[attr-defined]
    m.BuilderFlag = enum.Enum("BuilderFlag", {n: i for i, n in enumerate(builder_flags)})  # type: ignore[attr-defined]
    m.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", creation_flags)  # type: ignore[attr-defined]
    m.builders = []  # type: ignore[attr-defined]
    m.builder_fails = False  # type: ignore[attr-defined]
    m.unsupported = set()  # type: ignore[attr-defined]
    attrs: dict[str, Any] = {"_module": m}
    if platform_has_fast_fp16:
        attrs["platform_has_fast_fp16"] = property(lambda self: True)
    m.Builder = type("Builder", (Builder,), attrs)  # type: ignore[attr-defined]
    m.OnnxParser = type("OnnxParser", (OnnxParser,), {"_module": m})  # type: ignore[attr-defined]
    m.ITimingCache = ITimingCache  # type: ignore[attr-defined]
    m.IBuilderConfig = IBuilderConfig  # type: ignore[attr-defined]
    return m


def trt10(version: str = "10.3.0") -> types.ModuleType:
    """TensorRT 10.x: weak typing (INT8/FP16 flags, platform_has_fast_fp16), EXPLICIT_BATCH (=0, ignored)
    and STRONGLY_TYPED (=1) creation flags."""
    return _make(version, builder_flags=["FP16", "BF16", "INT8", "DEBUG", "GPU_FALLBACK", "REFIT",
                                         "DISABLE_TIMING_CACHE", "TF32", "SPARSE_WEIGHTS", "SAFETY_SCOPE",
                                         "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS",
                                         "DIRECT_IO", "REJECT_EMPTY_ALGORITHMS", "VERSION_COMPATIBLE",
                                         "EXCLUDE_LEAN_RUNTIME", "FP8", "ERROR_ON_TIMING_CACHE_MISS",
                                         "DISABLE_COMPILATION_CACHE", "STRIP_PLAN", "REFIT_IDENTICAL",
                                         "WEIGHT_STREAMING", "INT4"],
                 creation_flags={"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1}, platform_has_fast_fp16=True)


def trt11(version: str = "11.4.0") -> types.ModuleType:
    """TensorRT 11.x: strongly typed only. No precision builder flags, no platform_has_fast_fp16, no
    EXPLICIT_BATCH; STRONGLY_TYPED (=0) is kept for compatibility and ignored."""
    return _make(version, builder_flags=["DEBUG", "GPU_FALLBACK", "REFIT", "DISABLE_TIMING_CACHE", "TF32",
                                         "SPARSE_WEIGHTS", "SAFETY_SCOPE", "VERSION_COMPATIBLE",
                                         "EXCLUDE_LEAN_RUNTIME", "ERROR_ON_TIMING_CACHE_MISS",
                                         "DISABLE_COMPILATION_CACHE", "STRIP_PLAN", "REFIT_IDENTICAL",
                                         "WEIGHT_STREAMING"],
                 creation_flags={"STRONGLY_TYPED": 0, "PREFER_AOT_PYTHON_PLUGINS": 1,
                                 "PREFER_JIT_PYTHON_PLUGINS": 2}, platform_has_fast_fp16=False)
