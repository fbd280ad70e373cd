"""The repository stays lint-clean (ruff) and the core package type-checks (mypy).

Both tools are in the ``dev`` extra; a missing tool skips with the reason rather than passing silently.
"""

from __future__ import annotations

import importlib.util
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
