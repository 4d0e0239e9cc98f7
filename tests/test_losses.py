import math

import pytest
import torch
from torch_geometric.data import Batch

from scaleq.config import LossConfig
from scaleq.losses import (
    LOSS_PARTS,
    connectivity_loss,
    explain_total,
    mmd_virtual,
    position_mse,
    sample_per_graph,
    term_weights,
    training_loss,
)
from tests.support.stores import random_batch

SIZES = (4, 11, 7, 25)  # mixed sizes: the first graph has fewer nodes than 3 * C
C = 3


def setup(seed=0):
    g = torch.Generator().manual_seed(seed)
    batch = torch.repeat_interleave(torch.arange(len(SIZES)), torch.tensor(SIZES))
    pos = torch.randn(len(batch), 3, generator=g, dtype=torch.float64)
    virtual = torch.randn(len(SIZES) * C, 3, generator=g, dtype=torch.float64)
    return pos, virtual, batch


def reference_mmd(pos, virtual, batch, chosen, sigma, kind):
    """The published per-graph loop, one graph at a time."""
    values = []
    for b in range(len(SIZES)):
        z = virtual[b * C : (b + 1) * C]
        x = pos[chosen & (batch == b)]
        d_vv, d_rv = torch.cdist(z, z), torch.cdist(x, z)
        if kind == "squared":
            d_vv, d_rv = d_vv**2, d_rv**2
        k_vv = torch.exp(-d_vv / (2 * sigma**2)).mean()
        k_rv = torch.exp(-d_rv / (2 * sigma**2)).mean()
        values.append(k_vv - 2 * k_rv)
    return torch.stack(values).mean()


def test_sample_takes_min_of_count_and_graph_size_per_graph():
    _, _, batch = setup()
    mask = sample_per_graph(batch, len(SIZES), 3 * C, torch.Generator().manual_seed(1))
    assert torch.bincount(batch[mask]).tolist() == [min(9, n) for n in SIZES]
    other = sample_per_graph(batch, len(SIZES), 3 * C, torch.Generator().manual_seed(2))
    assert not torch.equal(mask, other)


@pytest.mark.parametrize("kind", ["plain", "squared"])
@pytest.mark.parametrize("sigma", [1.0, 1.5])
def test_mmd_matches_a_per_graph_reference(kind, sigma):
    pos, virtual, batch = setup()
    chosen = sample_per_graph(batch, len(SIZES), 3 * C, torch.Generator().manual_seed(5))
    value = mmd_virtual(pos, virtual, batch, len(SIZES), sigma=sigma, kind=kind, generator=torch.Generator().manual_seed(5))
    expected = reference_mmd(pos, virtual, batch, chosen, sigma, kind)
    torch.testing.assert_close(value, expected)  # fp64 inputs stay fp64 (fp32 at least)
    low = mmd_virtual(pos.bfloat16(), virtual.bfloat16(), batch, len(SIZES), sigma=sigma, kind=kind)
    assert low.dtype == torch.float32


def test_mmd_does_not_need_nodes_sorted_by_graph():
    pos, virtual, batch = setup()
    perm = torch.randperm(len(batch), generator=torch.Generator().manual_seed(0))
    everyone = 100  # every node sampled, so the value does not depend on the draw
    a = mmd_virtual(pos, virtual, batch, len(SIZES), sigma=1.0, samples_per_virtual=everyone)
    b = mmd_virtual(pos[perm], virtual, batch[perm], len(SIZES), sigma=1.0, samples_per_virtual=everyone)
    torch.testing.assert_close(a, b)


def test_mmd_gradient_is_finite_when_virtual_nodes_coincide():
    pos, virtual, batch = setup()
    virtual = virtual.view(len(SIZES), C, 3)[:, :1].expand(-1, C, -1).reshape(-1, 3).clone().requires_grad_(True)
    mmd_virtual(pos, virtual, batch, len(SIZES), sigma=1.0).backward()
    assert torch.isfinite(virtual.grad).all()


def test_training_loss_adds_weighted_mmd_and_reports_the_plain_mse():
    data = random_batch(num_graphs=3, nodes=(5, 12, 8))
    pred = data.target + 0.1
    virtual = torch.randn(3 * C, 3)
    out = {"pos": pred, "virtual_pos": virtual}
    loss, parts = training_loss(out, data, LossConfig())
    torch.testing.assert_close(loss, position_mse(pred, data.target))
    assert set(parts) == {"mse"}
    torch.manual_seed(0)
    loss, parts = training_loss(out, data, LossConfig(mmd_weight=0.5, mmd_sigma=1.5))
    torch.testing.assert_close(parts["mse"], position_mse(pred, data.target))
    torch.testing.assert_close(loss, parts["mse"] + 0.5 * parts["mmd"])
    with pytest.raises(ValueError, match="needs a model with virtual nodes"):
        training_loss({"pos": pred}, data, LossConfig(mmd_weight=0.5))


