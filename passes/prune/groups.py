"""Dependency groups on the ONNX graph: channels that must be removed together.

Removing output channel c of a Conv changes the shape of every tensor that carries that channel:
activations, BatchNormalization, a depthwise conv (input = output channel), the other branch of a
residual Add, a slice of a Concat (offset ranges), a Split/Slice on the channel axis, the block of
columns a Flatten/Reshape hands to a Gemm, and the input channels of every consumer Conv/Gemm.
This is DepGraph's idea (Fang et al., CVPR 2023), rebuilt on the ONNX graph rather than PyTorch source.

Every channel of every channel-carrying tensor is a node of a networkx graph; an op that ties channel i
of one tensor to channel j of another adds an edge. A connected component of that graph is a *unit*
(remove it and the graph stays consistent); the tensors the units link form a *group* (one row of
`edgec prune-plan`). A group touching a graph input or output, or an op the analysis does not
understand, is kept whole and listed with the reason. Channel axis: 1 (NCHW, and [N, F] for Gemm).
"""

from __future__ import annotations

import dataclasses
from collections import deque

import networkx as nx
import numpy as np
import onnx_ir as ir

from edgec.graph import consumers
from edgec.metrics import node_macs
from edgec.passes.prune.links import (
    WEIGHTED,
    NodeLinks,
    channel_info,
    node_links,
)


@dataclasses.dataclass
class Group:
    """Tensors whose channels are coupled, the ops around them, and the prunable units."""

    id: int
    tensors: list[ir.Value]
    channels: dict[str, int]  # tensor name -> channel count (in units: a flattened block is one channel)
    blocks: dict[str, int]  # tensor name -> elements per channel along axis 1 (1 unless flattened)
    producers: list[ir.Node]
    consumers: list[ir.Node]
    through: list[ir.Node]  # nodes that carry the channels through (BN, activations, Add, Concat, ...)
    units: list[dict[str, list[int]]]  # each unit: tensor name -> its channel positions in that tensor
    reason: str | None = None

    @property
    def prunable(self) -> bool:
        return self.reason is None

    def nodes(self) -> list[ir.Node]:
        seen: dict[int, ir.Node] = {}
        for n in [*self.producers, *self.consumers, *self.through]:
            seen.setdefault(id(n), n)
        return list(seen.values())

    def classes(self) -> list[list[int]]:
        """Units grouped by the tensors (and multiplicities) they touch. Removing a multiple of 8 units
        of each class keeps every tensor's channel count at its value mod 8 (Concat sums classes)."""
        by: dict[tuple, list[int]] = {}
        for i, unit in enumerate(self.units):
            key = tuple(sorted((name, len(pos)) for name, pos in unit.items()))
            by.setdefault(key, []).append(i)
        return list(by.values())


# ------------------------------------------------------------------------------------------ analysis
@dataclasses.dataclass
class Analysis:
    groups: list[Group]
    macs: dict[int, int]  # id(node) -> MACs of weighted nodes (Conv, Gemm, MatMul)
    total_macs: int
    memo: dict[int, tuple[int, int] | None]


def analyze(model: ir.Model) -> Analysis:
    """Find every dependency group reachable from a Conv/Gemm/MatMul output. Shapes must be inferred."""
    graph = model.graph
    memo: dict[int, tuple[int, int] | None] = {}
    results: dict[int, NodeLinks] = {}
    node_of: dict[int, ir.Node] = {}
    seeds = [n.outputs[0] for n in graph if n.op_type in WEIGHTED and n.domain in ("", "ai.onnx")]
    queue: deque[ir.Value] = deque(seeds)
    seen: dict[int, ir.Value] = {id(v): v for v in seeds}
    while queue:
        value = queue.popleft()
        touching = ([value.producer()] if value.producer() is not None else []) + consumers(value)
        for node in touching:
            if id(node) in results:
                continue
            links = node_links(node, memo)
            results[id(node)], node_of[id(node)] = links, node
            found = [v for a, _, b, _, _ in links.links for v in (a, b)]
            found += [v for v in (links.producer, links.consumer) if v is not None]
            for v in found:
                if id(v) not in seen:
                    seen[id(v)] = v
                    queue.append(v)
    tgraph = nx.Graph()
    for v in seen.values():
        tgraph.add_node(id(v))
    for res in results.values():
        for a, _, b, _, _ in res.links:
            tgraph.add_edge(id(a), id(b))
    macs = _weighted_macs(graph)
    order = {id(n): i for i, n in enumerate(graph)}

    def position(v: ir.Value) -> int:
        return order.get(id(v.producer()), -1)

    groups = []
    for comp in sorted(nx.connected_components(tgraph), key=lambda c: min(position(seen[i]) for i in c)):
        values = sorted((seen[i] for i in comp), key=position)
        groups.append(_make_group(len(groups), values, results, node_of, memo))
    return Analysis(groups, macs, sum(macs.values()), memo)


