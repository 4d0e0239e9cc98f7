import torch

from scaleq.bench.reference_egnn import ReferenceEGNN
from scaleq.graph.builder import GraphBuilder
from scaleq.models import EGNN
from tests.support.stores import random_batch


def test_reference_egnn_in_the_published_style_is_the_same_function_as_egnn():
    """With scaleq's EGNN weights copied over, the benchmarks' plain reference computes the same thing."""
    torch.manual_seed(0)
    model = EGNN(in_node_features=2, in_edge_features=2, hidden=16, layers=3).double()
    for layer in model.layers:  # a coordinate head far from its near-zero start, so it matters
        torch.nn.init.normal_(layer.phi_x[-1].weight, std=0.3)
    reference = ReferenceEGNN(in_node_features=2, in_edge_features=2, hidden=16, layers=3).double()
    reference.load_egnn_state(model.state_dict())
    batch = GraphBuilder(kind="radius", radius=2.0)(random_batch(num_graphs=3, nodes=(6, 9, 4)))
    batch = batch.apply(lambda x: x.double() if x.is_floating_point() else x)
    with torch.no_grad():
        torch.testing.assert_close(reference(batch)["pos"], model(batch)["pos"], rtol=1e-12, atol=1e-12)
