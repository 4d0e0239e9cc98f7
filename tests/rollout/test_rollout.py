import math

import numpy as np
import pytest
import torch
from torch import nn

from scaleq.data.dataset import SampleSpec, TrajectoryDataset
from scaleq.graph.builder import GraphBuilder
from scaleq.models.baselines import ConstantVelocity
from scaleq.rollout.metrics import (
    horizon_metrics,
    summary_line,
)
from scaleq.rollout.rollout import max_steps, reference, rollout, velocity_estimate
from scaleq.store.format import StoreAttrs, StoreError, Trajectory
from scaleq.store.writer import write_store
from tests.support.stores import tiny_nbody_dataset


@pytest.fixture(scope="module")
def nbody(tmp_path_factory):
    return tiny_nbody_dataset(tmp_path_factory.mktemp("nbody"), train=8, valid=8, test=8)


class TrueNextFrame(nn.Module):
    """A "model" built from the store's own frames: it finds the stored frame its input is and
    returns the one ``delta`` later. It checks that the graph it gets was built on its input."""

    def __init__(self, frames: torch.Tensor, delta: int) -> None:
        super().__init__()
        self.frames, self.delta = frames, delta  # [T, N, D], the rolled-out trajectories side by side
        self.calls = 0

    def forward(self, batch):
        """
        Shapes:
            batch.pos: [N, D] -> {"pos": [N, D]}
        """
        self.calls += 1
        source, target = batch.edge_index
        dist2 = (batch.pos[target] - batch.pos[source]).pow(2).sum(-1)
        assert torch.equal(batch.edge_attr[:, -1], dist2), "edge attributes are not those of the input positions"
        assert torch.all(dist2 < 1.5**2), "not a radius graph of the input positions"
        errors = (self.frames - batch.pos).abs().amax(dim=(1, 2))
        frame = int(errors.argmin())
        assert errors[frame] == 0, "the input is not a stored frame"
        return {"pos": self.frames[frame + self.delta].clone()}


@pytest.mark.parametrize("velocity", ["store", "backward", "forward"])
def test_a_model_that_predicts_the_true_next_frame_rolls_out_with_zero_error(nbody, velocity):
    delta = 4
    dataset = TrajectoryDataset(nbody / "test.zarr", SampleSpec(delta=delta, velocity=velocity))
    trajectories = [2, 0, 5]
    start = 1
    steps = max_steps(dataset, trajectories, start)
    assert steps == (51 - 1 - start) // delta
    ref = reference(dataset, trajectories, start, steps)
    every = list(range(dataset.store.num_frames(0)))
    frames = torch.cat([torch.from_numpy(dataset.store.frames(s, every)) for s in trajectories], dim=1)
    oracle = TrueNextFrame(frames, delta)
    graph = GraphBuilder(kind="radius", radius=1.5, max_num_neighbors=8)
    run = rollout(oracle, ref, graph)
    assert oracle.calls == steps
    assert torch.equal(run.pos, ref.pos)
    metrics = horizon_metrics(ref, run, rollout(ConstantVelocity(), ref, graph))
    assert len(metrics.rows) == steps + 1
    assert all(row["mse"] == 0.0 for row in metrics.rows)
    assert max(row["mse_baseline"] for row in metrics.rows) > 1e-3  # the baseline does err
    assert metrics.first_nan is None and metrics.first_exit is None
    assert "@1 0 (Linear" in summary_line(metrics, name="oracle")


def linear_store(path, velocity_per_frame, frames=20, dt=0.5):
    """Particles moving at constant velocity: x(t) = x0 + t v (t in frames)."""
    rng = np.random.default_rng(0)
    x0 = rng.normal(size=(6, 3))
    t = np.arange(frames, dtype=np.float64)[:, None, None]
    pos = x0 + t * velocity_per_frame
    traj = Trajectory(positions=pos.astype(np.float32), node_features=np.ones((6, 1), np.float32),
                      velocities=np.broadcast_to(velocity_per_frame / dt, pos.shape).astype(np.float32))
    write_store(path, StoreAttrs(kind="synthetic", dim=3, dt=dt, feature_names=["type"]), [traj])
    return x0


@pytest.mark.parametrize("velocity", ["store", "backward", "forward"])
def test_linear_baseline_rollout_is_x0_plus_k_v_delta_for_constant_velocity(tmp_path, velocity):
    v = np.array([[0.03, -0.02, 0.01]] * 6)
    x0 = linear_store(tmp_path / "lin.zarr", v)
    delta, start = 3, 2
    dataset = TrajectoryDataset(tmp_path / "lin.zarr", SampleSpec(delta=delta, velocity=velocity))
    ref = reference(dataset, [0], start, steps=5)
    run = rollout(ConstantVelocity(), ref, GraphBuilder(kind="complete"))
    k = np.arange(6)[:, None, None]
    expected = x0 + start * v + k * v * delta  # closed form, independent of the store
    np.testing.assert_allclose(run.pos.numpy(), expected, rtol=0, atol=2e-6)
    np.testing.assert_allclose(run.rate.numpy(), np.broadcast_to(v / 0.5, run.rate.shape), rtol=0, atol=2e-5)


