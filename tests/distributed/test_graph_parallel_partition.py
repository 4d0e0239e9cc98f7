"""Spatial partition and edge split (one process, no communication): balance, order independence,
every edge exactly once, and the degenerate cases (more ranks than nodes, all particles in one
place, a rank that owns nothing of a graph)."""

import pytest
import torch
from torch_geometric.data import Batch

from scaleq.distributed.partition import (
    coordinate_bisection,
    local_batch,
    radius_candidates,
    shard_batch,
    split_edges,
)
from scaleq.graph.builder import GraphBuilder
from tests.support.stores import random_batch


def _counts(owner: torch.Tensor, batch: torch.Tensor, num_graphs: int, parts: int) -> torch.Tensor:
    return torch.bincount(batch * parts + owner, minlength=num_graphs * parts).view(num_graphs, parts)


@pytest.mark.parametrize("parts", [1, 2, 3, 4, 8])
def test_bisection_balances_every_graph(parts):
    batch = random_batch(3, nodes=(40, 17, 9), seed=1)
    owner = coordinate_bisection(batch.pos, batch.batch, 3, parts)
    assert owner.min() >= 0 and owner.max() < parts
    counts = _counts(owner, batch.batch, 3, parts)
    sizes = torch.tensor([40, 17, 9])
    assert torch.equal(counts.sum(1), sizes)
    # within one node of n / R per power-of-two round; exactly floor/ceil when R is a power of two
    slack = 0 if parts & (parts - 1) == 0 else 1
    assert (counts >= torch.div(sizes, parts, rounding_mode="floor")[:, None] - slack).all()
    assert (counts <= -torch.div(-sizes, parts, rounding_mode="floor")[:, None] + slack).all()


def test_bisection_is_spatial_and_does_not_depend_on_node_order():
    batch = random_batch(1, nodes=(64,), seed=2)
    owner = coordinate_bisection(batch.pos, batch.batch, 1, 4)
    permutation = torch.randperm(64, generator=torch.Generator().manual_seed(0))
    permuted = coordinate_bisection(batch.pos[permutation], batch.batch, 1, 4)
    assert torch.equal(permuted, owner[permutation])
    # the first cut is a plane across the longest axis: the two halves do not interleave along it
    axis = int((batch.pos.amax(0) - batch.pos.amin(0)).argmax())
    left = owner < 2
    assert batch.pos[left, axis].max() < batch.pos[~left, axis].min()


def test_more_ranks_than_nodes_and_identical_positions():
    tiny = random_batch(2, nodes=(2, 6), seed=3)
    tiny.pos[2:] = 0.5  # the second graph: every particle at the same point
    owner = coordinate_bisection(tiny.pos, tiny.batch, 2, 4)
    counts = _counts(owner, tiny.batch, 2, 4)
    assert counts[0].tolist().count(0) == 2 and counts[0].sum() == 2  # two ranks own nothing of graph 0
    assert sorted(counts[1].tolist()) == [1, 1, 2, 2]  # identical points still balance


@pytest.mark.parametrize("kind", ["complete", "radius"])
@pytest.mark.parametrize("parts", [2, 3, 4])
def test_split_edges_covers_every_edge_once_with_a_consistent_halo(kind, parts):
    batch = random_batch(3, nodes=(12, 3, 9), seed=4)
    graph = GraphBuilder(kind=kind, radius=1.5 if kind == "radius" else None, edge_drop=0.3)
    whole = graph(batch.clone())
    owner = coordinate_bisection(whole.pos, whole.batch, 3, parts)
    seen = []
    for rank in range(parts):
        part = split_edges(whole.edge_index, owner, rank, parts)
        local_to_global = torch.cat([part.owned, part.halo])
        assert (owner[part.owned] == rank).all() and (owner[part.halo] != rank).all()
        assert torch.equal(part.halo_counts, torch.bincount(owner[part.halo], minlength=parts))
        assert torch.equal(owner[part.halo], owner[part.halo].sort().values)  # grouped by owner
        assert (part.edge_index[1] < part.owned.numel()).all()
        seen.append(local_to_global[part.edge_index])
        shard = local_batch(whole, part)
        assert shard.pos.shape[0] == shard.batch.shape[0] == part.owned.numel()
        assert torch.equal(shard.edge_attr, whole.edge_attr[part.edge_keep])
        assert int(shard.num_graphs) == 3 and torch.equal(shard.horizon, whole.horizon)
        assert torch.equal(shard.target, whole.target[part.owned])
    together = torch.cat(seen, 1)
    assert together.shape == whole.edge_index.shape
    key = lambda e: (e[0] * 1000 + e[1]).sort().values  # noqa: E731
    assert torch.equal(key(together), key(whole.edge_index))


