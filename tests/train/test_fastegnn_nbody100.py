"""FastEGNN on a small version of its 100-body system (GMN's isolated charged balls in 3
Gaussians), trained on the CPU: it must clearly beat the Linear baseline and EGNN* (EGNN with
every real edge dropped), the paper's two cheap reference points.

Sized for a couple of CPU minutes: 40 simulated trajectories of 22 frames (every start frame with
its frame 10 later is a sample: 288 training samples), H=16, 2 layers, 15 epochs."""

import pytest

from scaleq.config import config_from_dict
from scaleq.run import run
from scaleq.sources.nbody import NBodyParams, SplitSpec, write_nbody_dataset

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def nbody100(tmp_path_factory):
    # frame f is the state after simulator step 100 f + 1: 2200 steps give frames 0..21, start frames 0..11
    root = tmp_path_factory.mktemp("nbody100")
    params = NBodyParams(system="fastegnn", num_particles=100, gaussians=3, num_steps=2200)
    write_nbody_dataset(root, params, [SplitSpec("train", 24), SplitSpec("valid", 8), SplitSpec("test", 8)], seed=43)
    return root


def train(tmp_path, data_path, name, model, edge_drop, loss):
    return run(config_from_dict({
        "name": name,
        "out_dir": str(tmp_path / "runs"),
        "seed": 0,
        "data": {"path": str(data_path), "delta": 10, "velocity": "store", "batch_size": 16},
        "graph": {"kind": "complete", "edge_drop": edge_drop, "edge_attr": "distance"},
        "model": {"name": model, "hidden": 16, "layers": 2},
        "loss": loss,
        "train": {"epochs": 15, "lr": 5e-3, "eval_every": 5, "patience": 100, "progress": False},
    }))


def test_fastegnn_beats_linear_and_egnn_star_on_100_bodies(tmp_path, nbody100):
    egnn_star = train(tmp_path, nbody100, "egnn_star", "egnn", 1.0, {})
    fast = train(tmp_path, nbody100, "fastegnn", "fastegnn", 0.75, {"mmd_weight": 0.01, "mmd_sigma": 1.5})
    assert fast.linear_test_mse == pytest.approx(egnn_star.linear_test_mse)  # the same test samples
    assert fast.test_mse < 0.8 * egnn_star.test_mse, (fast.test_mse, egnn_star.test_mse)
    assert fast.test_mse < 0.7 * fast.linear_test_mse, (fast.test_mse, fast.linear_test_mse)
