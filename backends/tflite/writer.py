"""Build a TFLite flatbuffer with the schema's Python object API (no TensorFlow).

The object classes (ModelT, SubGraphT, TensorT, ...) ship in ``ai_edge_litert.schema_py_generated``;
``Builder`` collects tensors, constant buffers, operator codes and operators, then packs a version-3
model with file identifier "TFL3". Rules of the format this module keeps:
  * buffer 0 is the empty sentinel that every non-constant tensor points at;
  * builtin codes >= 127 go in ``builtinCode`` with ``deprecatedBuiltinCode`` = 127
    (PLACEHOLDER_FOR_GREATER_OP_CODES); below 127 both fields hold the code;
  * identical constant payloads share one buffer (the converter does the same), which keeps the file
    small when e.g. several ops read the same axis vector.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema

BuiltinOp = schema.BuiltinOperator
Options = schema.BuiltinOptions
ActFn = schema.ActivationFunctionType
Padding = schema.Padding

_TENSOR_TYPE = {
    np.dtype(np.float32): schema.TensorType.FLOAT32,
    np.dtype(np.float16): schema.TensorType.FLOAT16,
    np.dtype(np.int32): schema.TensorType.INT32,
    np.dtype(np.int64): schema.TensorType.INT64,
    np.dtype(np.int8): schema.TensorType.INT8,
    np.dtype(np.uint8): schema.TensorType.UINT8,
    np.dtype(np.int16): schema.TensorType.INT16,
    np.dtype(np.bool_): schema.TensorType.BOOL,
}

# Reverse lookups for op names in reports (BuiltinOperator is a plain class of int constants).
OP_NAMES: dict[int, str] = {v: k for k, v in vars(BuiltinOp).items() if not k.startswith("_") and isinstance(v, int)}

# The options table type each builtin op expects; ops absent here take no options.
_OPTIONS_TYPE: dict[str, int] = {
    "Conv2DOptionsT": Options.Conv2DOptions,
    "DepthwiseConv2DOptionsT": Options.DepthwiseConv2DOptions,
    "TransposeConvOptionsT": Options.TransposeConvOptions,
    "FullyConnectedOptionsT": Options.FullyConnectedOptions,
    "Pool2DOptionsT": Options.Pool2DOptions,
    "ConcatenationOptionsT": Options.ConcatenationOptions,
    "AddOptionsT": Options.AddOptions,
    "SubOptionsT": Options.SubOptions,
    "MulOptionsT": Options.MulOptions,
    "DivOptionsT": Options.DivOptions,
    "SoftmaxOptionsT": Options.SoftmaxOptions,
    "ReducerOptionsT": Options.ReducerOptions,
    "ReshapeOptionsT": Options.ReshapeOptions,
    "ResizeBilinearOptionsT": Options.ResizeBilinearOptions,
    "ResizeNearestNeighborOptionsT": Options.ResizeNearestNeighborOptions,
    "StridedSliceOptionsT": Options.StridedSliceOptions,
    "SplitOptionsT": Options.SplitOptions,
    "SplitVOptionsT": Options.SplitVOptions,
    "LeakyReluOptionsT": Options.LeakyReluOptions,
    "BatchMatMulOptionsT": Options.BatchMatMulOptions,
    "TransposeOptionsT": Options.TransposeOptions,
    "PadOptionsT": Options.PadOptions,
    "PadV2OptionsT": Options.PadV2Options,
    "MirrorPadOptionsT": Options.MirrorPadOptions,
    "GatherOptionsT": Options.GatherOptions,
    "SqueezeOptionsT": Options.SqueezeOptions,
    "DequantizeOptionsT": Options.DequantizeOptions,
    "QuantizeOptionsT": Options.QuantizeOptions,
    "HardSwishOptionsT": Options.HardSwishOptions,
    "SliceOptionsT": Options.SliceOptions,
    "MaximumMinimumOptionsT": Options.MaximumMinimumOptions,
    "ExpandDimsOptionsT": Options.ExpandDimsOptions,
    "CastOptionsT": Options.CastOptions,
    "GeluOptionsT": Options.GeluOptions,
}


def options(name: str, **fields: Any) -> Any:
    """An options object by class name, e.g. ``options("Conv2DOptionsT", strideH=2)``."""
    obj = getattr(schema, name)()
    for key, val in fields.items():
        if not hasattr(obj, key):
            raise AttributeError(f"{name} has no field {key!r}")
        setattr(obj, key, val)
    return obj


@dataclasses.dataclass(frozen=True)
class Quant:
    """Affine quantization of one tensor: real = scale * (q - zero_point), per tensor or per channel."""

    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    axis: int = 0

    @staticmethod
    def of(scale: Any, zero_point: Any, axis: int = 0) -> Quant:
        s = tuple(float(x) for x in np.atleast_1d(np.asarray(scale, dtype=np.float64)))
        z = tuple(int(x) for x in np.atleast_1d(np.asarray(zero_point)))
        if len(z) == 1 and len(s) > 1:
            z = z * len(s)
        return Quant(s, z, axis)

    @property
    def per_channel(self) -> bool:
        return len(self.scale) > 1

    def same(self, other: Quant | None, rtol: float = 1e-6) -> bool:
        return (other is not None and len(self.scale) == len(other.scale) and self.zero_point == other.zero_point
                and np.allclose(self.scale, other.scale, rtol=rtol, atol=0))


@dataclasses.dataclass
class TensorInfo:
    shape: tuple[int, ...]
    dtype: np.dtype
    quant: Quant | None
    const: np.ndarray | None
    name: str


class Builder:
    """Accumulates one subgraph and packs it into a .tflite model."""

    def __init__(self, description: str = "edgec") -> None:
        self.description = description
        self.tensors: list[schema.TensorT] = []
        self.info: list[TensorInfo] = []
        self.buffers: list[schema.BufferT] = [schema.BufferT()]  # buffer 0: the empty sentinel
        self._buffer_of: dict[tuple[str, bytes], int] = {}
        self._const_tensor: dict[tuple, int] = {}
        self.opcodes: list[schema.OperatorCodeT] = []
        self._opcode_index: dict[tuple[int, int], int] = {}
        self.operators: list[schema.OperatorT] = []
        self.op_kinds: list[int] = []
        self.inputs: list[int] = []
        self.outputs: list[int] = []
        self._names: set[str] = set()

    # -- tensors ---------------------------------------------------------------------------------------
    def _unique(self, name: str) -> str:
        base, i = name or "t", 1
        name = base
        while name in self._names:
            name = f"{base}_{i}"
            i += 1
        self._names.add(name)
        return name

    def tensor(self, name: str, shape: tuple[int, ...], dtype: Any, quant: Quant | None = None) -> int:
        """A non-constant tensor (activation, graph input or output)."""
        return self._add(name, tuple(int(d) for d in shape), np.dtype(dtype), quant, None)

    def const(self, name: str, array: np.ndarray, quant: Quant | None = None) -> int:
        """A constant tensor; identical (payload, dtype, shape, quantization) constants are one tensor."""
        array = np.ascontiguousarray(array)
        key = (array.dtype.str, array.shape, hashlib.sha1(array.tobytes()).hexdigest(), quant)
        if key in self._const_tensor:
            return self._const_tensor[key]
        idx = self._add(name, array.shape, array.dtype, quant, array)
        self._const_tensor[key] = idx
        return idx

    def _add(self, name: str, shape: tuple[int, ...], dtype: np.dtype, quant: Quant | None,
             data: np.ndarray | None) -> int:
        if dtype not in _TENSOR_TYPE:
            raise TypeError(f"no TFLite tensor type for {dtype}")
        t = schema.TensorT()
        t.name = self._unique(name)
        t.shape = np.asarray(shape, dtype=np.int32)
        t.type = _TENSOR_TYPE[dtype]
        t.buffer = 0 if data is None else self._buffer(data)
        if quant is not None:
            q = schema.QuantizationParametersT()
            q.scale = np.asarray(quant.scale, dtype=np.float32)
            q.zeroPoint = np.asarray(quant.zero_point, dtype=np.int64)
            q.quantizedDimension = quant.axis
            t.quantization = q
        self.tensors.append(t)
        self.info.append(TensorInfo(shape, dtype, quant, data, t.name))
        return len(self.tensors) - 1

    def _buffer(self, data: np.ndarray) -> int:
        raw = np.ascontiguousarray(data).tobytes()
        key = (data.dtype.str, hashlib.sha1(raw).digest())
        if key not in self._buffer_of:
            b = schema.BufferT()
            b.data = np.frombuffer(raw, dtype=np.uint8) if raw else None
            self.buffers.append(b)
            self._buffer_of[key] = len(self.buffers) - 1
        return self._buffer_of[key]

    def i32(self, name: str, values: Any) -> int:
        """An int32 constant vector (axes, shapes, paddings): TFLite wants these as tensors, not options."""
        return self.const(name, np.asarray(values, dtype=np.int32))

    # -- operators -------------------------------------------------------------------------------------
    def op(self, code: int, inputs: list[int], outputs: list[int], opts: Any = None) -> None:
        """Append an operator; ``-1`` in ``inputs`` marks an omitted optional input (e.g. no bias)."""
        o = schema.OperatorT()
        o.opcodeIndex = self._opcode(code)
        o.inputs = np.asarray(inputs, dtype=np.int32)
        o.outputs = np.asarray(outputs, dtype=np.int32)
        if opts is not None:
            o.builtinOptionsType = _OPTIONS_TYPE[type(opts).__name__]
            o.builtinOptions = opts
        self.operators.append(o)
        self.op_kinds.append(code)

    def _opcode(self, code: int, version: int = 1) -> int:
        key = (code, version)
        if key not in self._opcode_index:
            oc = schema.OperatorCodeT()
            oc.builtinCode = code
            oc.deprecatedBuiltinCode = min(code, BuiltinOp.PLACEHOLDER_FOR_GREATER_OP_CODES)
            oc.version = version
            self.opcodes.append(oc)
            self._opcode_index[key] = len(self.opcodes) - 1
        return self._opcode_index[key]

    def histogram(self) -> dict[str, int]:
        hist: dict[str, int] = {}
        for code in self.op_kinds:
            name = OP_NAMES.get(code, str(code))
            hist[name] = hist.get(name, 0) + 1
        return dict(sorted(hist.items(), key=lambda kv: (-kv[1], kv[0])))

    # -- output ----------------------------------------------------------------------------------------
    def pack(self) -> bytes:
        self._set_op_versions()
        sub = schema.SubGraphT()
        sub.tensors = self.tensors
        sub.inputs = np.asarray(self.inputs, dtype=np.int32)
        sub.outputs = np.asarray(self.outputs, dtype=np.int32)
        sub.operators = self.operators
        sub.name = "main"
        model = schema.ModelT()
        model.version = 3
        model.operatorCodes = self.opcodes
        model.subgraphs = [sub]
        model.buffers = self.buffers
        model.description = self.description
        fb = flatbuffers.Builder(1024 + sum(b.data.size for b in self.buffers if b.data is not None))
        fb.Finish(model.Pack(fb), file_identifier=b"TFL3")
        return bytes(fb.Output())

    def _set_op_versions(self) -> None:
        """Every operator code is written as version 1. The runtime's op resolver registers a version
        range per op and rejects versions it does not know (e.g. PRELU has only version 1), while the
        kernels choose their arithmetic from the tensor types, not from the version number."""
        for oc in self.opcodes:
            oc.version = 1


def write_atomic(data: bytes, path: Path) -> None:
    """Write next to the destination and rename, so a reader never sees a half-written model."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