def test_a_rank_that_owns_nothing_of_a_graph_gets_an_empty_share_of_it():
    batch = Batch.from_data_list(random_batch(2, nodes=(1, 8), seed=5).to_data_list())
    whole = GraphBuilder(kind="complete")(batch)
    owner = coordinate_bisection(whole.pos, whole.batch, 2, 2)
    for rank in range(2):
        shard = local_batch(whole, split_edges(whole.edge_index, owner, rank, 2))
        owns_graph0 = bool((shard.batch == 0).any())
        assert owns_graph0 == (rank == int(owner[0]))
        assert shard.ptr.tolist()[-1] == shard.pos.shape[0]


def _global_edges(shard, part):
    """A shard's edges in global node ids, sorted, with their attributes in the same order."""
    local_to_global = torch.cat([part.owned, part.halo])
    edges = local_to_global[shard.edge_index]
    order = torch.argsort(edges[0] * 10_000 + edges[1])
    return edges[:, order], shard.edge_attr[order]


@pytest.mark.filterwarnings("ignore:radius_graph")  # the truncation warning is the point of the 3 case
@pytest.mark.parametrize("max_num_neighbors", [64, 3])  # 3: owned neighbourhoods truncated -> global route
@pytest.mark.parametrize("parts", [2, 4])
def test_local_radius_route_gives_the_global_route_edges(parts, max_num_neighbors):
    batch = random_batch(3, nodes=(30, 12, 2), seed=6)
    graph = GraphBuilder(kind="radius", radius=1.2, max_num_neighbors=max_num_neighbors)
    whole = graph(batch.clone())
    owner = coordinate_bisection(batch.pos, batch.batch, 3, parts)
    halo_rows = 0
    for rank in range(parts):
        shard, part = shard_batch(batch.clone(), graph, owner, rank, parts)
        expected = split_edges(whole.edge_index, owner, rank, parts)
        reference = local_batch(whole, expected)
        got_edges, got_attr = _global_edges(shard, part)
        want_edges, want_attr = _global_edges(reference, expected)
        assert torch.equal(got_edges, want_edges)
        torch.testing.assert_close(got_attr, want_attr, rtol=0, atol=0)
        assert torch.equal(part.halo, expected.halo)  # the same halo, in the same order
        halo_rows += part.halo.numel()
    assert halo_rows > 0


def test_radius_candidates_hold_every_neighbour_of_the_owned_nodes():
    batch = random_batch(2, nodes=(40, 5), seed=7)
    owner = coordinate_bisection(batch.pos, batch.batch, 2, 4)
    owned = torch.nonzero(owner == 1).squeeze(1)
    candidates = radius_candidates(batch.pos, batch.batch, 2, owned, 0.8)
    dist = torch.cdist(batch.pos[owned], batch.pos)
    same_graph = batch.batch[owned][:, None] == batch.batch[None, :]
    needed = torch.nonzero(((dist < 0.8) & same_graph).any(0)).squeeze(1)
    assert set(needed.tolist()) <= set(candidates.tolist())
    assert candidates.numel() < batch.pos.shape[0]  # and not simply everything
