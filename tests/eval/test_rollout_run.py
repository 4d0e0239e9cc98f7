import csv
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from scaleq.config import ConfigError, config_from_dict
from scaleq.run import run
from tests.support.stores import tiny_nbody_dataset

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny EGNN run on the real N-body simulator's data with a rollout every epoch."""
    root = tmp_path_factory.mktemp("rollout_run")
    data = tiny_nbody_dataset(root / "nbody", train=32, valid=8, test=8)
    config = config_from_dict({
        "name": "tiny", "out_dir": str(root / "runs"),
        "data": {"path": str(data), "input_frame": 30, "delta": 10, "velocity": "store", "batch_size": 16},
        "model": {"name": "egnn", "hidden": 8, "layers": 2},
        "train": {"epochs": 2, "eval_every": 1, "progress": False, "rollout_every": 1},
    })
    return Path(run(config).run_dir)


def test_rollout_every_writes_metrics_a_png_and_tensorboard_entries(trained):
    for epoch in (1, 2):
        with (trained / "rollouts" / f"epoch_{epoch:04d}.csv").open() as f:
            rows = list(csv.DictReader(f))
        assert [int(r["step"]) for r in rows] == [0, 1, 2, 3, 4, 5]  # frames 0..50 of validation trajectory 0
        assert float(rows[0]["mse"]) == 0.0 and float(rows[1]["mse"]) > 0
        assert "energy_true" in rows[0] and "mse_baseline" in rows[0]
        with Image.open(trained / "rollouts" / f"epoch_{epoch:04d}.png") as png:
            assert 100 < png.size[0] < 600
    events = EventAccumulator(str(trained / "tensorboard"), size_guidance={"images": 0, "scalars": 0}).Reload()
    steps = [e.step for e in events.Scalars("rollout/mse_step_1")]  # optimizer steps: 32 samples / 16 per epoch
    assert steps == [2, 4]
    assert "rollout/valid_0" in events.Tags()["images"]


def test_rollout_every_must_not_be_negative():
    with pytest.raises(ConfigError, match="train.rollout_every must be >= 0"):
        config_from_dict({"data": {"path": "-"}, "train": {"rollout_every": -1}})


def rollout_cli(*args):
    return subprocess.run([sys.executable, "launch/rollout.py", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True)


@pytest.mark.slow
def test_cli_rolls_out_a_run(trained, tmp_path):
    out = tmp_path / "out"
    result = rollout_cli("--run", trained, "--trajectories", 0, 3, "--steps", 3, "--out", out, "--animation", "gif")
    assert result.returncode == 0, result.stderr
    assert "3 steps of 10 frames" in result.stdout and "@1 " in result.stdout and "Linear" in result.stdout
    with (out / "rollout.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 4
    with Image.open(out / "rollout.gif") as gif:
        assert gif.n_frames == 4
    assert (out / "rollout.png").stat().st_size > 0 and (out / "rollout_frames.png").stat().st_size > 0


def test_bad_runs_fail_with_one_line(trained, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("rollout_cli", ROOT / "launch" / "rollout.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    cases = [
        (["--steps", "20"], "at most 5 steps fit"),  # the store's 51 frames hold 5 steps of 10 from frame 0
        (["--checkpoint", "nothing.pt"], "nothing.pt: checkpoint not found"),
        (["--trajectories", "99"], "trajectory 99 asked for; the store has 8"),
    ]
    for args, expected in cases:
        assert cli.main(["--run", str(trained), "--out", str(tmp_path), *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.strip().count("\n") == 0 and expected in err, err
    assert cli.main(["--run", str(tmp_path / "nowhere")]) == 2
    assert "config.yaml: not found" in capsys.readouterr().err
