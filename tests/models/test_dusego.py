import math
from pathlib import Path

import pytest
import torch
from torch_geometric.data import Batch

from scaleq.config import config_from_dict, load_config
from scaleq.data.dataset import SampleSpec, TrajectoryDataset
from scaleq.graph.builder import GraphBuilder
from scaleq.models import EGNN, MODELS, DuSEGO
from scaleq.models.build import instantiate
from scaleq.models.dusego import GraphInputs, vector_activation
from scaleq.nn.scatter import scatter_mean
from scaleq.sources.nbody import NBodyParams
from scaleq.testing.equivariance import (
    check_equivariance,
    check_periodic_equivariance,
    periodic_batch,
    random_orthogonal,
)
from tests.support.block_paths import PATHS, assert_paths_agree, path_available
from tests.support.stores import random_batch, tiny_nbody_dataset

OUTPUTS = {"pos": "node_position", "h": "node_invariant", "vel": "node_vector"}


def make_batch(dtype=torch.float32):
    batch = GraphBuilder(kind="complete")(random_batch())
    for key in ("pos", "vel", "h", "edge_attr", "horizon", "target"):
        batch[key] = batch[key].to(dtype)
    return batch


def make_model(dtype=torch.float32, **kwargs):
    torch.manual_seed(0)
    options = {"hidden": 16, "layers": 4, **kwargs}
    model = DuSEGO(in_node_features=2, in_edge_features=2, **options).to(dtype)
    # EGNN's coordinate head starts at gain 0.001; scale it up so the checks see real coordinate updates
    for coupling in model.layers:
        torch.nn.init.normal_(coupling.layer.phi_x[-1].weight, std=0.3)
    return model


def grads(model):
    return torch.cat([torch.zeros(p.numel(), dtype=p.dtype) if p.grad is None else p.grad.flatten() for p in model.parameters()])


def loss_and_grads(model, batch):
    model.zero_grad()
    out = model(batch)
    loss = (out["pos"] - batch.target).pow(2).mean() + out["h"].pow(2).mean()
    loss.backward()
    return out, grads(model)


# -- equivariance ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("steps", [4, 16, 64])
def test_dusego_is_equivariant(dtype, steps):
    model = make_model(layers=steps, dt=0.25, alpha=0.5)
    report = check_equivariance(model, make_batch(), OUTPUTS, dtype=dtype)
    assert report.worst()[1] < (1e-9 if dtype == torch.float64 else 1e-4)


@pytest.mark.parametrize("options", [
    {"sigma_pos": "tanh", "sigma": "silu", "gamma1": 0.5, "gamma2": 2.0},
    {"shared_weights": True, "initial_velocity": "input", "alpha": 0.0},
    {"solver": "odeint", "method": "rk4", "substeps": 2},
])
def test_dusego_variants_are_equivariant(options):
    for dtype in (torch.float64, torch.float32):
        check_equivariance(make_model(**options), make_batch(), OUTPUTS, dtype=dtype)


PERIODIC = GraphBuilder(kind="radius", radius=1.5, periodic=True)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("options", [
    {},
    {"sigma_pos": "relu", "sigma": "silu", "gamma2": 2.0, "alpha": 0.5},
    {"solver": "odeint", "method": "rk4", "substeps": 2, "shared_weights": True},
], ids=["default", "relu-silu", "odeint"])
def test_dusego_honours_a_periodic_box_where_its_centre_term_cancels(dtype, options):
    """sigma_pos linear and gamma1 = 1: the acceleration is the backbone's minimum-image update."""
    report = check_periodic_equivariance(make_model(**options), periodic_batch(), OUTPUTS, graph=PERIODIC, dtype=dtype)
    assert report.control > 1e-2


@pytest.mark.parametrize("options", [{"sigma_pos": "tanh"}, {"gamma1": 0.5}])
def test_dusego_refuses_a_periodic_box_where_its_centre_term_does_not_cancel(options):
    """The issue's failure (sigma_pos tanh: 0.8 to 1.7 box units off) is refused, not computed."""
    with pytest.raises(ValueError, match="DuSEGO on a periodic box: with sigma_pos="):
        make_model(dtype=torch.float64, **options)(PERIODIC(periodic_batch()))


