import math

import pytest
import torch

from scaleq.experiments.diagnostics import dirichlet_energies, dirichlet_energy, gradient_norms, layer_states
from scaleq.graph.builder import GraphBuilder
from scaleq.models import EGNN, DuSEGO
from scaleq.testing.equivariance import random_orthogonal
from tests.support.stores import random_batch


def make_batch():
    return GraphBuilder(kind="complete")(random_batch())


def models(layers=5):
    torch.manual_seed(0)
    return [EGNN(in_node_features=2, in_edge_features=2, hidden=8, layers=layers),
            DuSEGO(in_node_features=2, in_edge_features=2, hidden=8, layers=layers)]


def test_dirichlet_energy_by_hand_and_its_invariances():
    edge_index = torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]])  # a path 0 - 1 - 2, both directions
    values = torch.tensor([[0.0], [1.0], [3.0]])
    assert float(dirichlet_energy(values, edge_index, 3)) == pytest.approx((1 + 1 + 4 + 4) / 3)
    assert float(dirichlet_energy(torch.ones(3, 4), edge_index, 3)) == 0.0
    batch = make_batch()
    q = random_orthogonal(3, torch.Generator().manual_seed(0), torch.float32, reflect=True)
    moved = batch.pos @ q.T + torch.tensor([1.0, -2.0, 3.0])
    torch.testing.assert_close(dirichlet_energy(moved, batch.edge_index, batch.num_nodes),
                               dirichlet_energy(batch.pos, batch.edge_index, batch.num_nodes))


@pytest.mark.parametrize("index", [0, 1])
def test_layer_states_end_at_the_models_output(index):
    batch = make_batch()
    model = models()[index]
    states, output = layer_states(model, batch)
    assert len(states) == 6
    torch.testing.assert_close(states[0][0], batch.pos)
    torch.testing.assert_close(states[-1][0], model(batch)["pos"])
    torch.testing.assert_close(output["pos"], model(batch)["pos"])
    rows = dirichlet_energies(model, batch)
    assert [r["layer"] for r in rows] == list(range(6))
    assert rows[0]["energy_x"] == pytest.approx(float(dirichlet_energy(batch.pos, batch.edge_index, batch.num_nodes)))


def test_gradient_norms_per_layer():
    batch = make_batch()
    egnn, dusego = models()
    for model in (egnn, dusego):
        rows = gradient_norms(model, batch)
        assert len(rows) == 6 and math.isnan(rows[0]["grad_params"])
        assert all(r["grad_params"] > 0 for r in rows[1:])
        assert all(p.grad is None for p in model.parameters())  # left clean
    # EGNN returns coordinates only: its last features feed nothing
    assert gradient_norms(egnn, batch)[-1]["grad_h"] == 0.0
    assert gradient_norms(egnn, batch)[3]["grad_h"] > 0.0
    shared = DuSEGO(in_node_features=2, in_edge_features=2, hidden=8, layers=4, shared_weights=True)
    rows = gradient_norms(shared, batch)
    assert all(math.isnan(r["grad_params"]) for r in rows)  # one module for every step: no per-layer parameters
    # the features of every step but the last feed later coordinates; the last feed nothing
    assert all(r["grad_h"] > 0 for r in rows[:-1]) and rows[-1]["grad_h"] == 0.0
