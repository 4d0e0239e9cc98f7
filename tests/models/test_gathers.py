"""No model's forward gathers with advanced indexing (``x[index]``): its backward on CUDA sorts the
indices and accumulates duplicates serially, the worst case when every node of a graph reads its
graph's row (it was 90 % of FastEGNN's training step on a GPU)."""

import pytest
import torch

from scaleq.graph.builder import GraphBuilder
from scaleq.models import EGHN, EGNN, DuSEGO, FastEGNN
from tests.support.autograd_graph import backward_node_names, index_gathers
from tests.support.stores import random_batch

NODES = (6, 9, 4)
COMMON = {"in_node_features": 2, "in_edge_features": 2, "hidden": 8}
MODELS = {
    "egnn": lambda **o: EGNN(**COMMON, layers=2, **o),
    "fastegnn": lambda **o: FastEGNN(**COMMON, layers=2, virtual_nodes=3, **o),
    "eghn": lambda **o: EGHN(**COMMON, clusters=2, interaction_layers=1, pooling_layers=2, decoder_layers=1, **o),
    "dusego": lambda **o: DuSEGO(**COMMON, layers=2, **o),
}


def make_batch():
    builder = GraphBuilder(kind="radius", radius=1.5, local="knn", local_k=3)
    return builder(random_batch(num_graphs=len(NODES), nodes=NODES))


def loss_of(out):
    return sum(v.float().pow(2).sum() for v in out.values() if v.is_floating_point())


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("options", [{}, {"edge_chunk": 5}], ids=["plain", "chunked"])
def test_no_advanced_index_gathers_in_the_autograd_graph(name, options):
    torch.manual_seed(0)
    batch = make_batch()
    batch.pos.requires_grad_()
    loss = loss_of(MODELS[name](**options)(batch))
    assert sum(backward_node_names(loss).values()) > 50  # the walk sees the whole model
    assert index_gathers(loss) == []


def test_the_check_sees_a_gather_by_advanced_indexing():
    z = torch.randn(3, 2, 4, requires_grad=True)
    batch = torch.tensor([0, 0, 1, 2, 2, 2])
    assert index_gathers(z[batch].sum()) == [((3, 2, 4), 6)]
    assert index_gathers(z.index_select(0, batch).sum()) == []
