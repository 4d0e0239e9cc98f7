"""Graph parallelism, part 1: split every graph of a batch across the R ranks of a group by space.

Every rank of a graph-parallel group holds the same whole batch (the sampler gives them the same
samples). Each rank then

1. assigns every node of every graph to a rank by recursive coordinate bisection
   (:func:`coordinate_bisection`: the same answer on every rank, computed with torch on the batch's
   device, node counts balanced to within one per cut);
2. builds the edges INTO the nodes it owns, exactly the single-device graph's (:func:`shard_batch`).
   Sources of those edges that another rank owns form its halo.

Two routes to those edges, chosen per batch and rank:

- Local (radius graphs without edge dropping, not periodic): the candidates are the owned nodes
  plus every node inside the owned nodes' bounding box grown by r (per graph; a superset of the
  halo, since a neighbour within r is within r along every axis). The same :class:`GraphBuilder`
  runs on that sub-batch and the edges into owned nodes are kept. Each owned node's neighbours
  within r are all candidates, so its edges are the single-device ones. Cost: the search and
  the edge list are about 1/R of the whole plus the halo. If an owned node reaches
  max_num_neighbors, which neighbours the search keeps may depend on the point set, so that rank
  takes the global route instead (exact, and only where truncation happens).
- Global (complete graphs, edge dropping, periodic boxes, the fallback above): the whole graph as
  the single-device run builds it, then the edges into owned nodes. Exact by construction:
  'shortest' dropping ranks the whole graph's edges with its ties, 'random' dropping draws the
  same numbers from the same RNG state on every rank. Cost: each rank holds the whole integer edge
  list (16 bytes per edge) for a moment and runs the whole search, small next to the model's
  per-edge activations, which are split R ways.

The model then sees the OWNED nodes only (``pos``, ``vel``, ``h``, ``target``, ``node_attr``,
``batch`` have N_own rows), ``edge_index[1]`` indexing them and ``edge_index[0]`` indexing the
extended set [owned, halo]; ``batch.halo`` (:class:`scaleq.distributed.halo.GraphHalo`) brings the
halo rows each layer. The halo rows are ordered by owner rank, then by global node id.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor
from torch_geometric.data import Batch

from scaleq.graph.builder import GraphBuilder
from scaleq.nn.scatter import rank_within_groups

# Per-node fields a batch may carry; they are cut to the owned rows. Other node-sized fields are
# found by shape (see :func:`_node_fields`); these per-graph and per-edge ones never are.
NODE_FIELDS = ("pos", "vel", "h", "target", "node_attr", "batch")
NOT_NODE_FIELDS = ("horizon", "box", "ptr", "edge_index", "edge_attr", "edge_shift", "bond_index", "bond_attr", "local_index")


def coordinate_bisection(pos: Tensor, batch: Tensor, num_graphs: int, parts: int) -> Tensor:
    """Recursive coordinate bisection of every graph into ``parts`` spatial parts.

    Each graph's current cell is cut across its longest extent at the node-count quantile that
    gives the left ``parts // 2`` ranks their share, until every cell is one rank; all graphs and
    cells are cut at once (ceil(log2 R) vectorised rounds, no loop over graphs). A graph of n nodes
    gives each part floor or ceil of n / R nodes (up to one more per round when R is not a power
    of two). Nodes at the same coordinate are split by their index, so identical positions (all
    particles in one cell) still balance; otherwise the result does not depend on node order.
    Graphs with fewer nodes than parts leave some parts empty.

    Shapes:
        pos: [N, D], batch: [N] (graph of each node) -> part: [N] int64 in [0, parts)
    """
    if parts < 1:
        raise ValueError(f"the number of parts must be >= 1, got {parts}")
    n, dim = pos.shape
    lo = torch.zeros(n, dtype=torch.long, device=pos.device)  # each node's range of ranks [lo, hi)
    hi = torch.full_like(lo, parts)
    coords = pos.detach()
    rounds = (parts - 1).bit_length()  # ceil(log2 parts)
    for _ in range(rounds):
        span = hi - lo
        cell = batch * parts + lo  # one id per (graph, cell)
        num_cells = num_graphs * parts
        index = cell[:, None].expand(-1, dim)
        low = coords.new_full((num_cells, dim), torch.inf).scatter_reduce_(0, index, coords, "amin")
        high = coords.new_full((num_cells, dim), -torch.inf).scatter_reduce_(0, index, coords, "amax")
        axis = (high - low).nan_to_num(0.0, posinf=0.0, neginf=0.0).argmax(-1)  # [cells] longest extent
        key = coords.gather(1, axis[cell][:, None]).squeeze(1)
        order = rank_within_groups(key, cell, num_cells)  # position of each node along its cell's axis
        count = torch.bincount(cell, minlength=num_cells)[cell]
        left_ranks = span // 2
        go_left = order < torch.div(count * left_ranks, span.clamp_min(1), rounding_mode="floor")
        split = span > 1
        mid = lo + left_ranks
        lo = torch.where(split & ~go_left, mid, lo)
        hi = torch.where(split & go_left, mid, hi)
    return lo


@dataclass(frozen=True)
class GraphPart:
    """What one rank holds of a partitioned batch.

    owned: global ids of the nodes this rank owns, ascending [N_own].
    halo: global ids of the remote sources its edges need, ordered by owner then id [N_halo].
    halo_counts: how many halo nodes each rank of the group owns [R] (entry ``rank`` is 0).
    edge_keep: which edges of the whole graph are this rank's (target owned) [E] bool.
    edge_index: those edges in local numbering: sources in [0, N_own + N_halo), targets in
        [0, N_own) [2, E_own].
    """

    owned: Tensor
    halo: Tensor
    halo_counts: Tensor
    edge_keep: Tensor
    edge_index: Tensor


def split_edges(edge_index: Tensor, part: Tensor, rank: int, parts: int) -> GraphPart:
    """This rank's share of a whole graph: the owned nodes, the edges into them, and the halo.

    Shapes:
        edge_index: [2, E] global (j -> i), part: [N] rank of each node -> GraphPart
    """
    n = part.shape[0]
    owned = torch.nonzero(part == rank).squeeze(1)
    keep = part[edge_index[1]] == rank
    source, target = edge_index[0, keep], edge_index[1, keep]
    remote = source[part[source] != rank]
    # halo: unique remote sources sorted by (owner, global id), one key so one sort does both
    halo = torch.unique(part[remote] * n + remote)
    halo_owner, halo = torch.div(halo, n, rounding_mode="floor"), halo % n
    halo_counts = torch.bincount(halo_owner, minlength=parts)
    # global id -> local row: owned rows first, then the halo rows
    local = torch.full((n,), -1, dtype=torch.long, device=part.device)
    local[owned] = torch.arange(owned.numel(), device=part.device)
    local[halo] = owned.numel() + torch.arange(halo.numel(), device=part.device)
    return GraphPart(owned, halo, halo_counts, keep, torch.stack([local[source], local[target]]))


def radius_candidates(pos: Tensor, batch: Tensor, num_graphs: int, owned: Tensor, radius: float) -> Tensor:
    """Global ids (ascending) of the owned nodes and of every node of the same graph inside the
    owned nodes' bounding box grown by ``radius`` on every side.

    Shapes:
        pos: [N, D], batch: [N], owned: [N_own] -> [N_cand]
    """
    dim = pos.shape[1]
    index = batch[owned][:, None].expand(-1, dim)
    low = pos.new_full((num_graphs, dim), torch.inf).scatter_reduce_(0, index, pos[owned], "amin") - radius
    high = pos.new_full((num_graphs, dim), -torch.inf).scatter_reduce_(0, index, pos[owned], "amax") + radius
    inside = ((pos >= low[batch]) & (pos <= high[batch])).all(-1)  # graphs without owned nodes: none
    inside[owned] = True
    return torch.nonzero(inside).squeeze(1)


def _local_route(graph: GraphBuilder) -> bool:
    return graph.kind == "radius" and graph.edge_drop == 0 and not getattr(graph, "periodic", False)


def shard_batch(
    batch: Batch, graph: GraphBuilder, owner: Tensor, rank: int, parts: int, *, training: bool = True
) -> tuple[Batch, GraphPart]:
    """This rank's share of the whole ``batch`` (no edges yet) with the single-device graph's edges
    into its owned nodes, by the local route where it applies, else the global one (module docstring).

    Shapes:
        batch: N nodes, owner: [N] rank of each node -> (N_own nodes with E_own edges, GraphPart)
    """
    if _local_route(graph):
        assert graph.radius is not None
        owned = torch.nonzero(owner == rank).squeeze(1)
        candidates = radius_candidates(batch.pos, batch.batch, int(batch.num_graphs), owned, graph.radius)
        sub = graph(_select_nodes(batch, candidates), training=training)
        sub_owned = owner[candidates] == rank
        degree = torch.bincount(sub.edge_index[1], minlength=candidates.numel())
        if not (degree[sub_owned] >= graph.max_num_neighbors).any():  # no owned neighbourhood truncated
            part = split_edges(candidates[sub.edge_index], owner, rank, parts)
            return local_batch(batch, part, edges=sub), part
    whole = graph(batch, training=training)
    part = split_edges(whole.edge_index, owner, rank, parts)
    return local_batch(whole, part), part


def _select_nodes(batch: Batch, nodes: Tensor) -> Batch:
    """The rows ``nodes`` (ascending global ids) of every per-node field; per-graph fields kept."""
    n, num_graphs = batch.pos.shape[0], int(batch.num_graphs)
    out = copy.copy(batch)
    for key in _node_fields(batch, n):
        out[key] = batch[key][nodes]
    counts = torch.bincount(out.batch, minlength=num_graphs)
    out.ptr = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
    out.num_nodes = nodes.numel()
    out._num_graphs = num_graphs
    return out


def _node_fields(batch: Batch, num_nodes: int) -> list[str]:
    fields = [key for key in NODE_FIELDS if getattr(batch, key, None) is not None]
    for key in batch.keys():
        value = batch[key]
        if (key not in fields and key not in NOT_NODE_FIELDS and isinstance(value, Tensor) and value.dim() > 0
                and value.shape[0] == num_nodes):
            fields.append(key)
    return fields


def local_batch(batch: Batch, part: GraphPart, edges: Batch | None = None) -> Batch:
    """The owned rows of every per-node field, this rank's edges and their attributes; per-graph
    fields (``horizon``) and ``num_graphs`` unchanged; ``ptr`` counts owned nodes per graph.
    ``edges`` holds the edge fields ``part.edge_keep`` selects from (default: ``batch``).

    Shapes:
        batch: N nodes, E edges -> N_own nodes, E_own edges
    """
    edges = batch if edges is None else edges
    out = _select_nodes(batch, part.owned)
    out.edge_index = part.edge_index
    for key in ("edge_attr", "edge_shift"):
        if getattr(edges, key, None) is not None:
            out[key] = edges[key][part.edge_keep]
    return out
