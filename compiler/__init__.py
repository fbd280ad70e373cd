"""edgec: a graph-level ONNX optimization compiler.

    import edgec
    result = edgec.compile("model.onnx", target="cpu-int8", calib="images/", out_dir="out/")
    result.model, result.records, result.artifacts, result.report.to_html("r.html")
"""

from __future__ import annotations

from edgec.api import CompileResult, compile, diff, example_paths, inspect
from edgec.errors import EdgecError

# Bound here, not lazily: importing the submodule later would rebind ``edgec.export`` to the module.
# The function imports torch only when called.
from edgec.export import export
from edgec.model_io import load, save

__version__ = "0.1.0"


__all__ = ["CompileResult", "EdgecError", "compile", "diff", "example_paths", "export", "inspect", "load", "save"]
