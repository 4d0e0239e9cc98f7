"""Edge attributes: EGNN's [q_i q_j, |x_i - x_j|^2] or FastEGNN's plain distance."""

import pytest
import torch

from scaleq.graph.builder import GraphBuilder, edge_features
from tests.support.stores import random_batch


def test_distance_edge_attributes_on_global_and_local_edges():
    batch = GraphBuilder(kind="complete", local="knn", local_k=2, edge_attr="distance")(random_batch())
    for index, attr in ((batch.edge_index, batch.edge_attr), (batch.local_index, batch.local_attr)):
        source, target = index
        expected = torch.linalg.vector_norm(batch.pos[target] - batch.pos[source], dim=-1, keepdim=True)
        torch.testing.assert_close(attr, expected)
    assert GraphBuilder(edge_attr="distance").num_edge_features(3) == 1


def test_egnn_edge_attributes_stay_the_default():
    pos = torch.tensor([[0.0, 0.0, 0.0], [3.0, 4.0, 0.0]])
    q = torch.tensor([[2.0], [-1.0]])
    edges = torch.tensor([[0], [1]])
    torch.testing.assert_close(edge_features(pos, q, edges), torch.tensor([[-2.0, 25.0]]))
    torch.testing.assert_close(edge_features(pos, q, edges, kind="distance"), torch.tensor([[5.0]]))
    assert GraphBuilder().num_edge_features(3) == 4
    with pytest.raises(ValueError, match="edge_attr must be 'egnn' or 'distance'"):
        GraphBuilder(edge_attr="cosine")
