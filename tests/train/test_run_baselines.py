"""The end-of-run comparison: the model against the learned Linear, with constant velocity too."""

import numpy as np
import pytest

from scaleq.config import config_from_dict
from scaleq.data.splits import open_datasets
from scaleq.run import run
from tests.support.stores import tiny_nbody_dataset


@pytest.mark.slow
def test_run_reports_the_learned_linear_and_constant_velocity(tmp_path):
    data = tiny_nbody_dataset(tmp_path / "nbody", train=24, valid=8, test=12, steps=4200)
    config = config_from_dict({
        "name": "baselines", "out_dir": str(tmp_path / "runs"),
        "data": {"path": str(data), "input_frame": 30, "delta": 10, "velocity": "store", "batch_size": 7},
        "model": {"name": "egnn", "hidden": 8, "layers": 1},
        "train": {"epochs": 1, "eval_every": 1, "progress": False},
    })
    summary = run(config)

    def arrays(split):
        samples = list(open_datasets(config)[split])
        return [np.concatenate([getattr(s, key).numpy().astype(np.float64) for s in samples])
                for key in ("pos", "vel", "target")] + [float(samples[0].horizon)]

    pos, vel, target, horizon = arrays("train")
    u = vel * horizon
    t = float((u * (target - pos)).sum() / (u * u).sum())  # least squares over the training split
    assert summary.linear_time == pytest.approx(t, rel=1e-6)
    pos, vel, target, horizon = arrays("test")
    assert summary.linear_test_mse == pytest.approx(((pos + t * horizon * vel - target) ** 2).mean(), rel=1e-5)
    assert summary.constant_velocity_test_mse == pytest.approx(((pos + horizon * vel - target) ** 2).mean(), rel=1e-5)
    assert summary.linear_test_mse < summary.constant_velocity_test_mse
    closing = summary.describe().splitlines()[-1]
    assert closing.startswith("test MSE egnn") and f"Linear's {summary.linear_test_mse:.6f}" in closing
