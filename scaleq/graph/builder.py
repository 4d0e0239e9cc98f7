"""Graphs built on the training device inside the step: complete graphs, radius graphs, edge
dropping (FastEGNN), and optionally a second, local graph (bonds, k-nearest neighbours or radius)
for hierarchical models (EGHN).

Edges flow j -> i: ``edge_index[0]`` is the source j, ``edge_index[1]`` the target i. Radius
graphs come from torch-cluster or the O(N) cell list (``scaleq.graph.cell_list``), chosen by
``graph.backend``; both give the same graph, sorted by target. This is the only module that imports
torch-cluster (torch-geometric 2.8 no longer routes to it).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, fields

import torch
import torch_cluster
from torch import Tensor
from torch_geometric.data import Batch

from scaleq.config import GraphConfig
from scaleq.graph.cell_list import RadiusEdges, cell_list_radius_graph, count_radius_edges
from scaleq.graph.cell_table import check_box_sides
from scaleq.graph.memory import check_edges_fit, edges_fit, pair_budget
from scaleq.graph.nearest import keep_nearest
from scaleq.graph.options import (
    Backend,
    EdgeAttrKind,
    EdgeDropMode,
    num_edge_features,
)
from scaleq.nn.scatter import rank_within_groups


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


def resolve_backend(backend: Backend, device: torch.device, periodic: bool = False) -> str:
    """'auto' is the cell list on CUDA (O(N); torch-cluster's CUDA search is brute force within
    each graph) and for periodic boxes (torch-cluster has none), torch-cluster's KD-tree on CPU."""
    if backend == "auto":
        return "cell_list" if device.type == "cuda" or periodic else "torch_cluster"
    if backend == "torch_cluster" and periodic:
        raise ValueError("graph.periodic needs graph.backend 'cell_list' (or 'auto'): torch-cluster has no periodic boxes")
    return backend


def radius_graph(
    pos: Tensor, radius: float, batch: Tensor, max_num_neighbors: int, *, backend: Backend = "auto",
    box: Tensor | None = None, num_graphs: int | None = None,
) -> RadiusEdges:
    """Edges j -> i between nodes of one graph closer than ``radius`` (no self loops), sorted by
    target, from torch-cluster or the cell list (:mod:`scaleq.graph.cell_list`).

    A node with more than ``max_num_neighbors`` neighbours keeps its nearest ones (ties: the
    source's position, lexicographically), on every backend, so the graph does not depend on node
    order; ``num_capped`` of the result says how many nodes that cut. ``box`` [B, D, 2] (lower,
    upper corner per graph) makes the boxes periodic (cell list only). ``batch`` must be sorted for
    torch-cluster (PyG batches are). ``num_graphs`` saves a host read of max(batch).

    Shapes:
        pos: [N, D], batch: [N] -> RadiusEdges(edge_index [2, E], edge_shift [E, D] or None)
    """
    if num_graphs is None:
        num_graphs = int(batch.max()) + 1 if batch.numel() else 0
    if resolve_backend(backend, pos.device, box is not None) == "cell_list":
        return cell_list_radius_graph(pos, radius, batch, num_graphs=num_graphs, box=box, max_num_neighbors=max_num_neighbors)
    return _torch_cluster_radius_graph(pos, radius, batch, max_num_neighbors, num_graphs)