def test_velocity_estimate_is_exact_for_constant_acceleration():
    a, v0, x0 = torch.tensor([[0.2, -0.1]]), torch.tensor([[1.0, 0.5]]), torch.tensor([[0.3, 0.0]])
    x = lambda t: x0 + v0 * t + 0.5 * a * t**2  # noqa: E731 - position at frame t
    delta = 3
    newest, previous, older = x(2 * delta), x(delta), x(0)
    for velocity, expected in (("backward", x(6) - x(5)), ("forward", x(7) - x(6)), ("store", (v0 + a * 6) / 0.1)):
        vel, rate = velocity_estimate(newest, previous, older, delta=delta, velocity=velocity, frame_dt=0.1)
        torch.testing.assert_close(vel, expected, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(rate, (v0 + a * 6) / 0.1, rtol=1e-6, atol=1e-6)


def test_short_store_and_unknown_trajectory_fail_with_one_clear_line(nbody):
    dataset = TrajectoryDataset(nbody / "test.zarr", SampleSpec(delta=10, velocity="store"))
    with pytest.raises(StoreError) as err:
        reference(dataset, [0], 0, steps=20)
    message = str(err.value)
    assert "\n" not in message and "test.zarr" in message and "51 frames" in message and "at most 5 steps" in message
    with pytest.raises(StoreError, match="trajectory 99 asked for; the store has 8"):
        reference(dataset, [99], 0, steps=1)
    backward = TrajectoryDataset(nbody / "test.zarr", SampleSpec(delta=10, velocity="backward"))
    with pytest.raises(StoreError, match="first possible start frame is 1"):
        reference(backward, [0], 0, steps=1)


def test_nan_predictions_are_reported_and_do_not_spread_to_other_trajectories(nbody):
    class Explodes(nn.Module):
        def forward(self, batch):
            """
            Shapes:
                batch.pos: [N, D] -> {"pos": [N, D]}
            """
            pos = batch.pos + 0.01
            return {"pos": torch.where(batch.batch[:, None] == 1, pos * math.inf, pos)}

    dataset = TrajectoryDataset(nbody / "test.zarr", SampleSpec(delta=5, velocity="store"))
    ref = reference(dataset, [0, 1, 2], 0, steps=3)
    run = rollout(Explodes(), ref, GraphBuilder(kind="radius", radius=2.0))
    second = ref.batch == 1
    assert torch.isnan(run.pos[1:, second]).all() and torch.isfinite(run.pos[:, ~second]).all()
    metrics = horizon_metrics(ref, run)
    assert metrics.first_nan == 1
    assert "NaN: step 1" in summary_line(metrics, name="x")


MODEL_SECTIONS = {
    "egnn": {"hidden": 8, "layers": 2},
    "fastegnn": {"hidden": 8, "layers": 2, "virtual_nodes": 2},
    "eghn": {"hidden": 8, "clusters": 2, "interaction_layers": 1, "pooling_layers": 1, "decoder_layers": 1},
    "dusego": {"hidden": 8, "layers": 2},
    "linear": {},
}


@pytest.mark.parametrize("name", sorted(MODEL_SECTIONS))
def test_every_model_rolls_out_on_rebuilt_graphs(nbody, name):
    from scaleq.config import config_from_dict
    from scaleq.models import MODELS, build_model

    assert set(MODEL_SECTIONS) >= set(MODELS) - {"constant_velocity"}  # a new model gets a line here
    config = config_from_dict({
        "data": {"path": str(nbody), "delta": 5, "velocity": "backward"},
        "graph": {"kind": "radius", "radius": 3.0, "edge_drop": 0.5 if name == "fastegnn" else 0.0,
                  "local": "knn" if name == "eghn" else "none", "local_k": 2},
        "model": {"name": name, **MODEL_SECTIONS[name]},
    })
    dataset = TrajectoryDataset(nbody / "test.zarr", SampleSpec(delta=5, velocity="backward"))
    torch.manual_seed(0)
    model = build_model(config, dataset)
    ref = reference(dataset, [0, 1], 1, steps=3)
    run = rollout(model, ref, GraphBuilder.from_config(config.graph))
    assert run.pos.shape == ref.pos.shape and torch.isfinite(run.pos).all()
    assert not torch.equal(run.pos[1], run.pos[0])
    assert (run.labels is not None) == (name == "eghn")
    if name == "eghn":
        assert run.labels.shape == ref.pos.shape[:2] and int(run.labels.max()) < 2


@pytest.mark.gpu
def test_rollout_on_cuda_matches_the_cpu(nbody):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from scaleq.models.egnn import EGNN

    dataset = TrajectoryDataset(nbody / "test.zarr", SampleSpec(delta=5, velocity="store"))
    ref = reference(dataset, [0, 1, 2], 0, steps=4)
    torch.manual_seed(0)
    model = EGNN(in_node_features=2, in_edge_features=2, hidden=16, layers=2)
    graph = GraphBuilder(kind="radius", radius=3.0)
    on_cpu = rollout(model, ref, graph)
    on_gpu = rollout(model.cuda(), ref, graph, device="cuda")
    assert on_gpu.pos.device.type == "cpu"  # results come back for metrics and pictures
    torch.testing.assert_close(on_gpu.pos, on_cpu.pos, atol=1e-4, rtol=1e-4)
