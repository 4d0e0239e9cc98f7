import pytest
import torch
from torch_geometric.data import Batch, Data

from scaleq.config import ConfigError, GraphConfig
from scaleq.graph.builder import GraphBuilder, knn_graph


def edge_set(edge_index):
    return set(map(tuple, edge_index.t().tolist()))


def brute_force_knn(pos, k, batch):
    d = torch.cdist(pos, pos)
    d[batch[:, None] != batch[None, :]] = float("inf")
    d.fill_diagonal_(float("inf"))
    edges = set()
    for i in range(len(pos)):
        count = min(k, int((batch == batch[i]).sum()) - 1)
        for j in torch.argsort(d[i])[:count].tolist():
            edges.add((j, i))
    return edges


def test_knn_graph_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    pos = torch.rand(60, 3, generator=g, dtype=torch.float64)
    batch = torch.repeat_interleave(torch.arange(3), torch.tensor([25, 30, 5]))
    edges = knn_graph(pos, 4, batch)
    assert edge_set(edges) == brute_force_knn(pos, 4, batch)


def batch_with_bonds():
    graphs = []
    for n in (4, 6):
        bonds = torch.stack([torch.arange(n - 1), torch.arange(1, n)])
        graphs.append(Data(pos=torch.randn(n, 3), node_attr=torch.ones(n, 1), bond_index=bonds, num_nodes=n))
    return Batch.from_data_list(graphs)


@pytest.mark.parametrize("local", ["bonds", "knn", "radius", "none"])
def test_builder_adds_the_configured_local_graph(local):
    batch = GraphBuilder(kind="complete", local=local, local_k=2, local_radius=1.5, max_num_neighbors=100)(batch_with_bonds())
    assert batch.edge_index.shape[1] == 4 * 3 + 6 * 5
    if local == "none":
        assert getattr(batch, "local_index", None) is None
        return
    edges = batch.local_index
    assert (batch.batch[edges[0]] == batch.batch[edges[1]]).all()
    if local == "bonds":
        assert torch.equal(edges, batch.bond_index)
        assert edges.max() == 9  # the second graph's bonds were offset by 4 when batching
    elif local == "knn":
        assert edges.shape[1] == 10 * 2
    else:
        lengths = (batch.pos[edges[0]] - batch.pos[edges[1]]).norm(dim=-1)
        assert (lengths < 1.5).all()


def test_bonds_without_bonds_is_a_clear_error():
    batch = Batch.from_data_list([Data(pos=torch.randn(3, 3), node_attr=torch.ones(3, 1), num_nodes=3)])
    with pytest.raises(ValueError, match="no bond_index"):
        GraphBuilder(local="bonds")(batch)


def test_config_checks_the_local_graph_options():
    assert GraphBuilder.from_config(GraphConfig(local="knn", local_k=3)).local_k == 3
    with pytest.raises(ConfigError, match="local_radius"):
        GraphConfig(local="radius")
    with pytest.raises(ConfigError, match="local_k"):
        GraphConfig(local="knn", local_k=0)
