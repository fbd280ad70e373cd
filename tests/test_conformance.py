"""The ONNX backend test cases through ``cpu-fp32``: any model ONNX Runtime runs, edgec compiles.

Each case is compiled in-process with its own inputs as samples, and the compiled model's outputs are
checked against the case's expected ones (rtol 1e-3, atol 1e-5). Cases ONNX Runtime itself cannot run
(or gets wrong) are skipped: an external limit. Every other refusal must be listed, with its reason, in
docs/errors.md (section "ONNX backend cases edgec refuses"); no case may give wrong outputs or crash.

The default run takes a deterministic spread (every 8th op module's node cases, every 2nd of those,
and every 4th model folder case); ``-m slow`` runs them all (the counts are quoted in README.md).
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import conformance as C
import pytest

DOC = Path(__file__).resolve().parent.parent / "docs" / "errors.md"
SECTION = "## ONNX backend cases edgec refuses"


def documented_refusals() -> dict[str, str]:
    text = DOC.read_text()
    assert SECTION in text, f"docs/errors.md lacks the section '{SECTION}'"
    rows = re.findall(r"^\| (test_[^ |]+) \| (.+?) \|$", text.partition(SECTION)[2], flags=re.MULTILINE)
    return dict(rows)


def _run(cases: list[C.Case], tmp: Path) -> dict[str, tuple[str, str]]:
    return {c.name: C.run_case(c, tmp) for c in cases}


def _check(results: dict[str, tuple[str, str]], everything: bool) -> Counter:
    counts = Counter(o for o, _ in results.values())
    print("conformance:", dict(counts))
    wrong = {k: d for k, (o, d) in results.items() if o == "wrong"}
    assert not wrong, f"{len(wrong)} cases compiled to wrong outputs or crashed: {wrong}"
    doc = documented_refusals()
    refused = {k: d for k, (o, d) in results.items() if o == "refused"}
    expected = set(doc) if everything else set(doc) & set(results)
    assert set(refused) == expected, (
        f"refused but not in docs/errors.md: {sorted(set(refused) - expected)} "
        f"{[refused[k] for k in sorted(set(refused) - expected)]}; "
        f"documented but not refused: {sorted(expected - set(refused))}")
    # Most cases run: a harness that skipped everything would pass the checks above.
    assert counts["ok"] >= 0.75 * len(results)
    return counts


def test_conformance_spread(tmp_path: Path) -> None:
    cases = list(C.node_cases(every=8))[::2] + list(C.folder_cases())[::4]
    assert len(cases) >= 150
    _check(_run(cases, tmp_path), everything=False)


@pytest.mark.slow
def test_conformance_all(tmp_path: Path) -> None:
    cases = list(C.node_cases()) + list(C.folder_cases())
    assert len(cases) >= 2000
    counts = _check(_run(cases, tmp_path), everything=True)
    assert counts["refused"] <= 20