def test_damping_on_raw_coordinates_would_break_translation_equivariance():
    """The check is strong enough to see the mistake the centre-of-mass frame avoids."""
    model = make_model(dtype=torch.float64, gamma1=0.5)

    def raw_damping(layer, state, graph):
        x, h, y, u = state
        h_new, x_new = layer(h, x, graph)
        return x_new - 0.5 * x - model.alpha * y, torch.tanh(h_new) - h - model.alpha * u

    model.acceleration = raw_damping
    with pytest.raises(AssertionError, match="not equivariant"):
        check_equivariance(model, make_batch(), {"pos": "node_position"})


def test_vector_activation_keeps_direction_and_squashes_length():
    generator = torch.Generator().manual_seed(0)
    v = torch.randn(50, 3, generator=generator, dtype=torch.float64) * 3
    v[0] = 0.0
    q = random_orthogonal(3, generator, torch.float64, reflect=True)
    for name in ("identity", "tanh", "relu", "silu"):
        out = vector_activation(v, name)
        torch.testing.assert_close(vector_activation(v @ q.T, name), out @ q.T)
        assert torch.all(torch.linalg.cross(out, v).norm(dim=-1) < 1e-9)
    torch.testing.assert_close(vector_activation(v, "tanh").norm(dim=-1), torch.tanh(v.norm(dim=-1)))
    tiny = torch.tensor([[1e-6, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    vector_activation(tiny, "tanh").sum().backward()
    assert torch.isfinite(tiny.grad).all()


# -- the scheme is Eq. 8-9 ------------------------------------------------------------------------


def reference_imex(model, batch):
    """Eq. 8 and 9 written out from the paper, with positions measured from the centre of mass."""
    dt, alpha, g1, g2 = model.dt, model.alpha, model.gamma1, model.gamma2
    graph = GraphInputs(batch.vel, batch.edge_index, batch.edge_attr, batch.batch, batch.num_graphs)
    x, h = batch.pos, model.embed(batch.h)
    y = batch.vel * batch.horizon[batch.batch].unsqueeze(-1) / (model.num_steps * dt)
    u = torch.zeros_like(h)
    for n in range(model.num_steps):
        f_h, f_x = model.layers[n](h, x, graph)
        c = scatter_mean(x, batch.batch, batch.num_graphs)[batch.batch]
        y_new = y + dt * ((f_x - c) - g1 * (x - c) - alpha * y)  # sigma_pos = identity
        u_new = u + dt * (torch.tanh(f_h) - g2 * h - alpha * u)  # sigma = tanh
        x, h, y, u = x + dt * y_new, h + dt * u_new, y_new, u_new
    return x, h, y


def test_imex_is_eq_8_and_9():
    batch = make_batch(torch.float64)
    model = make_model(torch.float64, layers=6, dt=0.3, alpha=0.7, gamma1=1.3, gamma2=0.8)
    out = model(batch)
    x, h, y = reference_imex(model, batch)
    scale = batch.horizon[batch.batch].unsqueeze(-1) / (model.num_steps * model.dt)
    torch.testing.assert_close(out["pos"], x, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out["h"], h, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out["vel"], y / scale, rtol=1e-12, atol=1e-12)


def test_unit_step_full_damping_reduces_to_the_backbone():
    """dt = alpha = gamma = 1, identity sigmas: X_n = F_x(X_{n-1}, H_{n-1}), H_n = F_h: plain EGNN."""
    batch = make_batch(torch.float64)
    torch.manual_seed(1)
    egnn = EGNN(in_node_features=2, in_edge_features=2, hidden=16, layers=5).double()
    model = DuSEGO(in_node_features=2, in_edge_features=2, hidden=16, layers=5, dt=1.0, alpha=1.0, gamma1=1.0,
                   gamma2=1.0, sigma="identity", sigma_pos="identity").double()
    model.load_state_dict({k.replace(".phi", ".layer.phi"): v for k, v in egnn.state_dict().items()})
    torch.testing.assert_close(model(batch)["pos"], egnn(batch)["pos"], rtol=1e-12, atol=1e-12)


# -- torchdiffeq ----------------------------------------------------------------------------------


def test_odeint_symplectic_euler_equals_imex():
    """The same scheme through two code paths: forward and gradients agree to round-off."""
    batch = make_batch(torch.float64)
    imex = make_model(torch.float64, layers=5, dt=0.4, alpha=0.3)
    ode = make_model(torch.float64, layers=5, dt=0.4, alpha=0.3, solver="odeint", method="symplectic_euler")
    out_a, grad_a = loss_and_grads(imex, batch)
    out_b, grad_b = loss_and_grads(ode, batch)
    for key in OUTPUTS:
        torch.testing.assert_close(out_a[key], out_b[key], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad_a, grad_b, rtol=1e-10, atol=1e-12)


def test_odeint_euler_is_explicit_euler_on_the_first_order_system():
    """torchdiffeq's own 'euler' on (X, H, Y, U)' = (Y, U, a_X, a_H) against a loop written here:
    it checks the vector field handed to torchdiffeq, independently of our solver."""
    batch = make_batch(torch.float64)
    model = make_model(torch.float64, layers=3, dt=0.4, alpha=0.3, solver="odeint", method="euler", substeps=2)
    graph = GraphInputs(batch.vel, batch.edge_index, batch.edge_attr, batch.batch, batch.num_graphs)
    x, h = batch.pos, model.embed(batch.h)
    y = batch.vel * batch.horizon[batch.batch].unsqueeze(-1) / (model.num_steps * model.dt)
    u = torch.zeros_like(h)
    step = model.dt / 2
    for n in range(3):
        for _ in range(2):
            acc_x, acc_h = model.acceleration(model.layers[n], (x, h, y, u), graph)
            x, h, y, u = x + step * y, h + step * u, y + step * acc_x, u + step * acc_h
    torch.testing.assert_close(model(batch)["pos"], x, rtol=1e-12, atol=1e-12)


def test_schemes_converge_to_the_same_ode_solution():
    """Symplectic Euler (order 1) approaches RK4 on the same ODE as the grid is refined."""
    batch = make_batch(torch.float64)
    with torch.no_grad():
        reference = make_model(torch.float64, solver="odeint", method="rk4", substeps=8)(batch)["pos"]
        errors = [float((make_model(torch.float64, solver="odeint", substeps=k)(batch)["pos"] - reference).abs().max())
                  for k in (2, 8, 32)]
    # first order: refining the grid 4x cuts the error about 4x
    assert errors[0] / errors[1] > 3 and errors[1] / errors[2] > 3


def test_odeint_adjoint_matches_odeint():
    batch = make_batch(torch.float64)
    options = {"solver": "odeint", "method": "rk4", "substeps": 8}
    out_a, grad_a = loss_and_grads(make_model(torch.float64, **options), batch)
    out_b, grad_b = loss_and_grads(make_model(torch.float64, **{**options, "solver": "odeint_adjoint"}), batch)
    torch.testing.assert_close(out_a["pos"], out_b["pos"], rtol=1e-12, atol=1e-12)
    # the adjoint gradient is that of the continuous ODE: close to the discrete one, not equal
    torch.testing.assert_close(grad_a, grad_b, rtol=1e-4, atol=1e-6)


# -- training -------------------------------------------------------------------------------------


@pytest.mark.parametrize("solver", ["imex", "odeint"])
def test_gradient_checkpointing_gives_the_same_gradients(solver):
    batch = make_batch(torch.float64)
    results = [loss_and_grads(make_model(torch.float64, layers=6, solver=solver, gradient_checkpointing=k), batch)
               for k in (0, 1, 4)]
    for out, grad in results[1:]:
        torch.testing.assert_close(out["pos"], results[0][0]["pos"], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(grad, results[0][1], rtol=1e-12, atol=1e-12)


@pytest.fixture(scope="module")
def nbody_batches(tmp_path_factory):
    root = tiny_nbody_dataset(tmp_path_factory.mktemp("nbody"), train=64, valid=1, test=1)
    dataset = TrajectoryDataset(root / "train.zarr", SampleSpec(delta=10, input_frame=30, velocity="store"))
    graphs = GraphBuilder(kind="complete")
    return [graphs(Batch.from_data_list([dataset[i] for i in range(k, k + 32)])) for k in (0, 32)]


@pytest.mark.slow
@pytest.mark.parametrize("layers", [16, 32, 64])
def test_deep_stacks_train_without_nan(layers, nbody_batches):
    """The paper's setting (5-body data, H = 64, Adam lr 5e-4) with the default dt: no NaN and no
    blow-up (at dt = 0.5, 64 layers jump from 0.13 to 25 after the first step)."""
    torch.manual_seed(0)
    model = DuSEGO(in_node_features=2, in_edge_features=2, hidden=64, layers=layers)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4)
    losses = []
    for step in range(6):
        batch = nbody_batches[step % 2]
        loss = (model(batch)["pos"] - batch.target).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert max(losses) < 5 * losses[0]


# -- configuration --------------------------------------------------------------------------------


def test_the_nbody_config_reaches_frame_50():
    root = Path(__file__).resolve().parents[2]
    config = load_config(root / "configs" / "dusego_nbody.yaml", ["data.delta=20"])
    assert config.model.name == "dusego" and config.model.options["hidden"] == 64
    steps = config.data.generate.steps
    assert config.data.input_frame + config.data.delta <= NBodyParams(num_steps=steps).num_frames - 1
    model = instantiate(config.model, in_node_features=2, in_edge_features=2, dim=3)
    assert isinstance(model, DuSEGO) and model.num_steps == 4


def test_registered_and_built_from_a_config():
    assert MODELS["dusego"] is DuSEGO
    config = config_from_dict({"data": {"path": "x"}, "model": {"name": "dusego", "hidden": 8, "layers": 3,
                                                               "dt": 0.2, "solver": "odeint", "method": "rk4"}})
    model = instantiate(config.model, in_node_features=2, in_edge_features=2, dim=3)
    assert isinstance(model, DuSEGO) and model.num_steps == 3 and model.solver == "odeint"


@pytest.mark.parametrize("options, message", [
    ({"sigma": "softplus"}, "sigma must be one of"),
    ({"method": "dopri5", "solver": "odeint"}, "method must be one of"),
    ({"dt": 0.0}, "dt > 0"),
    ({"backbone": "segnn"}, "backbone must be one of"),
])
def test_bad_options_are_named(options, message):
    with pytest.raises(ValueError, match=message):
        DuSEGO(in_node_features=2, in_edge_features=2, **options)


def test_horizon_is_required_only_when_used():
    batch = make_batch()
    del batch.horizon
    with pytest.raises(ValueError, match="batch.horizon"):
        make_model()(batch)
    assert make_model(initial_velocity="input")(batch)["pos"].shape == batch.pos.shape


# -- the message-passing block's paths through EGNN's layer ---------------------------------------


def dusego_loss(out):
    return out["pos"].pow(2).sum() + out["h"].pow(2).mean() + out["vel"].pow(2).sum()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("path", ["chunk1", "chunk5", "triton"])
def test_every_block_path_gives_the_same_outputs_and_gradients(dtype, path):
    if not path_available(path):
        pytest.skip("triton is not installed")
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    assert_paths_agree(make_model(dtype), make_batch(dtype), PATHS[path], dusego_loss, rtol=tol, atol=tol)


@pytest.mark.parametrize("path", ["chunk5", pytest.param("triton", marks=pytest.mark.slow)])  # interpreter: seconds
def test_every_block_path_is_equivariant(path):
    if not path_available(path):
        pytest.skip("triton is not installed")
    check_equivariance(make_model(**PATHS[path]), make_batch(), OUTPUTS, dtype=torch.float64)


def test_chunking_with_the_adjoint_solver_and_checkpointing():
    model = make_model(torch.float64, solver="odeint", method="rk4", gradient_checkpointing=2, edge_chunk=5)
    assert_paths_agree(model, make_batch(torch.float64), {"edge_chunk": 5}, dusego_loss, rtol=1e-10, atol=1e-10)
