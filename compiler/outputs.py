"""What an earlier compile left in ``-o``: files it wrote that this run did not write are stale.

A model compiled again into the same folder must not keep the last run's ``model.engine`` or
``calibration.cache`` beside the new ``model.onnx`` (a user would deploy an engine of another model).
Only files an earlier edgec run listed in its ``report.json`` ("files_written") are ever removed: a
user's own files in the folder (their input model, say) are never touched.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable
from pathlib import Path

REPORT = "report.json"


def written_files(stage: Path, extra: Iterable[str] = ()) -> list[str]:
    """Every file in the staging folder, relative, plus ``extra`` (files written after this call)."""
    return sorted({*(p.relative_to(stage).as_posix() for p in stage.rglob("*") if p.is_file()), *extra})


def earlier_files(final: Path) -> list[str]:
    """The files the previous run listed in ``final/report.json`` (none if there is none or it is unreadable).

    Reports written before "files_written" existed list their artifacts under backend.files (absolute
    paths in ``final``); those are read too."""
    try:
        old = json.loads((final / REPORT).read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(old, dict):
        return []
    names = [str(n) for n in old.get("files_written") or []]
    backend = old.get("backend") or {}
    for path in (backend.get("files") or {}).values() if isinstance(backend, dict) else []:
        p = Path(str(path))
        with contextlib.suppress(ValueError):
            names.append(p.relative_to(final.resolve()).as_posix() if p.is_absolute() else p.as_posix())
    return sorted(set(names))


def stale_files(final: Path, written: Iterable[str], keep: Iterable[str] = ()) -> list[Path]:
    """Files of an earlier run in ``final`` that this run does not write (and are not in ``keep``)."""
    now, kept = set(written), set(keep)
    out = []
    for name in earlier_files(Path(final)):
        if name in now or name in kept or ".." in Path(name).parts or Path(name).is_absolute():
            continue
        path = Path(final) / name
        if path.is_file():
            out.append(path)
    return out


def remove(paths: Iterable[Path]) -> None:
    for p in paths:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
