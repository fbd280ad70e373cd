"""User settings (``--set KEY=VALUE``, the CLI flags, ``edgec.compile(options=...)``) -> typed places.

Every key names where it goes: a field of a pass in the pipeline (``exclude`` -> quantize's ``exclude``),
``BackendOptions``, ``SchemeOverrides``, or the driver itself (``preprocess``, ``equalize``,
``bias_correct``). A key nobody owns is a one-line error; a value of the wrong type too. A pass the
pipeline does not run ignores its keys (``--exclude`` on a float target changes nothing), as before.

A pass parameter written in the pipeline (``quantize:method=minmax``) wins over the setting; list
settings (``exclude``, ``a16``, ``prune_skip``) add to the pass's own list.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from edgec.context import BackendOptions, PassContext, SchemeOverrides
from edgec.errors import EdgecError
from edgec.pass_infra import Pass, registry


@dataclasses.dataclass(frozen=True)
class Place:
    owner: str  # a pass name, or "backend" / "scheme" / "driver"
    field: str
    extend: bool = False  # lists: add to the pass's own items instead of filling an unset field


@dataclasses.dataclass
class DriverOptions:
    """Settings the compile driver (edgec.api) reads itself."""

    preprocess: str | None = None  # image preprocessing preset or spec, for --calib/--samples folders
    equalize: bool = False  # insert equalize:clip=split before quantize
    bias_correct: bool = False  # insert the (empirical) bias-correct pass after quantize


def _same(owner: str, *names: str) -> dict[str, tuple[Place, ...]]:
    return {n: (Place(owner, n),) for n in names}


KEYS: dict[str, tuple[Place, ...]] = {
    "calib_method": (Place("quantize", "method"),),
    "exclude": (Place("quantize", "exclude", extend=True),),
    "a16": (Place("quantize", "a16", extend=True),),
    # quantize's fallback; the ORT backend also ships the float model when auto's int8 is measured slower
    "fallback": (Place("quantize", "fallback"), Place("backend", "fallback")),
    # the quantize pass's own analytic correction (auto: tried both ways on the samples); not the
    # bias-correct pass (``bias_correct``), which measures the shift empirically after quantize
    "analytic_bias_correction": (Place("quantize", "analytic_bias_correction"),),
    **_same("quantize", "share_concat", "int8_hardswish", "adaround", "layer_sqnr", "live_range"),
    "prune_skip": (Place("prune", "skip", extend=True),),
    **_same("prune", "reconstruct", "reconstruct_samples", "reconstruct_inputs", "reconstruct_positions",
            "reconstruct_ridge", "reconstruct_waves"),
    **{f"dw_{f}": (Place("depthwise", f),) for f in ("rank", "max_error", "min_macs", "layers", "latency", "min_sqnr")},
    "keep_names": (Place("qdq-compact", "keep_names"), Place("backend", "keep_names")),
    **_same("scheme", "weight_bits", "per_channel"),
    **_same("backend", "bench_runs", "trt_version", "trt_profile", "build_engine", "io", "keep_nchw_io"),
    **_same("driver", "preprocess", "equalize", "bias_correct"),
}
#: earlier names, still accepted
ALIASES = {"bias_correction": "analytic_bias_correction"}


@dataclasses.dataclass
class Settings:
    """The user's settings, checked and typed: per pass name its fields, and the typed rest."""

    passes: dict[str, dict[str, Any]]
    backend: BackendOptions
    overrides: SchemeOverrides
    driver: DriverOptions

    def configure(self, pipeline: Sequence[Pass]) -> list[Pass]:
        """Copies of the pipeline's passes with the settings in their fields (a pass's own parameter wins)."""
        out = []
        for p in pipeline:
            values = self.passes.get(p.name)
            if values:
                p = copy.copy(p)
                defaults = {f.name: f for f in dataclasses.fields(p)}  # type: ignore[arg-type]
                for name, value in values.items():
                    current = getattr(p, name)
                    if _place(p.name, name).extend:
                        setattr(p, name, [*(current or []), *value])
                    elif _is_default(defaults[name], current):
                        setattr(p, name, value)
            out.append(p)
        return out

    def context(self, **kwargs: Any) -> PassContext:
        """A PassContext carrying the backend options and scheme overrides."""
        return PassContext(backend=self.backend, overrides=self.overrides, **kwargs)


def resolve(options: Mapping[str, Any] | None) -> Settings:
    """Check every key and value of ``options``; raise a one-line EdgecError naming a key nobody reads."""
    passes: dict[str, dict[str, Any]] = {}
    typed: dict[str, dict[str, Any]] = {"backend": {}, "scheme": {}, "driver": {}}
    holders = {"backend": BackendOptions, "scheme": SchemeOverrides, "driver": DriverOptions}
    reg = registry()
    for raw_key, value in (options or {}).items():
        key = ALIASES.get(raw_key.replace("-", "_"), raw_key.replace("-", "_"))
        if key not in KEYS:
            near = difflib.get_close_matches(key, [*KEYS, *ALIASES], n=1)
            raise EdgecError(f"--set {raw_key}: no pass or backend reads this setting",
                             hint=(f"did you mean {near[0]}? " if near else "") + "README's Settings table lists every key")
        for place in KEYS[key]:
            cls: Any = holders.get(place.owner) or reg[place.owner]
            hint = typing.get_type_hints(cls)[place.field]
            converted = _convert(raw_key, value, hint)
            if place.owner in typed:
                typed[place.owner][place.field] = converted
            else:
                passes.setdefault(place.owner, {})[place.field] = converted
    return Settings(passes, BackendOptions(**typed["backend"]), SchemeOverrides(**typed["scheme"]),
                    DriverOptions(**typed["driver"]))


def _place(owner: str, field: str) -> Place:
    return next(p for places in KEYS.values() for p in places if p.owner == owner and p.field == field)


def _is_default(f: dataclasses.Field, value: Any) -> bool:
    if f.default is not dataclasses.MISSING:
        return bool(value == f.default)
    if f.default_factory is not dataclasses.MISSING:
        return bool(value == f.default_factory())
    return False


def _convert(key: str, value: Any, hint: Any) -> Any:
    """``value`` (from ``--set``: int, float, bool or str; from Python: anything) as type ``hint``."""
    args = typing.get_args(hint)
    if type(None) in args:
        inner = next(a for a in args if a is not type(None))
        # None is "unset" ("auto" for a bool | None field: analytic_bias_correction=auto tries both)
        words = ("none", "", "auto") if inner is bool else ("none", "")
        if value is None or (isinstance(value, str) and value.lower() in words):
            return None
        hint = inner
        args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if origin in (list, tuple):
        items = [p.strip() for p in value.replace("+", ",").split(",") if p.strip()] if isinstance(value, str) \
            else [str(v) for v in (value or [])]
        return tuple(items) if origin is tuple else items
    if hint is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return str(value).lower() in ("1", "true", "yes", "on")
        raise EdgecError(f"--set {key}={value}: expected true or false")
    if hint in (int, float):
        try:
            number = hint(value)
        except (TypeError, ValueError):
            number = None
        if number is None or isinstance(value, bool) or (hint is int and isinstance(value, float) and value != number):
            raise EdgecError(f"--set {key}={value!r}: expected a {'whole ' if hint is int else ''}number")
        return number
    if hint is str:
        return str(value)
    if typing.get_origin(hint) is dict and not isinstance(value, dict):
        raise EdgecError(f"--set {key}={value!r}: expected a table", hint="use --min-shape/--opt-shape/--max-shape")
    return value  # a dict (trt_profile): built by the CLI's --min/--opt/--max-shape parser
