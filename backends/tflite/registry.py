"""Which handler converts which ONNX op. The ops_* modules fill it when imported (the package's
__init__ imports them all); the converter only reads it, so converter and handlers import one way."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import onnx_ir as ir

if TYPE_CHECKING:
    from .converter import Converter

Handler = Callable[["Converter", ir.Node], None]

HANDLERS: dict[str, Handler] = {}


def register(table: dict[str, Handler]) -> None:
    """Add ``{onnx op type: handler}``; one handler per op type."""
    for op, fn in table.items():
        if HANDLERS.get(op, fn) is not fn:
            raise AssertionError(f"TFLite op handler for {op!r} registered twice")
        HANDLERS[op] = fn
