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


# Cases edgec refused or broke before (fold inlining AffineGrid's If, lift-constants on an IR-3 model,
# MeanVarianceNormalization failing onnx's own check, sequences typed as tensors, If/Loop bodies).
REGRESSIONS = {"test_affine_grid_2d_expanded", "test_mvn", "test_if_opt", "test_loop16_seq_none",
               "test_sequence_map_add_2_sequences_expanded", "test_sequence_model2", "test_equal_string",
               "test_greater_equal_uint64", "test_bitwise_or_ui64_bcast_3v1d", "test_Conv2d_groups",
               "test_Conv2d_depthwise_padded"}


def test_conformance_regressions(tmp_path: Path) -> None:
    mods = ["affinegrid", "meanvariancenormalization", "if_", "loop", "sequence_map", "equal", "greater_or_equal",
            "bitwiseor"]
    cases = [c for c in [*C.node_cases(modules=mods), *C.folder_cases()] if c.name in REGRESSIONS]
    assert {c.name for c in cases} == REGRESSIONS
    results = _run(cases, tmp_path)
    assert {k: v for k, v in results.items() if v[0] != "ok"} == {}


@pytest.mark.slow
def test_conformance_all(tmp_path: Path) -> None:
    cases = list(C.node_cases()) + list(C.folder_cases())
    assert len(cases) >= 2000
    counts = _check(_run(cases, tmp_path), everything=True)
    assert counts["refused"] <= 20
