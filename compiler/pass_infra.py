"""The pass protocol: registry, typed parameters parsed from ``name:arg:key=value``
(PassContext lives in edgec.context).

An edgec pass IS an onnx_ir pass: ``Pass`` subclasses ``onnx_ir.passes.InPlacePass``, so ``p(model)``
runs it (with onnx_ir's pre/postcondition hooks) and returns an ``EdgecPassResult`` -- onnx_ir's
``PassResult`` plus ``details`` (what the pass decided, per layer) and ``exact``. A pass is a dataclass
whose fields are its parameters. ``register`` records its CLI name and whether it is exact (outputs must
stay within 1e-4 relative) or lossy (its drift is reported and budgeted). ``register_ir_pass`` registers
an onnx_ir/onnxscript pass class (or any factory of one) under an edgec name, its constructor arguments
becoming the CLI parameters, so it runs through the manager's checks and records like any other pass.

How a pass reaches its PassContext: the manager *binds* it (``p.bind(ctx)``) before calling ``p(model)``.
onnx_ir fixes the call signature to ``call(model)``, and the context is per-run state (samples, calib,
scheme) that does not belong in the pass's parameters (its dataclass fields, which the record prints and
the CLI parses); a module-level "current context" would be a hidden global. Binding keeps both plain: an
unbound pass runs on an empty context, so ``FuseBatchNorm()(model)`` works like any onnx_ir pass. The
author's hook stays ``apply(model, ctx) -> bool`` (rewrite in place, say whether anything changed): it
is what ``call`` runs, and tests and composite passes call it directly with a context of their own.
The manager (edgec.manager) sequences passes and its instruments (edgec.instruments) check, time and
record them; passes never measure themselves.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import typing
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar

import onnx_ir as ir

from edgec.context import Feed, PassContext  # noqa: F401 - Feed re-exported: passes import both from here
from edgec.errors import EdgecError


@dataclasses.dataclass
class EdgecPassResult(ir.passes.PassResult):
    """onnx_ir's PassResult plus what the manager records: the pass's ``details`` and its exactness."""

    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    exact: bool = True


class Pass(ir.passes.InPlacePass):
    """Base of every pass. Subclasses are dataclasses; their fields are the pass parameters."""

    name: ClassVar[str] = ""
    exact: ClassVar[bool] = True
    #: the manager upgrades the model to at least this default-domain opset before ``apply``.
    min_opset: ClassVar[int] = 0
    _ctx: PassContext | None = None  # set by ``bind``; a plain attribute, not a dataclass field

    def bind(self, ctx: PassContext | None) -> Pass:
        """Give the pass the run's context (the manager does this before ``p(model)``); returns self."""
        self._ctx = ctx
        return self

    @property
    def context(self) -> PassContext:
        if self._ctx is None:
            self._ctx = PassContext()
        return self._ctx

    def call(self, model: ir.Model) -> EdgecPassResult:
        """onnx_ir's entry point: run ``apply`` on the bound context, collect its details.

        ``apply`` writes into a fresh ``ctx.details``, which is handed back in the result; the caller's
        dict is put back afterwards, so a pass may run another as ``q.bind(ctx)(model)`` without losing
        its own details. If ``apply`` raises, ``ctx.details`` keeps what it wrote (the manager's
        roll-back record shows it).
        """
        ctx = self.context
        outer, ctx.details = ctx.details, {}
        changed = bool(self.apply(model, ctx))
        details, ctx.details = ctx.details, outer
        return EdgecPassResult(model, changed, details=details, exact=self.is_exact())

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


class IRPass(Pass):
    """An onnx_ir (or onnxscript) pass registered by ``register_ir_pass``: built from the fields, then run."""

    factory: ClassVar[Callable[..., ir.passes.PassBase]]

    def apply(self, model: ir.Model, ctx: PassContext) -> bool:
        inner = type(self).factory(**self.params)
        if not inner.in_place:
            raise AssertionError(f"pass {self.name!r}: only in-place onnx_ir passes can run as edgec passes")
        return bool(inner(model).modified)


def register_ir_pass(name: str, factory: Callable[..., ir.passes.PassBase], *, exact: bool,
                     doc: str | None = None) -> type[Pass]:
    """Register an onnx_ir/onnxscript pass class (or a function returning an in-place pass) as ``name``.

    Its keyword arguments with defaults become the edgec pass's typed parameters (``name:key=value``),
    so e.g. ``register_ir_pass("cse", common.CommonSubexpressionEliminationPass, exact=True)`` gives a
    ``cse`` pass the CLI, targets.toml and the manager's checks and records treat like any other.
    """
    target = factory.__init__ if isinstance(factory, type) else factory  # type: ignore[misc]
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # noqa: BLE001 - annotations naming types we cannot resolve: fall back to defaults' types
        hints = {}
    fields: list[tuple[str, Any, Any]] = []
    for param in inspect.signature(target).parameters.values():
        if param.name == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if param.default is inspect.Parameter.empty:
            raise AssertionError(f"pass {name!r}: parameter {param.name!r} of {factory!r} needs a default")
        hint = hints.get(param.name, type(param.default) if param.default is not None else str)
        fields.append((param.name, hint, dataclasses.field(default=param.default)))
    # A factory that is not a class (a functools.partial, a function) carries no doc of its own to show.
    text = doc or ((factory.__doc__ or "").strip() if isinstance(factory, type) else "")
    if not text:
        raise AssertionError(f"pass {name!r} needs a doc")
    cls = dataclasses.make_dataclass(f"IR_{name.replace('-', '_')}", fields, bases=(IRPass,),
                                     namespace={"__doc__": text, "factory": staticmethod(factory),
                                                "__module__": __name__})
    return register(name, exact=exact)(cls)


def register_rewrite_rules(name: str, rules: Sequence[Any] | Any, *, exact: bool, doc: str) -> type[Pass]:
    """Register onnxscript rewrite rules (a list of ``RewriteRule`` or a ``RewriteRuleSet``) as one pass
    running onnxscript's own ``RewritePass`` (onnxscript is imported here: it is an optional extra)."""
    from onnxscript.rewriter import RewritePass

    return register_ir_pass(name, functools.partial(RewritePass, rules), exact=exact, doc=doc)


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
