import itertools
import warnings

import pytest
import torch
from torch_geometric.data import Batch

import scaleq.data.graph as graph_module
from scaleq.data.graph import GraphBuilder, complete_graph, drop_edges, edge_features, radius_graph


def edge_set(edge_index):
    return set(map(tuple, edge_index.t().tolist()))


def test_complete_graph_matches_brute_force():
    batch = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    expected = set()
    for b in range(3):
        nodes = (batch == b).nonzero().flatten().tolist()
        expected |= {(j, i) for j, i in itertools.permutations(nodes, 2)}
    edges = complete_graph(batch)
    assert edges.shape[1] == len(expected) == 3 * 2 + 2 + 4 * 3
    assert edge_set(edges) == expected


def brute_force_radius(pos, r, batch):
    d = torch.cdist(pos, pos)
    same = batch[:, None] == batch[None, :]
    mask = (d < r) & same & ~torch.eye(len(pos), dtype=torch.bool)
    return {(j, i) for i, j in mask.nonzero().tolist()}


def test_radius_graph_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    pos = torch.rand(200, 3, generator=g)
    batch = torch.repeat_interleave(torch.arange(2), 100)
    edges = radius_graph(pos, 0.3, batch, max_num_neighbors=200)
    assert edge_set(edges) == brute_force_radius(pos, 0.3, batch)
    # flow j -> i: row 1 (target) gets its neighbours in row 0
    assert edges.shape[0] == 2


def test_neighbour_cap_warns_once_and_caps(monkeypatch):
    monkeypatch.setattr(graph_module, "_warned_truncation", False)
    pos = torch.rand(60, 3, generator=torch.Generator().manual_seed(1))
    batch = torch.zeros(60, dtype=torch.long)
    with pytest.warns(UserWarning, match="neighbourhoods are truncated"):
        edges = radius_graph(pos, 10.0, batch, max_num_neighbors=8)
    assert int(torch.bincount(edges[1]).max()) == 8
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        radius_graph(pos, 10.0, batch, max_num_neighbors=8)  # only once per process


def test_no_warning_when_nothing_is_truncated(monkeypatch):
    monkeypatch.setattr(graph_module, "_warned_truncation", False)
    pos = torch.rand(30, 3, generator=torch.Generator().manual_seed(2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        edges = radius_graph(pos, 10.0, torch.zeros(30, dtype=torch.long), max_num_neighbors=29)
    assert edges.shape[1] == 30 * 29


def test_edge_features_are_charge_products_and_input_distances():
    pos = torch.tensor([[0.0, 0, 0], [3.0, 4, 0]])
    q = torch.tensor([[1.0], [-1.0]])
    edges = torch.tensor([[0], [1]])
    torch.testing.assert_close(edge_features(pos, q, edges), torch.tensor([[-1.0, 25.0]]))


def test_builder_validates():
    with pytest.raises(ValueError, match="radius > 0"):
        GraphBuilder(kind="radius")


def brute_force_shortest(edge_index, pos, batch, p):
    """Per graph, sort its edges by length (ties: input order) and keep the first floor((1-p) E_b)."""
    kept = []
    for b in batch.unique().tolist():
        ids = [k for k in range(edge_index.shape[1]) if batch[edge_index[1, k]] == b]
        ids.sort(key=lambda k: float((pos[edge_index[1, k]] - pos[edge_index[0, k]]).pow(2).sum()))
        kept += ids[: int(len(ids) * (1 - p) + 1e-9)]
    return {tuple(edge_index[:, k].tolist()) for k in kept}


def ragged_points(seed=3):
    g = torch.Generator().manual_seed(seed)
    sizes = [7, 12, 4, 9]
    pos = torch.rand(sum(sizes), 3, generator=g)
    batch = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    return pos, batch


@pytest.mark.parametrize("kind", ["complete", "radius"])
@pytest.mark.parametrize("p", [0.0, 0.3, 0.5, 0.75, 1.0])
def test_shortest_edge_drop_matches_brute_force(kind, p):
    pos, batch = ragged_points()
    full = complete_graph(batch) if kind == "complete" else radius_graph(pos, 0.6, batch, max_num_neighbors=64)
    dropped = drop_edges(full, pos, batch, p, "shortest")
    assert edge_set(dropped) == brute_force_shortest(full, pos, batch, p)
    if p == 1.0:
        assert dropped.shape == (2, 0)


@pytest.mark.parametrize("kind", ["complete", "radius"])
def test_builder_drops_edges_per_graph(kind):
    pos, batch = ragged_points()
    data = Batch(pos=pos, batch=batch, node_attr=torch.ones(len(pos), 1), ptr=None)
    full = GraphBuilder(kind=kind, radius=0.6)(data.clone())
    half = GraphBuilder(kind=kind, radius=0.6, edge_drop=0.5)(data.clone())
    per_full = torch.bincount(batch[full.edge_index[1]], minlength=4)
    per_half = torch.bincount(batch[half.edge_index[1]], minlength=4)
    assert torch.equal(per_half, per_full // 2)
    assert edge_set(half.edge_index) <= edge_set(full.edge_index)
    assert half.edge_attr.shape == (half.edge_index.shape[1], 2)
    none = GraphBuilder(kind=kind, radius=0.6, edge_drop=1.0)(data.clone())
    assert none.edge_index.shape == (2, 0) and none.edge_attr.shape == (0, 2)


def test_random_edge_drop_keeps_the_same_counts_and_is_seeded():
    pos, batch = ragged_points()
    full = complete_graph(batch)
    a = drop_edges(full, pos, batch, 0.75, "random", torch.Generator().manual_seed(1))
    b = drop_edges(full, pos, batch, 0.75, "random", torch.Generator().manual_seed(1))
    c = drop_edges(full, pos, batch, 0.75, "random", torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    counts = torch.bincount(batch[full[1]])
    expected = (counts.double() * 0.25 + 1e-9).floor().long()
    assert torch.equal(torch.bincount(batch[a[1]], minlength=4), expected)
    assert edge_set(a) <= edge_set(full)
    assert edge_set(a) != brute_force_shortest(full, pos, batch, 0.75)  # not the shortest ones
    assert drop_edges(full, pos, batch, 1.0, "random").shape == (2, 0)


def test_random_mode_redraws_in_training_and_repeats_in_evaluation():
    pos, batch = ragged_points()
    data = Batch(pos=pos, batch=batch, node_attr=torch.ones(len(pos), 1), ptr=None)
    builder = GraphBuilder(kind="complete", edge_drop=0.5, edge_drop_mode="random")
    torch.manual_seed(0)
    train = [builder(data.clone()).edge_index for _ in range(2)]
    assert not torch.equal(train[0], train[1])
    evals = [builder(data.clone(), training=False).edge_index for _ in range(2)]
    assert torch.equal(evals[0], evals[1])


def test_edge_drop_validates():
    with pytest.raises(ValueError, match=r"edge_drop must be in \[0, 1\]"):
        GraphBuilder(edge_drop=1.5)
    with pytest.raises(ValueError, match="edge_drop_mode"):
        GraphBuilder(edge_drop_mode="longest")
