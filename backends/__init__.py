"""Backends turn the optimized IR into deployable artifacts and measure them where a runtime exists.

Each backend module provides ``emit(model, target, ctx, out_dir) -> Artifacts``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from edgec.errors import EdgecError

_MODULES = {"ort": "edgec.backends.ort", "tflite": "edgec.backends.tflite", "tensorrt": "edgec.backends.tensorrt"}


def get(name: str) -> ModuleType:
    if name not in _MODULES:
        raise EdgecError(f"unknown backend '{name}'", hint=f"backends: {', '.join(_MODULES)}")
    try:
        return importlib.import_module(_MODULES[name])
    except ModuleNotFoundError as exc:
        if exc.name == _MODULES[name]:
            raise EdgecError(f"backend '{name}' is not available in this build of edgec") from None
        raise
