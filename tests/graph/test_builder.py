import itertools
import warnings

import pytest
import torch
from torch_geometric.data import Batch

from scaleq.graph.builder import GraphBuilder, complete_graph, drop_edges, edge_features, radius_graph

BACKENDS = ["torch_cluster", "cell_list"]


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


@pytest.mark.parametrize("backend", BACKENDS)
def test_radius_graph_matches_brute_force(backend):
    g = torch.Generator().manual_seed(0)
    pos = torch.rand(200, 3, generator=g)
    batch = torch.repeat_interleave(torch.arange(2), 100)
    edges = radius_graph(pos, 0.3, batch, max_num_neighbors=200, backend=backend)
    assert edge_set(edges.edge_index) == brute_force_radius(pos, 0.3, batch)
    assert edges.edge_shift is None and edges.num_capped == 0
    assert bool((edges.edge_index[1].diff() >= 0).all())  # sorted by target: the block builds its CSR layout cheaply


def brute_force_nearest(pos, r, batch, k):
    """Each target's k nearest sources within r (ties: source position lexicographically)."""
    kept = set()
    for j, i in brute_force_radius(pos, r, batch):
        kept.add((j, i))
    by_target = {}
    for j, i in kept:
        by_target.setdefault(i, []).append(j)
    out = set()
    for i, sources in by_target.items():
        sources.sort(key=lambda j: (float((pos[i] - pos[j]).pow(2).sum()), *pos[j].tolist()))
        out |= {(j, i) for j in sources[:k]}
    return out


@pytest.mark.parametrize("backend", BACKENDS)
def test_truncation_keeps_the_nearest_and_ignores_node_order(backend):
    g = torch.Generator().manual_seed(1)
    sizes = torch.tensor([70, 50])
    pos = torch.rand(int(sizes.sum()), 3, generator=g)
    batch = torch.repeat_interleave(torch.arange(2), sizes)
    edges = radius_graph(pos, 0.6, batch, max_num_neighbors=8, backend=backend)
    assert edge_set(edges.edge_index) == brute_force_nearest(pos, 0.6, batch, 8)
    assert edges.num_capped > 0
    assert int(torch.bincount(edges.edge_index[1]).max()) == 8
    # relabel the nodes within each graph (batch stays sorted): the same graph, relabelled
    perm = torch.cat([torch.randperm(70, generator=g), 70 + torch.randperm(50, generator=g)])
    relabelled = radius_graph(pos[perm], 0.6, batch, max_num_neighbors=8, backend=backend).edge_index
    assert edge_set(perm[relabelled]) == edge_set(edges.edge_index)


