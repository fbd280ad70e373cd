"""The pass protocol: registry, typed parameters parsed from ``name:arg:key=value``
(PassContext lives in edgec.context).

A pass is a dataclass whose fields are its parameters. ``register`` records its CLI name and whether
it is exact (outputs must stay within 1e-4 relative) or lossy (its drift is reported and budgeted).
The manager (edgec.manager) sequences passes and records them; passes never measure themselves.
"""

from __future__ import annotations

import dataclasses
import importlib
import typing
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar

import onnx_ir as ir

from edgec.context import Feed, PassContext  # noqa: F401 - Feed re-exported: passes import both from here
from edgec.errors import EdgecError


class Pass:
    """Base of every pass. Subclasses are dataclasses; their fields are the pass parameters."""

    name: ClassVar[str] = ""
    exact: ClassVar[bool] = True
    #: the manager upgrades the model to at least this default-domain opset before ``apply``.
    min_opset: ClassVar[int] = 0

    def apply(self, model: ir.Model, ctx: PassContext) -> bool:
        """Rewrite ``model`` in place; return whether anything changed."""
        raise NotImplementedError

    def is_exact(self) -> bool:
        """Whether this instance must preserve outputs (a lossy pass may be exact for some params)."""
        return self.exact

    @property
    def params(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)} if dataclasses.is_dataclass(self) else {}

    def spec(self) -> str:
        args = [f"{k}={v}" for k, v in self.params.items()]
        return ":".join([self.name, *args])


_REGISTRY: dict[str, type[Pass]] = {}


def register(name: str, *, exact: bool) -> Callable[[type[Pass]], type[Pass]]:
    """Class decorator: make the class a dataclass (if it is not yet) and register it as ``name``."""

    def wrap(cls: type[Pass]) -> type[Pass]:
        if not dataclasses.is_dataclass(cls):
            cls = dataclasses.dataclass(cls)
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise AssertionError(f"pass name {name!r} registered twice")
        if not (cls.__doc__ or "").strip():
            raise AssertionError(f"pass {name!r} needs a docstring")
        cls.name = name
        cls.exact = exact
        _REGISTRY[name] = cls
        return cls

    return wrap


def _load_all() -> None:
    importlib.import_module("edgec.passes")


def registry() -> dict[str, type[Pass]]:
    _load_all()
    return dict(sorted(_REGISTRY.items()))


def names() -> list[str]:
    return list(registry())


def doc_line(cls: type[Pass]) -> str:
    return (cls.__doc__ or "").strip().splitlines()[0]


def _convert(raw: str, hint: Any, pass_name: str, field: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union or (origin is not None and type(None) in args):
        if raw.lower() in ("none", ""):
            return None
        hint = next(a for a in args if a is not type(None))
        origin = typing.get_origin(hint)
    try:
        if hint is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if hint is int:
            return int(raw)
        if hint is float:
            return float(raw)
        if origin in (tuple, list):
            item = typing.get_args(hint)[0] if typing.get_args(hint) else str
            items = [_convert(p, item, pass_name, field) for p in raw.split("+") if p]
            return tuple(items) if origin is tuple else items
        return raw
    except ValueError:
        tname = getattr(hint, "__name__", str(hint))
        raise EdgecError(f"pass '{pass_name}': parameter '{field}' wants {tname}, got {raw!r}") from None


def parse_spec(spec: str) -> Pass:
    """``'prune:channels:0.3'`` or ``'prune:mode=channels:ratio=0.3'`` -> a configured pass instance.

    List parameters take ``+``-separated items (``quantize:exclude=Conv_0+Conv_9``).
    """
    name, *raw_args = spec.strip().split(":")
    reg = registry()
    if name not in reg:
        raise EdgecError(f"unknown pass '{name}'", hint="`edgec passes` lists them")
    cls = reg[name]
    fields = [f for f in dataclasses.fields(cls) if f.init]  # type: ignore[arg-type]  # @register made it one
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    positional = iter(fields)
    for raw in raw_args:
        if "=" in raw:
            key, val = raw.split("=", 1)
            key = key.replace("-", "_")
            match = [f for f in fields if f.name == key]
            if not match:
                known = ", ".join(f.name for f in fields) or "none"
                raise EdgecError(f"pass '{name}' has no parameter '{key}'", hint=f"its parameters: {known}")
            field = match[0]
        else:
            nxt = next(positional, None)
            if nxt is None:
                raise EdgecError(f"pass '{name}': too many parameters in {spec!r}")
            field, val = nxt, raw
        kwargs[field.name] = _convert(val, hints.get(field.name, str), name, field.name)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise EdgecError(f"pass '{name}': {exc}") from None


def parse_pipeline(text: str | Sequence[str]) -> list[Pass]:
    specs = [s for s in (text.split(",") if isinstance(text, str) else text) if s.strip()]
    if not specs:
        raise EdgecError("empty pass list", hint="e.g. --passes fold,fuse-bn,dce")
    return [parse_spec(s) for s in specs]


def iter_passes() -> Iterator[tuple[str, type[Pass]]]:
    yield from registry().items()
