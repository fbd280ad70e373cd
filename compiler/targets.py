"""Targets are data: targets.toml (inside the package) maps a name to pipeline, scheme and backend."""

from __future__ import annotations

import dataclasses
import importlib.resources
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from edgec.errors import EdgecError

BACKENDS = ("ort", "tflite", "tensorrt")


STAGES = "stages"  # the table of named pass lists; not a target name


@dataclasses.dataclass(frozen=True)
class Target:
    name: str
    description: str
    #: the whole pipeline, stages flattened: what the manager runs
    passes: tuple[str, ...]
    backend: str
    scheme: dict[str, Any]
    #: the named stages the pipeline was built from, in order: (stage, its passes); the target's own
    #: ``passes`` come last as ("", ...)
    stages: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @property
    def precision(self) -> str:
        return str(self.scheme.get("precision", "fp32"))

    def outline(self) -> str:
        """``cleanup(9) + quantize(2) + legalize-ort-int8(1)``: the pipeline by stage, for listings."""
        return " + ".join(f"{name or 'own'}({len(ps)})" for name, ps in self.stages) or "no passes"


def with_added(target: Target, specs: Sequence[str]) -> list[str]:
    """The target's pipeline with ``--add`` passes inserted where each belongs: at the end of the stage its
    class names (``add_after``: depthwise and prune after ``cleanup``, before quantization; bias-correct
    after ``quantize``), in the order given. A stage the target lacks is a clear error."""
    from edgec.pass_infra import registry

    pipeline = list(target.passes)
    ends: dict[str, int] = {}
    at = 0
    for name, passes in target.stages:
        at += len(passes)
        if name:
            ends[name] = at
    inserted: dict[str, int] = {}
    for spec in specs:
        name = spec.split(":", 1)[0]
        cls = registry().get(name)
        if cls is None:
            raise EdgecError(f"--add {spec}: unknown pass '{name}'", hint="`edgec passes` lists them")
        after = getattr(cls, "add_after", "")
        if not after:
            raise EdgecError(f"--add {spec}: '{name}' has no documented stage to join",
                             hint="spell the pipeline out with --passes")
        if after not in ends:
            raise EdgecError(f"--add {spec}: target '{target.name}' has no '{after}' stage for {name} to follow",
                             hint=f"its stages: {target.outline()}")
        index = ends[after] + sum(n for st, n in inserted.items() if ends[st] <= ends[after])
        pipeline.insert(index, spec)
        inserted[after] = inserted.get(after, 0) + 1
    return pipeline


def add_points(target: Target) -> dict[str, list[str]]:
    """Stage -> the registered passes ``--add`` inserts after it, for this target (``edgec targets``)."""
    from edgec.pass_infra import registry

    out: dict[str, list[str]] = {n: [] for n, _ in target.stages if n}
    for pname, cls in registry().items():
        after = getattr(cls, "add_after", "")
        if after in out:
            out[after].append(pname)
    return {stage: names for stage, names in out.items() if names}


def _pass_list(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise EdgecError(f"{where} must be a list of pass specs, e.g. [\"fold\", \"dce\"]")
    return value


def _parse(table: dict[str, Any], origin: str, base: dict[str, Target] | None = None,
           base_stages: dict[str, list[str]] | None = None) -> dict[str, Target]:
    """Targets of one TOML table. ``base``/``base_stages``: the built-in ones a user file may extend/use."""
    stages = dict(base_stages or {})
    raw_stages = table.get(STAGES, {})
    if not isinstance(raw_stages, dict):
        raise EdgecError(f"{origin}: [{STAGES}] must be a table of pass lists")
    stages.update({k: _pass_list(v, f"{origin}: stage '{k}'") for k, v in raw_stages.items()})
    entries = {name: entry for name, entry in table.items() if name != STAGES}
    out: dict[str, Target] = {}

    def resolve(name: str, chain: tuple[str, ...]) -> Target:
        if name in out:
            return out[name]
        entry = entries[name]
        if not isinstance(entry, dict):
            raise EdgecError(f"{origin}: '{name}' must be a table")
        parent: Target | None = None
        if "extends" in entry:
            pname = entry["extends"]
            if pname in chain:
                raise EdgecError(f"{origin}: target '{name}' extends itself through {' -> '.join(chain)}")
            if pname in entries:
                parent = resolve(pname, (*chain, name))
            elif base and pname in base:
                parent = base[pname]
            else:
                raise EdgecError(f"{origin}: target '{name}' extends unknown target '{pname}'")
        if "stages" in entry:
            parts = []
            for st in _pass_list(entry["stages"], f"{origin}: target '{name}' stages"):
                if st not in stages:
                    raise EdgecError(f"{origin}: target '{name}' uses unknown stage '{st}'",
                                     hint=f"stages: {', '.join(stages)}")
                parts.append((st, tuple(stages[st])))
        else:
            parts = [p for p in (parent.stages if parent else ()) if p[0]]
        own = entry.get("passes", None if "stages" in entry else
                        next((list(p) for s, p in (parent.stages if parent else ()) if not s), None))
        if own is not None:
            parts.append(("", tuple(_pass_list(own, f"{origin}: target '{name}' passes"))))
        if not parts:
            raise EdgecError(f"{origin}: target '{name}' needs stages = [\"...\"] or passes = [\"...\"]")
        backend = entry.get("backend", parent.backend if parent else "ort")
        if backend not in BACKENDS:
            raise EdgecError(f"{origin}: target '{name}' has unknown backend '{backend}'",
                             hint=f"backends: {', '.join(BACKENDS)}")
        scheme = {**(parent.scheme if parent else {}), **dict(entry.get("scheme", {}))}
        description = str(entry.get("description", parent.description if parent else ""))
        out[name] = Target(name, description, tuple(p for _, ps in parts for p in ps), backend, scheme,
                           tuple(parts))
        return out[name]

    for name in entries:
        resolve(name, ())
    return out


def _builtin_table() -> dict[str, Any]:
    return tomllib.loads(importlib.resources.files("edgec").joinpath("targets.toml").read_text())


def stage(name: str) -> tuple[str, ...]:
    """The passes of a built-in stage (e.g. a backend's legalize stage)."""
    stages = _builtin_table().get(STAGES, {})
    if name not in stages:
        raise EdgecError(f"unknown stage '{name}'", hint=f"stages: {', '.join(stages)}")
    return tuple(stages[name])


def read_toml(p: Path, label: str) -> dict[str, Any]:
    """A user's TOML file (``label`` names it in errors: one line, exit 2)."""
    try:
        return tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise EdgecError(f"{label}: no such file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise EdgecError(f"{label}: not valid TOML ({exc})", hint="fix the TOML at that line") from None


def builtin() -> dict[str, Target]:
    return _parse(_builtin_table(), "targets.toml")


def load_file(path: str | Path) -> dict[str, Target]:
    """The targets of a user file; it may use the built-in stages and extend the built-in targets."""
    p = Path(path)
    table = read_toml(p, f"--target-file {p}")
    base_table = _builtin_table()
    return _parse(table, str(p), builtin(), base_table.get(STAGES, {}))


def get(name: str, target_file: str | Path | None = None) -> Target:
    table = builtin()
    if target_file is not None:
        table.update(load_file(target_file))
    if name not in table:
        raise EdgecError(f"unknown target '{name}'", hint=f"targets: {', '.join(table)}")
    return table[name]
