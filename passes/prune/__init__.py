"""Magnitude pruning: unstructured (zeros) and structured (channels removed along dependency groups).   lossy

    prune:unstructured:0.5            zero half the weights of every Conv/Gemm/MatMul (scope=global: one threshold)
    prune:channels:0.3                remove 30 % of the channels of every prunable dependency group,
                                      refit consumers by least squares on calibration data
    prune:channels:0.3:macs=0.4       raise the ratio until at least 40 % of the MACs are gone

Fields the user also sets with ``--prune-skip``/``--set KEY=VALUE`` (edgec.settings): ``skip``
(``prune_skip``: node names, plus ``first``/``last``; a channel group touching a skipped node is kept
whole), ``reconstruct`` (default True), ``reconstruct_samples`` (calibration feeds used for the refit,
default 64), ``reconstruct_positions`` (sampled output positions per feed and Conv, default 256),
``reconstruct_inputs``: "unpruned" (default: every consumer refitted at once on the unpruned model's
activations) or "sequential" (He et al.'s order: layer by layer on the partly refitted pruned model;
better, one ORT pass over the calibration feeds per layer, so slower), ``reconstruct_ridge`` and
``reconstruct_waves`` (sequential: layers refitted per ORT pass; 0 = one layer per wave).
"""

from __future__ import annotations

from typing import Any

import onnx_ir as ir

from edgec.errors import EdgecError
from edgec.pass_infra import Pass, PassContext, register
from edgec.passes.prune.channels import format_plan, plan
from edgec.passes.prune.reconstruct import POSITIONS_PER_FEED, RIDGE
from edgec.passes.prune.unstructured import NO_SPEEDUP, prune_unstructured, weighted_nodes

__all__ = ["Prune", "format_plan", "plan"]


@register("prune", exact=False)
class Prune(Pass):
    """Magnitude pruning: zero weights (unstructured) or remove whole channels (channels, with refit)."""

    add_after = "cleanup"  # where --add inserts it in a target's pipeline

    mode: str = "unstructured"
    ratio: float = 0.5
    scope: str = "layer"  # unstructured: "layer" (same ratio per layer) or "global" (one threshold)
    criterion: str = "l2"  # channels: filter norm used to rank channels, "l2" or "l1"
    align: int = 8  # channels: counts stay multiples of this (int8 kernels want 8)
    macs: float = 0.0  # channels: minimum fraction of MACs to remove; the ratio is raised to reach it
    skip: list[str] | None = None  # node names left alone (plus first/last); --prune-skip
    reconstruct: bool = True  # channels: least-squares refit of the consumers (--no-reconstruct: off)
    reconstruct_samples: int = 64
    reconstruct_inputs: str = "unpruned"  # unpruned | pruned | sequential
    reconstruct_positions: int = POSITIONS_PER_FEED
    reconstruct_ridge: float = RIDGE
    reconstruct_waves: int = 0

    def __post_init__(self) -> None:
        if self.mode not in ("unstructured", "channels"):
            raise EdgecError(f"prune: unknown mode '{self.mode}'", hint="prune:unstructured:0.5 or prune:channels:0.3")
        if not 0.0 <= self.ratio < 1.0:
            raise EdgecError(f"prune: ratio {self.ratio} is outside [0, 1)")
        if self.scope not in ("layer", "global"):
            raise EdgecError(f"prune: scope '{self.scope}' is not 'layer' or 'global'")
        if self.criterion not in ("l1", "l2"):
            raise EdgecError(f"prune: criterion '{self.criterion}' is not 'l1' or 'l2'")
        if self.align < 1 or not 0.0 <= self.macs < 1.0:
            raise EdgecError("prune: align must be >= 1 and macs in [0, 1)")

    def is_exact(self) -> bool:
        return self.ratio == 0.0 and self.macs == 0.0

    def apply(self, model: ir.Model, ctx: PassContext) -> bool:
        skip = [str(s) for s in (self.skip or [])]
        weighted = [n.name for n in weighted_nodes(model.graph)]
        unknown = [s for s in skip if s not in weighted and s not in ("first", "last")
                   and all(n.name != s for n in model.graph)]
        if unknown:
            ctx.warn(f"prune: --prune-skip names no node: {', '.join(unknown)}")
        if weighted:  # "first"/"last" name the first/last weighted op unless a node is called so
            names = {n.name for n in model.graph}
            skip += [weighted[0]] if "first" in skip and "first" not in names else []
            skip += [weighted[-1]] if "last" in skip and "last" not in names else []
        ctx.details["skip"] = skip
        if self.mode == "unstructured":
            return self._unstructured(model, ctx, skip)
        from edgec.passes.prune.run import prune_channels

        return prune_channels(model, ctx, ratio=self.ratio, criterion=self.criterion, align=self.align,
                              macs_target=self.macs, skip=skip, refit=self.refit_settings())

    def refit_settings(self) -> dict[str, Any]:
        """The reconstruction fields, by the keyword names prune_channels takes."""
        return {k.removeprefix("reconstruct_") if k != "reconstruct" else "enabled": getattr(self, k)
                for k in ("reconstruct", "reconstruct_samples", "reconstruct_inputs", "reconstruct_positions",
                          "reconstruct_ridge", "reconstruct_waves")}

    def _unstructured(self, model: ir.Model, ctx: PassContext, skip: list[str]) -> bool:
        if self.ratio == 0:
            return False
        rows = prune_unstructured(model, self.ratio, self.scope, skip)
        total = sum(r["weights"] for r in rows)
        zeros = sum(r["weights"] * r["sparsity"] for r in rows)
        ctx.details.update({"mode": "unstructured", "scope": self.scope, "layers": rows,
                            "sparsity": zeros / total if total else 0.0, "note": NO_SPEEDUP})
        ctx.warn(NO_SPEEDUP)
        return bool(rows)
