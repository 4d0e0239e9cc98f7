import json
import subprocess
import sys
from pathlib import Path

import pytest

from scaleq.config import config_from_dict
from scaleq.run import run
from scaleq.train.metrics import read_metrics
from tests.support.stores import tiny_nbody_dataset

ROOT = Path(__file__).resolve().parents[2]


def tiny_config(tmp_path, data_path, **train):
    return config_from_dict({
        "name": "tiny",
        "out_dir": str(tmp_path / "runs"),
        "seed": 0,
        "data": {"path": str(data_path), "input_frame": 30, "delta": 10, "velocity": "store", "batch_size": 16},
        "model": {"name": "egnn", "hidden": 16, "layers": 2},
        "train": {"epochs": 6, "lr": 3e-3, "eval_every": 2, "patience": 100, "progress": False, **train},
    })


@pytest.fixture(scope="module")
def nbody(tmp_path_factory):
    return tiny_nbody_dataset(tmp_path_factory.mktemp("nbody"))


@pytest.mark.slow
def test_tiny_run_learns_and_writes_its_outputs(tmp_path, nbody):
    summary = run(tiny_config(tmp_path, nbody, epochs=20))
    run_dir = Path(summary.run_dir)
    rows = read_metrics(run_dir / "metrics.csv")
    losses = [float(r["train_loss"]) for r in rows]
    assert losses[-1] < 0.5 * losses[0]
    assert [r["val_mse"] != "" for r in rows] == [(epoch + 1) % 2 == 0 for epoch in range(20)]  # eval_every 2
    assert summary.test_mse < summary.linear_test_mse
    for name in ("config.yaml", "summary.json", "loss_curves.png", "checkpoints/best.pt", "checkpoints/last.pt"):
        assert (run_dir / name).exists(), name
    assert json.loads((run_dir / "summary.json").read_text())["best_epoch"] == summary.best_epoch
    # one epoch numbering: summary.json's best epoch is the metrics.csv row with the lowest val MSE
    best_row = min((float(r["val_mse"]), int(r["epoch"])) for r in rows if r["val_mse"])[1]
    assert summary.best_epoch == best_row
    assert list((run_dir / "tensorboard").iterdir())


@pytest.mark.slow
def test_resume_continues_to_the_same_result(tmp_path, nbody):
    full = run(tiny_config(tmp_path / "a", nbody, epochs=6))
    first = run(tiny_config(tmp_path / "b", nbody, epochs=3))
    resumed = run(tiny_config(tmp_path / "b", nbody, epochs=6), resume=True)
    assert resumed.run_dir == first.run_dir
    assert resumed.best_val_mse == pytest.approx(full.best_val_mse, rel=1e-5)
    assert resumed.test_mse == pytest.approx(full.test_mse, rel=1e-5)


@pytest.mark.slow
def test_cli_reports_user_errors_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  path: nowhere\ntrain:\n  lrr: 1\n")
    result = subprocess.run([sys.executable, "launch/train.py", "--config", str(bad)], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "unknown key 'train.lrr'" in result.stderr and "Traceback" not in result.stderr
    missing = tmp_path / "missing.yaml"
    missing.write_text(f"data:\n  path: {tmp_path / 'nowhere'}\n")
    result = subprocess.run([sys.executable, "launch/train.py", "--config", str(missing)], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 2 and "dataset not found" in result.stderr and "Traceback" not in result.stderr
