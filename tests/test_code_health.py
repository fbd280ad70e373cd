"""The repository stays lint-clean (ruff) and the core package type-checks (mypy).

Both tools are in the ``dev`` extra; a missing tool skips with the reason rather than passing silently.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _run(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (pip install -e '.[dev]')")
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600, check=False)


def test_ruff_is_clean() -> None:
    proc = _run("ruff", "check", "compiler", "passes", "backends", "tools", "tests")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_core_type_checks() -> None:
    # The settings live in pyproject.toml ([tool.mypy]); the cache goes to a temporary folder so a
    # read-only checkout still works.
    proc = _run("mypy", "--cache-dir", str(Path(tempfile.gettempdir()) / "edgec-mypy-cache"))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_module_level_imports_are_declared_dependencies():
    """Every third-party package imported at module level in the shipped code is in pyproject's
    ``dependencies`` (a lazily imported optional one — torch, ray, nncf, tensorrt — is not). CI installs
    exactly what is declared, so an undeclared import is an ImportError on a fresh machine."""
    import ast
    import sys

    import tomllib

    root = Path(__file__).resolve().parent.parent
    declared = {re.split(r"[<>=!~;\[ ]", d, maxsplit=1)[0].lower().replace("_", "-")
                for d in tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]}
    dist_of = {"onnx_ir": "onnx-ir", "PIL": "pillow", "ai_edge_litert": "ai-edge-litert", "google": "protobuf"}
    local = {"edgec", "passes", "backends", "compiler"}
    missing = set()
    for folder in ("compiler", "passes", "backends"):
        for path in (root / folder).rglob("*.py"):
            for node in ast.parse(path.read_text()).body:  # module level only: lazy imports are optional
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
                for name in names:
                    top = name.split(".")[0]
                    if top in local or top in sys.stdlib_module_names or top == "__future__":
                        continue
                    if dist_of.get(top, top).lower().replace("_", "-") not in declared:
                        missing.add(f"{path.relative_to(root)}: {top}")
    assert not missing, sorted(missing)
