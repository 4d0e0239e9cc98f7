import itertools
import warnings

import pytest
import torch

import scaleq.data.graph as graph_module
from scaleq.data.graph import GraphBuilder, complete_graph, edge_features, radius_graph


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
