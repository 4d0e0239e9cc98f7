"""Graphs built on the training device inside the step: complete graphs, radius graphs, edge
dropping (FastEGNN), and optionally a second, local graph (bonds, k-nearest neighbours or radius)
for hierarchical models (EGHN).

Edges flow j -> i: ``edge_index[0]`` is the source j, ``edge_index[1]`` the target i. This is the
only module that imports torch-cluster (torch-geometric 2.8 no longer routes to it).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import torch
import torch_cluster
from torch import Tensor
from torch_geometric.data import Batch

from scaleq.nn.scatter import rank_within_groups

GraphKind = Literal["complete", "radius"]
EdgeDropMode = Literal["shortest", "random"]
LocalKind = Literal["bonds", "knn", "radius", "none"]
EdgeAttrKind = Literal["egnn", "distance"]


def complete_graph(batch: Tensor) -> Tensor:
    """Every ordered pair of distinct nodes within each graph.

    ``batch`` must be sorted (PyG batches are), so each graph's nodes are contiguous.

    Shapes:
        batch: [N] -> edge_index: [2, sum_b n_b (n_b - 1)]
    """
    counts = torch.bincount(batch)
    first = torch.cumsum(counts, 0) - counts  # first node of each graph
    size = counts[batch]  # [N] size of each node's graph
    target = torch.repeat_interleave(torch.arange(batch.numel(), device=batch.device), size)
    # position of each entry within its target's run, 0..size-1
    run_start = torch.repeat_interleave(torch.cumsum(size, 0) - size, size)
    offset = torch.arange(target.numel(), device=batch.device) - run_start
    source = first[batch[target]] + offset
    keep = source != target
    return torch.stack([source[keep], target[keep]])


_warned_truncation = False


def radius_graph(pos: Tensor, radius: float, batch: Tensor, max_num_neighbors: int) -> Tensor:
    """Edges between nodes of one graph closer than ``radius`` (no self loops), via torch-cluster.

    torch-cluster drops neighbours beyond its cap silently; we ask it for one more than
    ``max_num_neighbors``, warn (once per process) when any node has more, and cut those
    neighbourhoods to ``max_num_neighbors``.

    Shapes:
        pos: [N, D], batch: [N] -> edge_index: [2, E]
    """
    global _warned_truncation
    edge_index = torch_cluster.radius_graph(
        pos, r=radius, batch=batch, loop=False, max_num_neighbors=max_num_neighbors + 1, flow="source_to_target"
    )
    degree = torch.bincount(edge_index[1], minlength=pos.shape[0])
    if edge_index.numel() and int(degree.max()) > max_num_neighbors:
        if not _warned_truncation:
            truncated = int((degree > max_num_neighbors).sum())
            warnings.warn(
                f"radius_graph: {truncated} of {pos.shape[0]} nodes have more than max_num_neighbors="
                f"{max_num_neighbors} neighbours within r={radius}; their neighbourhoods are truncated "
                "(raise graph.max_num_neighbors to keep them)",
                stacklevel=2,
            )
            _warned_truncation = True
        edge_index = _keep_first_per_target(edge_index, max_num_neighbors)
    return edge_index


def _keep_first_per_target(edge_index: Tensor, cap: int) -> Tensor:
    """At most ``cap`` edges into each target (torch-cluster's own cap is off by one without loops)."""
    order = torch.argsort(edge_index[1], stable=True)
    target = edge_index[1, order]
    counts = torch.bincount(target)
    rank = torch.arange(target.numel(), device=target.device) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    return edge_index[:, order[rank < cap]]


def knn_graph(pos: Tensor, k: int, batch: Tensor) -> Tensor:
    """Edges from each node's k nearest neighbours in its graph to it (no self loops).

    Shapes:
        pos: [N, D], batch: [N] (sorted) -> edge_index: [2, E], E <= N k
    """
    return torch_cluster.knn_graph(pos, k=k, batch=batch, loop=False, flow="source_to_target")


def edge_features(pos: Tensor, node_attr: Tensor, edge_index: Tensor, kind: EdgeAttrKind = "egnn") -> Tensor:
    """Invariant edge attributes in the input frame. 'egnn': products of the static node features
    of both ends and the squared distance (EGNN's N-body edge attribute [q_i q_j, |x_i - x_j|^2]);
    'distance': the distance |x_i - x_j| alone (FastEGNN's N-body and protein datasets).

    Shapes:
        pos: [N, D], node_attr: [N, F], edge_index: [2, E] -> [E, F + 1] ('egnn') or [E, 1]
    """
    source, target = edge_index
    dist2 = (pos[target] - pos[source]).pow(2).sum(-1, keepdim=True)
    if kind == "distance":
        return dist2.sqrt()
    return torch.cat([node_attr[target] * node_attr[source], dist2], dim=-1)


def drop_edges(
    edge_index: Tensor, pos: Tensor, batch: Tensor, p: float, mode: EdgeDropMode = "shortest",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Drop a fraction ``p`` of each graph's edges: graph b keeps floor((1 - p) E_b) of its E_b.

    'shortest' keeps the shortest edges (FastEGNN's published preprocessing; ties keep the
    earlier edge); 'random' keeps a uniformly random subset, drawn from ``generator`` (default:
    torch's global RNG, which runs seed and checkpoints restore). p = 1 leaves no edges (EGNN* /
    FastEGNN-<C, 1>). Kept edges stay in their input order; no per-graph loop.

    Shapes:
        edge_index: [2, E] (j -> i), pos: [N, D], batch: [N] -> edge_index: [2, E']
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"edge drop rate must be in [0, 1], got {p}")
    if mode not in ("shortest", "random"):
        raise ValueError(f"edge drop mode must be 'shortest' or 'random', got {mode!r}")
    num_edges = edge_index.shape[1]
    if p == 0.0 or num_edges == 0:
        return edge_index
    if p == 1.0:
        return edge_index[:, :0]
    source, target = edge_index
    graph = batch[target]  # [E] graph of each edge
    if mode == "shortest":
        key = (pos[target] - pos[source]).pow(2).sum(-1)
    else:
        key = torch.rand(num_edges, generator=generator, device=pos.device)
    num_graphs = int(batch.max()) + 1
    per_graph = torch.bincount(graph, minlength=num_graphs)  # [B]
    keep = ((1.0 - p) * per_graph.double() + 1e-9).floor().long()  # the epsilon absorbs 0.3 * 10 = 2.999...
    return edge_index[:, rank_within_groups(key, graph, num_graphs) < keep[graph]]


@dataclass(frozen=True, kw_only=True)
class GraphBuilder:
    """Adds ``edge_index`` [2, E] and ``edge_attr`` [E, F + 1] to a batch, on its device.

    ``edge_drop`` > 0 then drops that fraction of each graph's edges (see :func:`drop_edges`).
    In 'random' mode evaluation batches (``training=False``) draw from a generator reseeded at
    every call, so validation numbers do not depend on what ran before.

    With ``local`` other than 'none' it also adds a local graph ``local_index`` [2, E_local]: the
    store's static bonds ('bonds'), each node's ``local_k`` nearest neighbours ('knn') or the
    neighbours within ``local_radius`` ('radius'), all in the input frame, and its attributes
    ``local_attr``, computed as ``edge_attr`` (``edge_attr``: see :func:`edge_features`).
    """

    kind: GraphKind = "complete"
    radius: float | None = None
    max_num_neighbors: int = 64
    edge_drop: float = 0.0
    edge_drop_mode: EdgeDropMode = "shortest"
    local: LocalKind = "none"
    local_k: int = 4
    local_radius: float | None = None
    edge_attr: EdgeAttrKind = "egnn"

    def __post_init__(self) -> None:
        if self.edge_attr not in ("egnn", "distance"):
            raise ValueError(f"edge_attr must be 'egnn' or 'distance', got {self.edge_attr!r}")
        if self.kind not in ("complete", "radius"):
            raise ValueError(f"graph kind must be 'complete' or 'radius', got {self.kind!r}")
        if self.kind == "radius" and (self.radius is None or self.radius <= 0):
            raise ValueError(f"a radius graph needs a radius > 0, got {self.radius}")
        if self.max_num_neighbors < 1:
            raise ValueError(f"max_num_neighbors must be >= 1, got {self.max_num_neighbors}")
        if not 0.0 <= self.edge_drop <= 1.0:
            raise ValueError(f"edge_drop must be in [0, 1], got {self.edge_drop}")
        if self.edge_drop_mode not in ("shortest", "random"):
            raise ValueError(f"edge_drop_mode must be 'shortest' or 'random', got {self.edge_drop_mode!r}")
        if self.local not in ("bonds", "knn", "radius", "none"):
            raise ValueError(f"local graph must be 'bonds', 'knn', 'radius' or 'none', got {self.local!r}")
        if self.local == "knn" and self.local_k < 1:
            raise ValueError(f"a k-nearest local graph needs local_k >= 1, got {self.local_k}")
        if self.local == "radius" and (self.local_radius is None or self.local_radius <= 0):
            raise ValueError(f"a radius local graph needs local_radius > 0, got {self.local_radius}")

    def num_edge_features(self, num_node_attr: int) -> int:
        return 1 if self.edge_attr == "distance" else num_node_attr + 1

    def __call__(self, batch: Batch, *, training: bool = True) -> Batch:
        pos, node_batch = batch.pos, batch.batch
        if self.kind == "complete":
            edge_index = complete_graph(node_batch)
        else:
            assert self.radius is not None
            edge_index = radius_graph(pos, self.radius, node_batch, self.max_num_neighbors)
        if self.edge_drop > 0:
            generator = None
            if self.edge_drop_mode == "random" and not training:
                generator = torch.Generator(device=pos.device).manual_seed(0)
            edge_index = drop_edges(edge_index, pos, node_batch, self.edge_drop, self.edge_drop_mode, generator)
        batch.edge_index = edge_index
        batch.edge_attr = edge_features(pos, batch.node_attr, edge_index, self.edge_attr)
        if self.local == "bonds":
            if getattr(batch, "bond_index", None) is None:
                raise ValueError("graph.local is 'bonds' but the batch has no bond_index: the store has no "
                                 "'edge_index' array (use graph.local 'knn' or 'radius')")
            batch.local_index = batch.bond_index
        elif self.local == "knn":
            batch.local_index = knn_graph(pos, self.local_k, node_batch)
        elif self.local == "radius":
            assert self.local_radius is not None
            batch.local_index = radius_graph(pos, self.local_radius, node_batch, self.max_num_neighbors)
        if self.local != "none":
            # the global graph's kind of attributes on the local edges (EGHN's E-Pool reads them)
            batch.local_attr = edge_features(pos, batch.node_attr, batch.local_index, self.edge_attr)
        return batch
