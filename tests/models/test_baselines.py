import pytest
import torch
from torch_geometric.data import Batch

from scaleq.graph.builder import GraphBuilder
from scaleq.models import MODELS, ConstantVelocity, LinearDynamics
from scaleq.testing.equivariance import check_equivariance, check_periodic_equivariance, periodic_batch
from tests.support.stores import random_batch


def batch_with_horizon():
    batch = random_batch()
    batch.horizon = torch.tensor([1.0, 2.0, 0.5])  # one per graph
    return batch


def test_linear_is_the_papers_learned_baseline():
    """x + v * t with one learnable t starting at 0.7 (the published Linear_dynamics)."""
    batch = batch_with_horizon()
    model = MODELS["linear"]()
    assert [p.numel() for p in model.parameters()] == [1]
    assert model.time.item() == pytest.approx(0.7)
    step = batch.vel * batch.horizon[batch.batch].unsqueeze(-1)
    torch.testing.assert_close(model(batch)["pos"], batch.pos + 0.7 * step)
    loss = (model(batch)["pos"] - batch.target).pow(2).mean()
    loss.backward()
    assert model.time.grad is not None and float(model.time.grad.abs()) > 0
    check_equivariance(model, batch, {"pos": "node_position"})


def test_constant_velocity_is_the_fixed_extrapolation():
    batch = batch_with_horizon()
    model = MODELS["constant_velocity"]()
    assert list(model.parameters()) == []
    torch.testing.assert_close(model(batch)["pos"], batch.pos + batch.vel * batch.horizon[batch.batch].unsqueeze(-1))
    check_equivariance(ConstantVelocity(), batch, {"pos": "node_position"})


def test_closed_form_time_is_the_least_squares_fit():
    batch = batch_with_horizon()
    step = batch.vel * batch.horizon[batch.batch].unsqueeze(-1)
    batch.target = batch.pos + 0.84 * step + 0.1 * torch.randn(step.shape, generator=torch.Generator().manual_seed(0))
    # least squares over every node and axis, independently: min_t |u t - (y - x)|^2
    u, r = step.double().reshape(-1, 1), (batch.target - batch.pos).double().reshape(-1, 1)
    expected = float(torch.linalg.lstsq(u, r).solution)
    halves = [Batch.from_data_list(batch.index_select(graphs)) for graphs in ([0], [1, 2])]
    sums = sum(LinearDynamics.normal_equation(part) for part in halves)  # sums add over batches (and ranks)
    model = LinearDynamics.from_normal_equation(sums)
    assert model.time.item() == pytest.approx(expected, rel=1e-6)
    fitted = (model(batch)["pos"] - batch.target).pow(2).mean()
    for t in (expected - 0.05, expected + 0.05):
        assert fitted < (LinearDynamics(time=t)(batch)["pos"] - batch.target).pow(2).mean()


def test_a_split_without_motion_cannot_be_fitted():
    batch = batch_with_horizon()
    batch.vel = torch.zeros_like(batch.vel)
    with pytest.raises(ValueError, match="every velocity in the split is zero"):
        LinearDynamics.from_normal_equation(LinearDynamics.normal_equation(batch))


@pytest.mark.parametrize("name", ["linear", "constant_velocity"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_baselines_honour_a_periodic_box(name, dtype):
    """x + v t: every periodic symmetry holds; so does a generic rotation (they read no graph), so
    the control is off here."""
    graph = GraphBuilder(kind="radius", radius=1.5, periodic=True)
    report = check_periodic_equivariance(MODELS[name](), periodic_batch(), {"pos": "node_position"}, graph=graph,
                                         dtype=dtype, control_min=0.0)
    assert report.control < 1e-5
