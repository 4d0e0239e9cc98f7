import math

import pytest
import torch
from torch_geometric.data import Batch

from scaleq.config import LossConfig
from scaleq.losses import connectivity_loss, position_mse, training_loss


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
