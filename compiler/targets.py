"""Targets are data: targets.toml (inside the package) maps a name to pipeline, scheme and backend."""

from __future__ import annotations

import dataclasses
import importlib.resources
import sys
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from edgec.errors import EdgecError

BACKENDS = ("ort", "tflite", "tensorrt")


@dataclasses.dataclass(frozen=True)
class Target:
    name: str
    description: str
    passes: tuple[str, ...]
    backend: str
    scheme: dict[str, Any]

    @property
    def precision(self) -> str:
        return str(self.scheme.get("precision", "fp32"))


def _parse(table: dict[str, Any], origin: str) -> dict[str, Target]:
    out = {}
    for name, entry in table.items():
        if not isinstance(entry, dict):
            raise EdgecError(f"{origin}: '{name}' must be a table")
        passes = entry.get("passes")
        backend = entry.get("backend", "ort")
        if not isinstance(passes, list) or not all(isinstance(p, str) for p in passes):
            raise EdgecError(f"{origin}: target '{name}' needs passes = [\"...\"]")
        if backend not in BACKENDS:
            raise EdgecError(f"{origin}: target '{name}' has unknown backend '{backend}'",
                             hint=f"backends: {', '.join(BACKENDS)}")
        out[name] = Target(name, str(entry.get("description", "")), tuple(passes), backend,
                           dict(entry.get("scheme", {})))
    return out


def builtin() -> dict[str, Target]:
    text = importlib.resources.files("edgec").joinpath("targets.toml").read_text()
    return _parse(tomllib.loads(text), "targets.toml")


def load_file(path: str | Path) -> dict[str, Target]:
    p = Path(path)
    try:
        table = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise EdgecError(f"--target-file {p}: no such file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise EdgecError(f"--target-file {p}: not valid TOML ({exc})", hint="fix the TOML at that line") from None
    return _parse(table, str(p))


def get(name: str, target_file: str | Path | None = None) -> Target:
    table = builtin()
    if target_file is not None:
        table.update(load_file(target_file))
    if name not in table:
        raise EdgecError(f"unknown target '{name}'", hint=f"targets: {', '.join(table)}")
    return table[name]