def _torch_cluster_radius_graph(pos: Tensor, radius: float, batch: Tensor, max_num_neighbors: int, num_graphs: int) -> RadiusEdges:
    """torch-cluster keeps the first neighbours it meets, not the nearest: ask it for one more than
    the cap; when some node reaches that, ask again for those nodes with larger caps until their
    neighbourhoods are complete, then keep the nearest. Its output comes sorted by target.

    The second search runs on blocks of the capped nodes of about N x (cap + 1) pairs each, every
    block cut to its nearest before the next, so memory stays about N x cap however dense the data
    (a radius far too large costs time, not memory). Before the first search, N x (cap + 1) edges
    are checked against the free memory (counted exactly with the cell list when that bound does
    not fit)."""
    num_nodes = pos.shape[0]
    if num_nodes == 0:
        return RadiusEdges(batch.new_zeros((2, 0)), None, 0)
    sizes = torch.bincount(batch, minlength=num_graphs)
    # one host read for both: the largest graph (a search that reached it is complete) and the
    # bound on the capped edges, N x min(cap, n_b - 1), that the fit check starts from
    largest_graph, bound = torch.stack([sizes.max(), (sizes * (sizes - 1).clamp(min=0, max=max_num_neighbors)).sum()]).tolist()
    _check_capped_graph_fits(bound, pos, radius, batch, max_num_neighbors, num_graphs)
    edge_index = torch_cluster.radius_graph(
        pos, r=radius, batch=batch, loop=False, max_num_neighbors=max_num_neighbors + 1,
        flow="source_to_target", batch_size=num_graphs,
    )
    degree = torch.bincount(edge_index[1], minlength=num_nodes)
    # the one host read scaleq adds to torch-cluster's own (the cell list adds none to its output size)
    capped = (degree > max_num_neighbors).nonzero().squeeze(1)  # neighbourhoods possibly incomplete
    if capped.numel() == 0:
        return RadiusEdges(edge_index, None, 0)
    budget = pair_budget(num_nodes, max_num_neighbors)
    assert budget is not None
    nearest = [edge_index[:, (degree <= max_num_neighbors)[edge_index[1]]]]
    pending, cap = capped, 4 * (max_num_neighbors + 2)
    while pending.numel():
        incomplete = []
        block = max(1, budget // cap)
        for start in range(0, pending.numel(), block):
            nodes = pending[start : start + block]  # sorted, as torch-cluster needs the queries' batch
            found = torch_cluster.radius(pos, pos[nodes], radius, batch, batch[nodes], max_num_neighbors=cap,
                                         batch_size=num_graphs)
            complete = torch.bincount(found[0], minlength=nodes.numel()) < cap
            if cap >= largest_graph:  # a graph's every node was within reach: nothing is missing
                complete[:] = True
            found = found[:, complete[found[0]]]
            target, source = nodes[found[0]], found[1]
            refound = torch.stack([source[source != target], target[source != target]])
            nearest.append(refound[:, keep_nearest(refound, pos, max_num_neighbors)])
            incomplete.append(nodes[~complete])
        pending, cap = torch.cat(incomplete), cap * 4
    edges = torch.cat(nearest, dim=1)
    return RadiusEdges(edges[:, torch.argsort(edges[1], stable=True)], None, int(capped.numel()))


def _check_capped_graph_fits(bound: int, pos: Tensor, radius: float, batch: Tensor, max_num_neighbors: int,
                             num_graphs: int) -> None:
    """Refuse, before searching, a capped graph that cannot fit: ``bound`` edges (N x min(cap,
    n_b - 1)) when they fit, else the cell list's count of the edges within r (each node's capped)."""
    if edges_fit(bound, pos.device):
        return
    counted = count_radius_edges(pos, radius, batch, num_graphs, max_num_neighbors)
    check_edges_fit(counted, num_nodes=pos.shape[0], radius=radius, max_num_neighbors=max_num_neighbors,
                    device=pos.device, exact=True)


def knn_graph(pos: Tensor, k: int, batch: Tensor) -> Tensor:
    """Edges from each node's k nearest neighbours in its graph to it (no self loops).

    Shapes:
        pos: [N, D], batch: [N] (sorted) -> edge_index: [2, E], E <= N k
    """
    return torch_cluster.knn_graph(pos, k=k, batch=batch, loop=False, flow="source_to_target")


def edge_features(
    pos: Tensor, node_attr: Tensor, edge_index: Tensor, edge_shift: Tensor | None = None, kind: EdgeAttrKind = "egnn"
) -> Tensor:
    """Invariant edge attributes in the input frame (minimum image with ``edge_shift``). 'egnn':
    products of the static node features of both ends and the squared distance (EGNN's N-body edge
    attribute [q_i q_j, |x_i - x_j|^2]); 'distance': the distance |x_i - x_j| alone (FastEGNN's
    N-body and protein datasets).

    Shapes:
        pos: [N, D], node_attr: [N, F], edge_index: [2, E], edge_shift: [E, D] -> [E, F + 1] ('egnn') or [E, 1]
    """
    dist2 = edge_length2(pos, edge_index, edge_shift)[:, None]
    if kind == "distance":
        return dist2.sqrt()
    return torch.cat([node_attr[edge_index[1]] * node_attr[edge_index[0]], dist2], dim=-1)


def edge_length2(pos: Tensor, edge_index: Tensor, edge_shift: Tensor | None = None) -> Tensor:
    """|x_i - x_j|^2 of each edge (minimum image with ``edge_shift``). Shapes: -> [E]."""
    diff = pos[edge_index[1]] - pos[edge_index[0]]
    if edge_shift is not None:
        diff = diff + edge_shift
    return diff.pow(2).sum(-1)


def drop_edges(
    edge_index: Tensor, pos: Tensor, batch: Tensor, p: float, mode: EdgeDropMode = "shortest",
    generator: torch.Generator | None = None, edge_shift: Tensor | None = None, num_graphs: int | None = None,
) -> Tensor:
    """The edges that :func:`edge_drop_mask` keeps. Shapes: edge_index [2, E] -> [2, E']."""
    return edge_index[:, edge_drop_mask(edge_index, pos, batch, p, mode, generator, edge_shift, num_graphs)]


def edge_drop_mask(
    edge_index: Tensor, pos: Tensor, batch: Tensor, p: float, mode: EdgeDropMode = "shortest",
    generator: torch.Generator | None = None, edge_shift: Tensor | None = None, num_graphs: int | None = None,
) -> Tensor:
    """Which edges survive dropping a fraction ``p`` of each graph's E_b edges.

    'shortest' works on undirected pairs {i, j} (both directions together): per graph, pairs in
    order of length are kept while the edges kept stay within floor((1 - p) E_b). Equal lengths
    are ordered by the pair's end positions (lexicographically, the lexicographically smaller end
    first), so the kept set depends on the positions only, not on node labels (only pairs whose
    ends both coincide with another pair's fall back to indices). FastEGNN's published code ranks
    DIRECTED edges with topk, so an odd budget or equal lengths at the cut keep one direction, or
    one of the tied pairs, by index. A graph keeps floor((1 - p) E_b) edges, or one fewer when the
    cut falls inside a pair. 'random' keeps exactly floor((1 - p) E_b) directed edges drawn from
    ``generator`` (default: torch's global RNG, which runs seed and checkpoints restore). p = 1
    leaves no edges (EGNN* / FastEGNN-<C, 1>). No per-graph loop.

    Shapes:
        edge_index: [2, E] (j -> i), pos: [N, D], batch: [N], edge_shift: [E, D] or None -> [E] bool
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"edge drop rate must be in [0, 1], got {p}")
    if mode not in ("shortest", "random"):
        raise ValueError(f"edge drop mode must be 'shortest' or 'random', got {mode!r}")
    num_edges = edge_index.shape[1]
    if p == 0.0 or num_edges == 0:
        return torch.ones(num_edges, dtype=torch.bool, device=edge_index.device)
    if p == 1.0:
        return torch.zeros(num_edges, dtype=torch.bool, device=edge_index.device)
    graph = batch[edge_index[1]]  # [E] graph of each edge
    num_graphs = num_graphs if num_graphs is not None else int(batch.max()) + 1
    per_graph = torch.bincount(graph, minlength=num_graphs)  # [B]
    budget = ((1.0 - p) * per_graph.double() + 1e-9).floor().long()  # the epsilon absorbs 0.3 * 10 = 2.999...
    if mode == "random":
        key = torch.rand(num_edges, generator=generator, device=pos.device)
        return rank_within_groups(key, graph, num_graphs) < budget[graph]
    return _shortest_pairs_mask(edge_index, pos, edge_length2(pos, edge_index, edge_shift), graph, budget)


def _shortest_pairs_mask(edge_index: Tensor, pos: Tensor, length2: Tensor, graph: Tensor, budget: Tensor) -> Tensor:
    """'shortest' edge dropping by undirected pairs (see :func:`edge_drop_mask`)."""
    source, target = edge_index
    keys, pair = torch.unique(torch.minimum(source, target) * pos.shape[0] + torch.maximum(source, target),
                              return_inverse=True)  # [E] pair of each edge
    num_pairs = keys.numel()
    size = torch.bincount(pair, minlength=num_pairs)  # 1 or 2 edges per pair
    # both directions have the same length bit for bit; amin only makes that explicit
    pair_length = length2.new_full((num_pairs,), torch.inf).scatter_reduce(0, pair, length2, "amin")
    pair_graph = torch.zeros_like(size).scatter_reduce(0, pair, graph, "amax", include_self=False)
    # the pair's ends ordered by position (lexicographically), not by index
    a, b = pos[torch.div(keys, pos.shape[0], rounding_mode="floor")], pos[keys % pos.shape[0]]
    a_first = torch.zeros(num_pairs, dtype=torch.bool, device=pos.device)
    for axis in reversed(range(pos.shape[1])):  # the first axis that differs decides
        a_first = torch.where(a[:, axis] != b[:, axis], a[:, axis] < b[:, axis], a_first)
    low, high = torch.where(a_first[:, None], a, b), torch.where(a_first[:, None], b, a)
    # sort by (graph, length, low end's position, high end's position, index key): stable sorts
    # from the least significant key up
    order = torch.arange(num_pairs, device=pos.device)
    for column in [*reversed(high.unbind(1)), *reversed(low.unbind(1)), pair_length, pair_graph]:
        order = order[torch.argsort(column[order], stable=True)]
    per_graph = torch.zeros_like(budget).index_add_(0, pair_graph, size)
    edges_before_graph = torch.cumsum(per_graph, 0) - per_graph
    g = pair_graph[order]
    kept_through = torch.cumsum(size[order], 0) - edges_before_graph[g]  # edges kept if the cut falls after this pair
    keep_pair = torch.empty_like(a_first)
    keep_pair[order] = kept_through <= budget[g]
    return keep_pair[pair]


class CapWarning:
    """Warns once (per graph of one builder) that neighbourhoods were cut to the cap. The count of
    cut nodes comes with the radius graph's output size, so warning costs no extra device read."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.warned = False

    def report(self, edges: RadiusEdges, num_nodes: int, radius: float, max_num_neighbors: int) -> None:
        if edges.num_capped and not self.warned:
            warnings.warn(
                f"{self.what}: {edges.num_capped} of {num_nodes} nodes have more than max_num_neighbors="
                f"{max_num_neighbors} neighbours within r={radius}; their neighbourhoods are truncated to the "
                "nearest ones (raise graph.max_num_neighbors to keep them)",
                stacklevel=3,
            )
            self.warned = True


@dataclass(frozen=True, kw_only=True)
class GraphBuilder(GraphConfig):
    """Adds ``edge_index`` [2, E] (sorted by target for radius graphs) and ``edge_attr`` [E, F + 1]
    to a batch, on its device; with ``periodic``, also ``edge_shift`` [E, D] (add it to
    ``pos[i] - pos[j]`` for the minimum-image difference), the boxes coming from the batch's ``box``
    [B, D, 2] (the store's ``bounds``, lower and upper corner per axis).

    ``backend`` picks the radius-graph search: 'torch_cluster', 'cell_list' or 'auto' (cell list on
    CUDA and for periodic boxes, torch-cluster on CPU); see :func:`radius_graph`. Every backend
    keeps each node's nearest ``max_num_neighbors``, and the builder warns once per graph kind
    (main, local) when that cuts anything.

    ``edge_drop`` > 0 then drops that fraction of each graph's edges (see :func:`edge_drop_mask`).
    In 'random' mode evaluation batches (``training=False``) draw from a generator reseeded at
    every call, so validation numbers do not depend on what ran before.

    With ``local`` other than 'none' it also adds a local graph ``local_index`` [2, E_local]: the
    store's static bonds ('bonds'), each node's ``local_k`` nearest neighbours ('knn') or the
    neighbours within ``local_radius`` ('radius'), all in the input frame (not periodic), and its
    attributes ``local_attr``, computed as ``edge_attr`` (``edge_attr``: see :func:`edge_features`).

    The options are :class:`scaleq.config.GraphConfig`'s, inherited (defined and checked there
    once): ``GraphBuilder(kind="radius", radius=0.1)`` or ``GraphBuilder.from_config(config.graph)``.
    """

    _main_cap: CapWarning = field(default_factory=lambda: CapWarning("radius graph"), init=False, repr=False, compare=False)
    _local_cap: CapWarning = field(default_factory=lambda: CapWarning("local radius graph"), init=False, repr=False, compare=False)
    _boxes_checked: list[bool] = field(default_factory=lambda: [False], init=False, repr=False, compare=False)

    @classmethod
    def from_config(cls, graph: GraphConfig) -> GraphBuilder:
        """The builder a config's ``graph:`` section describes."""
        return cls(**{f.name: getattr(graph, f.name) for f in fields(GraphConfig)})

    def num_edge_features(self, num_node_attr: int) -> int:
        return num_edge_features(self.edge_attr, num_node_attr)

    def __call__(self, batch: Batch, *, training: bool = True) -> Batch:
        pos, node_batch = batch.pos, batch.batch
        num_graphs = int(batch.num_graphs) if hasattr(batch, "num_graphs") else None
        edge_shift = None
        if self.kind == "complete":
            edge_index = complete_graph(node_batch)
        else:
            assert self.radius is not None
            box = self._box(batch) if self.periodic else None
            edges = radius_graph(pos, self.radius, node_batch, self.max_num_neighbors, backend=self.backend,
                                 box=box, num_graphs=num_graphs)
            self._main_cap.report(edges, pos.shape[0], self.radius, self.max_num_neighbors)
            edge_index, edge_shift = edges.edge_index, edges.edge_shift
        if self.edge_drop > 0:
            generator = None
            if self.edge_drop_mode == "random" and not training:
                generator = torch.Generator(device=pos.device).manual_seed(0)
            keep = edge_drop_mask(edge_index, pos, node_batch, self.edge_drop, self.edge_drop_mode, generator, edge_shift,
                                  num_graphs)
            edge_index = edge_index[:, keep]
            edge_shift = edge_shift[keep] if edge_shift is not None else None
        batch.edge_index = edge_index
        batch.edge_shift = edge_shift
        batch.edge_attr = edge_features(pos, batch.node_attr, edge_index, edge_shift, self.edge_attr)
        if self.local == "bonds":
            if getattr(batch, "bond_index", None) is None:
                raise ValueError("graph.local is 'bonds' but the batch has no bond_index: the store has no "
                                 "'edge_index' array (use graph.local 'knn' or 'radius')")
            batch.local_index = batch.bond_index
        elif self.local == "knn":
            batch.local_index = knn_graph(pos, self.local_k, node_batch)
        elif self.local == "radius":
            assert self.local_radius is not None
            local = radius_graph(pos, self.local_radius, node_batch, self.max_num_neighbors, backend=self.backend,
                                 num_graphs=num_graphs)
            self._local_cap.report(local, pos.shape[0], self.local_radius, self.max_num_neighbors)
            batch.local_index = local.edge_index
        if self.local != "none":
            # the global graph's kind of attributes on the local edges (EGHN's E-Pool reads them)
            batch.local_attr = edge_features(pos, batch.node_attr, batch.local_index, kind=self.edge_attr)
        return batch

    def _box(self, batch: Batch) -> Tensor:
        box = getattr(batch, "box", None)
        if box is None:
            raise ValueError("graph.periodic is set but the batch has no 'box': the dataset takes it from the "
                             "store's 'bounds' attribute")
        if not self._boxes_checked[0]:  # a store's bounds do not change: one device read, not one per step
            check_box_sides(box)
            self._boxes_checked[0] = True
        return box.to(batch.pos.dtype)
