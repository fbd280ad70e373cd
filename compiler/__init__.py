"""edgec: a graph-level ONNX optimization compiler.

    import edgec
    result = edgec.compile("model.onnx", target="cpu-int8", calib="images/", out_dir="out/")
    result.model, result.records, result.artifacts, result.report.to_html("r.html")
"""

from __future__ import annotations

from typing import Any

from edgec.api import CompileResult, compile, diff, example_paths, inspect
from edgec.errors import EdgecError
from edgec.model_io import load, save

__version__ = "0.1.0"


def export(*args: Any, **kwargs: Any) -> Any:
    """PyTorch -> ONNX once (needs the ``edgec[torch]`` extra); see edgec.export.export."""
    from edgec.export import export as _export

    return _export(*args, **kwargs)


__all__ = ["CompileResult", "EdgecError", "compile", "diff", "example_paths", "export", "inspect", "load", "save"]