def _make_group(gid: int, values: list[ir.Value], results: dict[int, NodeLinks], node_of: dict[int, ir.Node],
                memo: dict[int, tuple[int, int] | None]) -> Group:
    ids = {id(v) for v in values}
    reason = None
    channels: dict[str, int] = {}
    blocks: dict[str, int] = {}
    for v in values:
        inf = channel_info(v, memo)
        if inf is None:
            reason = reason or f"channel count of '{v.name}' is unknown"
            continue
        channels[v.name], blocks[v.name] = inf  # type: ignore[index]
        if v.is_graph_output():
            reason = reason or f"reaches graph output '{v.name}'"
        if v.is_graph_input():
            reason = reason or f"fed by graph input '{v.name}'"
    producers, cons, through = [], [], []
    links = []
    for key, res in results.items():
        node = node_of[key]
        for vid, (_, why) in res.opaque.items():
            if vid in ids:
                reason = reason or why
        if res.producer is not None and id(res.producer) in ids:
            producers.append(node)
        if res.consumer is not None and id(res.consumer) in ids:
            cons.append(node)
        mine = [lk for lk in res.links if id(lk[0]) in ids]
        if mine:
            through.append(node)
            links.extend(mine)
    if not producers:
        reason = reason or "no Conv/Gemm produces these channels"
    units: list[dict[str, list[int]]] = []
    if reason is None:
        units, why = _units(values, channels, links)
        reason = why
    return Group(gid, values, channels, blocks, producers, cons, through, units, reason)


def _units(values: list[ir.Value], channels: dict[str, int],
           links: list[tuple[ir.Value, int, ir.Value, int, int]]) -> tuple[list[dict[str, list[int]]], str | None]:
    base, total = {}, 0
    for v in values:
        base[v.name] = total
        total += channels[v.name]
    cgraph = nx.Graph()
    cgraph.add_nodes_from(range(total))
    for a, oa, b, ob, n in links:
        if oa + n > channels[a.name] or ob + n > channels[b.name]:
            return [], f"channel ranges of '{a.name}' and '{b.name}' do not fit"
        ia, ib = base[a.name] + oa, base[b.name] + ob
        cgraph.add_edges_from(zip(range(ia, ia + n), range(ib, ib + n)))
    starts = np.array([base[v.name] for v in values])
    names = [v.name for v in values]
    units = []
    for comp in nx.connected_components(cgraph):
        unit: dict[str, list[int]] = {}
        for cid in sorted(comp):
            t = int(np.searchsorted(starts, cid, side="right") - 1)
            unit.setdefault(names[t], []).append(cid - int(starts[t]))
        units.append(unit)
    units.sort(key=lambda u: min((names.index(k), p[0]) for k, p in u.items()))
    return units, None


def _weighted_macs(graph: ir.Graph) -> dict[int, int]:
    def dims(v: ir.Value | None) -> list[int] | None:
        if v is None or v.shape is None:
            return None
        return [d if isinstance(d, int) else 1 for d in v.shape]

    out = {}
    for node in graph:
        if node.op_type in WEIGHTED:
            attrs = {k: a.value for k, a in node.attributes.items() if isinstance(a.value, int)}
            out[id(node)] = node_macs(node.op_type, attrs, [dims(v) for v in node.inputs],
                                      [dims(v) for v in node.outputs])
    return out