def test_truncation_ties_are_broken_by_position_not_by_index():
    # a target with four sources at the same distance; the cap keeps the two lexicographically smallest
    pos = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    batch = torch.zeros(5, dtype=torch.long)
    for backend in BACKENDS:
        for perm in (torch.arange(5), torch.tensor([0, 4, 3, 2, 1])):
            edges = radius_graph(pos[perm], 1.5, batch, max_num_neighbors=2, backend=backend).edge_index
            into_centre = {tuple(pos[perm][j].tolist()) for j, i in edges.t().tolist() if int(perm[i]) == 0}
            assert into_centre == {(-1.0, 0.0), (0.0, -1.0)}, backend


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_builder_warns_once_for_each_of_its_graphs(backend):
    pos = torch.rand(60, 3, generator=torch.Generator().manual_seed(1))
    data = Batch(pos=pos, batch=torch.zeros(60, dtype=torch.long), node_attr=torch.ones(60, 1), ptr=None)
    builder = GraphBuilder(kind="radius", radius=10.0, max_num_neighbors=8, backend=backend, local="radius", local_radius=10.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = builder(data.clone())
        builder(data.clone())  # the same builder: no second warning
    messages = [str(w.message) for w in caught if "truncated" in str(w.message)]
    assert len(messages) == 2 and messages[0].startswith("radius graph") and messages[1].startswith("local radius graph")
    assert int(torch.bincount(out.edge_index[1]).max()) == 8
    with pytest.warns(UserWarning, match="neighbourhoods are truncated"):
        GraphBuilder(kind="radius", radius=10.0, max_num_neighbors=8, backend=backend)(data.clone())  # a new builder warns


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_warning_when_nothing_is_truncated(backend):
    pos = torch.rand(30, 3, generator=torch.Generator().manual_seed(2))
    data = Batch(pos=pos, batch=torch.zeros(30, dtype=torch.long), node_attr=torch.ones(30, 1), ptr=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = GraphBuilder(kind="radius", radius=10.0, max_num_neighbors=29, backend=backend)(data)
    assert out.edge_index.shape[1] == 30 * 29


def test_edge_features_are_charge_products_and_input_distances():
    pos = torch.tensor([[0.0, 0, 0], [3.0, 4, 0]])
    q = torch.tensor([[1.0], [-1.0]])
    edges = torch.tensor([[0], [1]])
    torch.testing.assert_close(edge_features(pos, q, edges), torch.tensor([[-1.0, 25.0]]))


def test_builder_validates():
    with pytest.raises(ValueError, match="radius > 0"):
        GraphBuilder(kind="radius")
    with pytest.raises(ValueError, match="backend"):
        GraphBuilder(kind="radius", radius=1.0, backend="kdtree")
    with pytest.raises(ValueError, match="torch-cluster has none"):
        GraphBuilder(kind="radius", radius=1.0, periodic=True, backend="torch_cluster")
    with pytest.raises(ValueError, match="edge shifts"):
        GraphBuilder(kind="radius", radius=1.0, periodic=True, local="radius", local_radius=0.5)


def test_periodic_builder_needs_a_box_and_adds_shifts():
    pos = torch.tensor([[0.05, 0.5], [0.95, 0.5], [0.5, 0.5]])
    data = Batch(pos=pos, batch=torch.zeros(3, dtype=torch.long), node_attr=torch.ones(3, 1), ptr=None)
    builder = GraphBuilder(kind="radius", radius=0.2, periodic=True)
    with pytest.raises(ValueError, match="no 'box'"):
        builder(data.clone())
    data.box = torch.tensor([[[0.0, 1.0], [0.0, 1.0]]])
    out = builder(data)
    assert edge_set(out.edge_index) == {(0, 1), (1, 0)}  # across the boundary only
    diff = out.pos[out.edge_index[1]] - out.pos[out.edge_index[0]] + out.edge_shift
    torch.testing.assert_close(diff.abs(), torch.tensor([[0.1, 0.0], [0.1, 0.0]]))
    torch.testing.assert_close(out.edge_attr[:, -1], torch.tensor([0.01, 0.01]))


def brute_force_shortest(edge_index, pos, batch, p):
    """Per graph, undirected pairs by (length, end positions lexicographically); keep pairs while
    the kept edges stay within floor((1-p) E_b)."""
    kept = set()
    edges = [tuple(e) for e in edge_index.t().tolist()]
    for b in batch.unique().tolist():
        mine = [e for e in edges if batch[e[1]] == b]
        budget = int(len(mine) * (1 - p) + 1e-9)
        pairs = {}
        for j, i in mine:
            pairs.setdefault((min(i, j), max(i, j)), []).append((j, i))

        def rank(key):
            ends = sorted([pos[key[0]].tolist(), pos[key[1]].tolist()])
            return (float((pos[key[0]] - pos[key[1]]).pow(2).sum()), *ends[0], *ends[1])

        used = 0
        for key in sorted(pairs, key=rank):
            used += len(pairs[key])
            if used > budget:
                break
            kept |= set(pairs[key])
    return kept


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
    full = complete_graph(batch) if kind == "complete" else radius_graph(pos, 0.6, batch, max_num_neighbors=64).edge_index
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
    # whole pairs: at most half, and at most one edge fewer (no exact ties in random points)
    assert bool(((per_half <= per_full // 2) & (per_half >= per_full // 2 - 1)).all())
    assert bool((per_half % 2 == 0).all())  # both directions of every kept pair
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


@pytest.mark.parametrize("kind", ["complete", "radius"])
def test_shortest_edge_drop_does_not_depend_on_node_labels(kind):
    # a 2-D lattice: many pairs of exactly equal length, and an odd budget
    side = torch.arange(4, dtype=torch.float32)
    pos = torch.cartesian_prod(side, side)
    batch = torch.zeros(len(pos), dtype=torch.long)
    g = torch.Generator().manual_seed(5)
    for p in (0.3, 0.5, 0.75):
        full = complete_graph(batch) if kind == "complete" else radius_graph(pos, 2.5, batch, 64).edge_index
        kept = edge_set(drop_edges(full, pos, batch, p))
        assert kept == brute_force_shortest(full, pos, batch, p)  # ties: end positions lexicographically
        perm = torch.randperm(len(pos), generator=g)
        full_p = complete_graph(batch) if kind == "complete" else radius_graph(pos[perm], 2.5, batch, 64).edge_index
        kept_p = drop_edges(full_p, pos[perm], batch, p)
        assert edge_set(perm[kept_p]) == kept
        assert all((i, j) in kept for j, i in kept)  # undirected
        assert int(full.shape[1] * (1 - p)) - 1 <= len(kept) <= int(full.shape[1] * (1 - p))


@pytest.mark.parametrize("backend", BACKENDS)
def test_model_output_does_not_depend_on_node_order_through_the_builder(backend):
    """Lattices: many neighbours at equal distances, cut by the cap and by 'shortest' dropping."""
    from scaleq.models import EGNN

    torch.set_default_dtype(torch.float64)
    side = torch.arange(3, dtype=torch.float64)
    lattice = torch.cartesian_prod(side, side, side)  # 27 points
    pos = torch.cat([lattice, 0.9 * lattice + 0.05])
    g = torch.Generator().manual_seed(8)
    n = len(pos)
    batch = torch.repeat_interleave(torch.arange(2), 27)
    vel = torch.randn(n, 3, generator=g)
    node_attr = torch.randint(0, 3, (n, 1), generator=g).double()
    h = torch.cat([vel.norm(dim=-1, keepdim=True), node_attr], -1)
    builder = GraphBuilder(kind="radius", radius=1.5, max_num_neighbors=5, backend=backend, edge_drop=0.3)
    model = EGNN(in_node_features=2, in_edge_features=2, hidden=8, layers=2)

    def run(order):
        data = Batch(pos=pos[order], vel=vel[order], h=h[order], node_attr=node_attr[order], batch=batch, ptr=None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the cap cuts on purpose
            built = builder(data)
        return model(built)["pos"], built.edge_index.shape[1]

    perm = torch.cat([torch.randperm(27, generator=g), 27 + torch.randperm(27, generator=g)])
    (out, edges), (out_perm, edges_perm) = run(torch.arange(n)), run(perm)
    assert edges == edges_perm > 0
    torch.testing.assert_close(out_perm, out[perm], rtol=1e-12, atol=1e-12)


def test_periodic_graphs_from_a_store_use_its_bounds(tmp_path):
    """Dataset -> batch.box (the store's bounds) -> periodic builder: brute-force minimum image."""
    from scaleq.data.dataset import SampleSpec, TrajectoryDataset
    from scaleq.store.reader import open_store
    from tests.support.stores import tiny_store

    tiny_store(tmp_path / "s.zarr", num_nodes=[30, 25, 40])
    store = open_store(tmp_path / "s.zarr")
    bounds = torch.tensor(store.attrs.bounds)  # filled from the positions' range when not given
    dataset = TrajectoryDataset(store, SampleSpec(delta=2, input_frame=3))
    batch = Batch.from_data_list([dataset[i] for i in range(len(dataset))])
    assert batch.box.shape == (3, 3, 2) and torch.equal(batch.box[1], bounds)
    radius = 0.3 * float((bounds[:, 1] - bounds[:, 0]).min())
    out = GraphBuilder(kind="radius", radius=radius, periodic=True, max_num_neighbors=100)(batch)
    length = bounds[:, 1] - bounds[:, 0]
    expected = set()
    for b in range(3):
        nodes = (batch.batch == b).nonzero().flatten().tolist()
        for i, j in itertools.permutations(nodes, 2):
            diff = batch.pos[i] - batch.pos[j]
            diff = diff - length * torch.round(diff / length)
            if float(diff.pow(2).sum()) < radius**2:
                expected.add((j, i))
    assert edge_set(out.edge_index) == expected and len(expected) > 0
    diff = out.pos[out.edge_index[1]] - out.pos[out.edge_index[0]] + out.edge_shift
    assert bool((diff.norm(dim=-1) < radius).all())


def test_graph_config_passes_backend_and_periodic():
    from scaleq.config import ConfigError, GraphConfig

    builder = GraphBuilder.from_config(GraphConfig(kind="radius", radius=0.5, backend="cell_list", periodic=True))
    assert (builder.backend, builder.periodic) == ("cell_list", True)
    with pytest.raises(ConfigError, match="graph: periodic boxes need graph.backend"):
        GraphConfig(kind="radius", radius=0.5, backend="torch_cluster", periodic=True)