def dense_connectivity(assignments, edge_index, batch):
    """Per graph: dense A, S^T A S, rows scaled to unit length, Frobenius distance to I; mean."""
    values = []
    for b in range(int(batch.max()) + 1):
        nodes = (batch == b).nonzero().flatten()
        local = {int(v): i for i, v in enumerate(nodes)}
        adjacency = torch.zeros(len(nodes), len(nodes), dtype=assignments.dtype)
        for j, i in edge_index.t().tolist():
            if j in local:
                adjacency[local[i], local[j]] += 1
        s = assignments[nodes]
        pooled = s.T @ adjacency @ s
        rows = pooled / pooled.norm(dim=1, keepdim=True).clamp_min(1e-12)
        values.append(torch.linalg.norm(rows - torch.eye(s.shape[1], dtype=s.dtype)))
    return torch.stack(values).mean()


def test_connectivity_loss_matches_a_dense_per_graph_reference():
    from tests.models.test_eghn import graphs, make_batch, make_model

    batch = make_batch(graphs())
    out = make_model()(batch)
    expected = dense_connectivity(out["assignments"].detach(), batch.local_index, batch.batch)
    torch.testing.assert_close(connectivity_loss(out["pooled_adjacency"]), expected)


def test_connectivity_loss_on_hand_made_assignments():
    # two graphs of 4 nodes, edges only inside {0,1} and {2,3}: a hard split into those two
    # clusters keeps every edge inside a cluster (loss 0); everything in cluster 0 leaves row 1 empty
    pooled_split = torch.tensor([[[2.0, 0.0], [0.0, 2.0]], [[2.0, 0.0], [0.0, 2.0]]])
    assert float(connectivity_loss(pooled_split)) == pytest.approx(0.0)
    pooled_one = torch.tensor([[[4.0, 0.0], [0.0, 0.0]]])
    assert float(connectivity_loss(pooled_one)) == pytest.approx(1.0)
    pooled_mixed = torch.tensor([[[1.0, 1.0], [1.0, 1.0]]])  # rows become (a, a), a = 1/sqrt 2
    a = 1 / math.sqrt(2)
    assert float(connectivity_loss(pooled_mixed)) == pytest.approx(math.sqrt(2 * (a - 1) ** 2 + 2 * a**2))


def test_training_loss_adds_the_weighted_connectivity_term():
    target = torch.zeros(3, 3)
    batch = Batch(target=target)
    output = {"pos": torch.ones(3, 3), "pooled_adjacency": torch.tensor([[[1.0, 1.0], [0.0, 1.0]]])}
    loss, parts = training_loss(output, batch, LossConfig(connectivity_weight=2.0))
    expected = position_mse(output["pos"], target) + 2.0 * connectivity_loss(output["pooled_adjacency"])
    torch.testing.assert_close(loss, expected)
    assert set(parts) == {"mse", "connectivity"}
    plain, parts = training_loss(output, batch, LossConfig())
    assert set(parts) == {"mse"} and float(plain) == pytest.approx(1.0)


def test_connectivity_weight_without_pooled_adjacency_is_a_clear_error():
    batch = Batch(target=torch.zeros(2, 3))
    with pytest.raises(ValueError, match="pooled_adjacency"):
        training_loss({"pos": torch.zeros(2, 3)}, batch, LossConfig(connectivity_weight=1.0))


def test_every_part_training_loss_returns_is_a_listed_term_and_the_total_is_their_weighted_sum():
    data = random_batch(num_graphs=2, nodes=(6, 9))
    out = {"pos": data.target + 0.1, "virtual_pos": torch.randn(2 * C, 3), "pooled_adjacency": torch.rand(2, 4, 4)}
    config = LossConfig(mmd_weight=0.5, connectivity_weight=2.0)
    loss, parts = training_loss(out, data, config)
    assert list(parts) == list(LOSS_PARTS)  # every term on: all of them, in the listed order
    weights = term_weights(config)
    torch.testing.assert_close(loss, sum(weights[k] * parts[k] for k in LOSS_PARTS))


def test_mmd_term_lies_in_minus_one_one_and_is_negative_when_virtual_nodes_sit_among_the_nodes():
    """The published term is the biased MMD^2 without its k(x, x) part: >= -mean k(x_s, x_s') >= -1."""
    data = random_batch(num_graphs=2, nodes=(30, 30))
    among = torch.cat([data.pos[data.batch == b][:C] for b in range(2)])  # virtual nodes on real ones
    far = among + 100.0
    values = [float(mmd_virtual(data.pos, z, data.batch, 2, sigma=1.0)) for z in (among, far)]
    assert -1.0 <= values[0] < 0 < values[1] <= 1.0


def test_a_total_is_explained_by_its_parts():
    config = LossConfig(mmd_weight=0.01)
    assert explain_total({"loss": -0.0022, "mse": 0.0036742, "mmd": -0.59066}, config) == "mse 0.0036742 + 0.01 x mmd -0.59066"
    assert explain_total({"mse": 0.5}, LossConfig()) == "mse 0.5"
