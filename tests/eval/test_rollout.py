import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from scaleq.data.dataset import SampleSpec, TrajectoryDataset
from scaleq.data.graph import GraphBuilder
from scaleq.data.nbody import NBodyParams, draw_initial_states, simulate
from scaleq.data.store import StoreAttrs, StoreError, Trajectory, write_store
from scaleq.eval.animation import animate, frame_grid, mp4_available
from scaleq.eval.rollout import (
    horizon_metrics,
    kabsch_rmsd,
    max_steps,
    nbody_invariants,
    radius_of_gyration,
    reference,
    rollout,
    summary_line,
    velocity_estimate,
)
from scaleq.models.baselines import LinearDynamics
from scaleq.testing.stores import tiny_nbody_dataset


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
    metrics = horizon_metrics(ref, run, rollout(LinearDynamics(), ref, graph))
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
    run = rollout(LinearDynamics(), ref, GraphBuilder(kind="complete"))
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


def test_simulator_energy_is_conserved_to_its_integrators_accuracy():
    """Leapfrog stores velocities half a step behind the positions, so the energy computed from a
    stored frame is off by O(dt): halving dt halves the drift. (Trajectories with close encounters,
    where the force clip acts, are not conservative at all; the median is not one of them.)"""
    init = draw_initial_states(NBodyParams(), np.random.RandomState(7), 12)
    drifts = []
    for dt, steps, every in ((0.001, 2000, 100), (0.0005, 4000, 200)):
        params = NBodyParams(dt=dt, num_steps=steps, sample_every=every)
        loc, vel = simulate(params, init)
        per = [nbody_invariants(torch.from_numpy(loc[s]), torch.from_numpy(vel[s]),
                                torch.from_numpy(init.charges[s]), vars(params)) for s in range(12)]
        drift = torch.stack([(p["energy"] - p["energy"][0]).abs().max() for p in per])
        drifts.append(float(drift.median()))
        momentum = torch.stack([(p["momentum"] - p["momentum"][0]).norm(dim=-1).max() for p in per])
        assert float(momentum.median()) < 1e-9  # pairwise forces cancel unless the clip acts
    assert drifts[0] < 1e-2, drifts  # against a kinetic energy of 5 * 0.5^2 / 2 = 0.625
    assert 0.35 < drifts[1] / drifts[0] < 0.65, drifts


def test_kabsch_rmsd_ignores_rotation_and_translation_but_not_reflection():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 30, 3, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    rotation = q * torch.sign(torch.linalg.det(q))  # a proper rotation
    moved = x @ rotation.T + torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    assert float(kabsch_rmsd(moved, x)[0]) < 1e-12
    mirrored = x * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    assert float(kabsch_rmsd(mirrored, x)[0]) > 0.1
    noisy = x + 0.01 * torch.randn(x.shape, generator=g, dtype=torch.float64)
    assert 0.005 < float(kabsch_rmsd(noisy, x)[0]) < 0.02
    assert math.isnan(float(kabsch_rmsd(torch.full_like(x, math.nan), x)[0]))
    square = torch.tensor([[[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]]]) + 5.0
    assert float(radius_of_gyration(square)[0]) == pytest.approx(math.sqrt(2.0))


def test_md_store_metrics_have_rmsd_and_radius_of_gyration(tmp_path):
    from scaleq.testing.stores import random_walk_trajectories

    trajectories = random_walk_trajectories(2, 12, [7, 5], bonds=True)
    write_store(tmp_path / "md.zarr", StoreAttrs(kind="md", dim=3, dt=1.0, feature_names=["charge"]), trajectories)
    dataset = TrajectoryDataset(tmp_path / "md.zarr", SampleSpec(delta=2, velocity="backward"))
    ref = reference(dataset, [0, 1], 1, steps=4)
    metrics = horizon_metrics(ref, rollout(LinearDynamics(), ref, GraphBuilder(kind="complete", local="bonds")))
    row = metrics.rows[3]
    assert row["rmsd"] > 0 and row["rg"] > 0 and row["rg_true"] > 0
    assert metrics.rows[0]["rmsd"] < 1e-6 and metrics.rows[0]["rg"] == pytest.approx(metrics.rows[0]["rg_true"])


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


def test_animation_has_the_asked_number_of_frames(tmp_path):
    g = torch.Generator().manual_seed(0)
    true = torch.cumsum(0.1 * torch.randn(7, 40, 3, generator=g), 0)
    pred = true + 0.05 * torch.randn(7, 40, 3, generator=g)
    path = animate(pred, true, tmp_path / "sub" / "roll.gif", colours=torch.arange(40) % 2, fps=5)
    with Image.open(path) as gif:
        assert gif.n_frames == 7
        assert gif.size[0] > 200
    flat = animate(pred[:4, :, :2], true[:4, :, :2], tmp_path / "flat.gif", colours=torch.zeros(4, 40),
                   max_particles=10)
    with Image.open(flat) as gif:
        assert gif.n_frames == 4
    grid = frame_grid(pred, true, tmp_path / "grid.png", [0, 3, 6])
    with Image.open(grid) as png:
        assert png.size[0] > 300 and np.asarray(png).std() > 1  # not blank
    with pytest.raises(ValueError, match="steps must be in"):
        frame_grid(pred, true, tmp_path / "bad.png", [7])
    if not mp4_available():
        with pytest.raises(ValueError, match="imageio-ffmpeg"):
            animate(pred, true, tmp_path / "roll.mp4")
        return
    import imageio_ffmpeg

    frames = imageio_ffmpeg.read_frames(str(animate(pred, true, tmp_path / "roll.mp4")))
    next(frames)  # the metadata
    assert sum(1 for _ in frames) == 7


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
    run = rollout(model, ref, config.graph.builder())
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
