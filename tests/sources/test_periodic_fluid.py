"""The periodic fluid dataset (scaleq/sources/periodic_fluid.py): its forces see the box, its stores
carry the box in ``bounds``, and every model that honours periodic boxes trains on it."""

import math

import numpy as np
import pytest

from scaleq.data.dataset import SampleSpec, TrajectoryDataset
from scaleq.sources.periodic_fluid import FluidParams, pair_forces, simulate_fluid, write_fluid_dataset
from scaleq.store.reader import open_store

SMALL = FluidParams(num_particles=16, box=3.0, frames=8, sample_every=5)


def test_forces_depend_on_positions_modulo_the_box_and_sum_to_zero():
    rng = np.random.RandomState(0)
    x = rng.uniform(0, SMALL.box, size=(2, 16, 3))
    force = pair_forces(x, SMALL)
    moved = x + rng.randint(-2, 3, size=x.shape) * SMALL.box
    np.testing.assert_allclose(pair_forces(moved, SMALL), force, atol=1e-12)
    np.testing.assert_allclose(force.sum(1), 0.0, atol=1e-12)  # Newton's third law: no net force
    assert np.abs(force).max() > 0.1  # the particles do interact, across the boundary too


def test_trajectories_are_continuous_and_keep_their_momentum():
    positions, velocities = simulate_fluid(SMALL, 3, np.random.RandomState(1))
    assert positions.shape == velocities.shape == (3, 8, 16, 3)
    np.testing.assert_allclose(velocities.sum(2), 0.0, atol=1e-10)
    step = np.abs(np.diff(positions, axis=1)).max()
    assert step < SMALL.box / 4  # unwrapped: no jump by a box side between frames
    assert (positions.min() < 0) or (positions.max() > SMALL.box)  # some particle left the box


def test_stores_record_the_periodic_box(tmp_path):
    paths = write_fluid_dataset(tmp_path, SMALL, [("train", 2), ("valid", 1), ("test", 1)], seed=3)
    store = open_store(paths["train"])
    assert store.attrs.bounds == [[0.0, 3.0]] * 3 and "periodic" in store.attrs.extra
    dataset = TrajectoryDataset(paths["train"], SampleSpec(delta=2, input_frame=3, velocity="store"))
    assert dataset[0].box.tolist() == [[[0.0, 3.0]] * 3]


@pytest.mark.slow
@pytest.mark.parametrize("model, loss", [
    ({"name": "egnn", "hidden": 16, "layers": 2}, {}),
    ({"name": "fastegnn", "hidden": 16, "layers": 2, "virtual_nodes": 2}, {"mmd_weight": 0.01}),
    ({"name": "dusego", "hidden": 16, "layers": 2, "sigma": "tanh"}, {}),
], ids=["egnn", "fastegnn", "dusego"])
def test_periodic_models_train_on_the_periodic_fluid(tmp_path, model, loss):
    from scaleq.config import config_from_dict
    from scaleq.run import run
    from scaleq.train.metrics import read_metrics

    params = FluidParams(num_particles=24, box=4.0, frames=12, sample_every=5)
    write_fluid_dataset(tmp_path / "data", params, [("train", 12), ("valid", 4), ("test", 4)], seed=0)
    raw = {
        "name": "fluid", "out_dir": str(tmp_path / "runs"), "seed": 0,
        "data": {"path": str(tmp_path / "data"), "input_frame": 3, "delta": 5, "velocity": "store", "batch_size": 4},
        "graph": {"kind": "radius", "radius": 1.5, "periodic": True},
        "model": model, "loss": loss,
        "train": {"epochs": 4, "lr": 1e-3, "eval_every": 1, "progress": False, "device": "cpu"},
    }
    summary = run(config_from_dict(raw, "<periodic fluid>"))
    assert math.isfinite(summary.test_mse) and math.isfinite(summary.linear_test_mse)
    rows = read_metrics(tmp_path / "runs" / "fluid" / "metrics.csv")
    assert float(rows[-1]["train_mse"]) < float(rows[0]["train_mse"])  # it learns
