"""Check that a built wheel holds every module of the three source folders and the package data."""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAPPING = {"compiler": "edgec", "passes": "edgec/passes", "backends": "edgec/backends"}


def main(wheel: str) -> int:
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = []
    for folder, target in MAPPING.items():
        for src in (ROOT / folder).rglob("*.py"):
            rel = src.relative_to(ROOT / folder)
            if "__pycache__" in rel.parts:
                continue
            if f"{target}/{rel.as_posix()}" not in names:
                missing.append(f"{folder}/{rel}")
    for data in ["edgec/targets.toml", "edgec/assets/digits.onnx", "edgec/assets/digits_samples.npz"]:
        if data not in names:
            missing.append(data)
    if missing:
        print("wheel is missing: " + ", ".join(sorted(missing)))
        return 1
    print(f"wheel ok: {len(names)} files")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
