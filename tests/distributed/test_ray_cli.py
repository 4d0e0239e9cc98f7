"""`launch/train.py --launcher ray` tells the user what went wrong as the plain CLI does: a
worker's CheckpointError (or ConfigError, StoreError, OSError, ...) ends the driver with the same
one `error:` line, last on stderr, and the same exit code; --resume-from works under Ray."""

from __future__ import annotations

import re

import pytest

from scaleq.train.metrics import read_metrics
from tests.support.stores import tiny_nbody_dataset
from tests.test_cli_train import BASE, cli

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_a_worker_error_is_the_drivers_one_line_and_resume_from_best_works(tmp_path, ray_tmpdir):
    data = tiny_nbody_dataset(tmp_path / "data", train=16, valid=8, test=8)
    args = ["--config", "configs/default.yaml", f"data.path={data}", f"out_dir={tmp_path / 'runs'}", "name=done", *BASE,
            "train.device=cpu"]
    first = cli(args)
    assert first.returncode == 0, first.stderr[-3000:]
    checkpoints = tmp_path / "runs" / "done" / "checkpoints"
    last = checkpoints / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])  # cut short

    ray = ["--launcher", "ray", "--ray-address", "local"]
    damaged = cli([*args, *ray, "--resume", "train.epochs=2"])
    errors = [line for line in damaged.stderr.splitlines() if line.startswith("error:")]
    assert damaged.returncode == 2, damaged.stderr[-3000:]
    assert len(errors) == 1 and damaged.stderr.strip().splitlines()[-1] == errors[0], damaged.stderr[-3000:]
    assert re.match(r"error: \S+/done/checkpoints/last\.pt: checkpoint is damaged or unreadable .* --resume-from best",
                    errors[0]), errors[0]

    resumed = cli([*args, *ray, "--resume-from", "best", "train.epochs=2"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Ray Train finished" in resumed.stdout
    assert [r["epoch"] for r in read_metrics(tmp_path / "runs" / "done" / "metrics.csv")] == ["1", "2"]


def test_regenerate_data_reaches_the_ray_driver_and_the_workers_header_says_so(tmp_path, ray_tmpdir):
    from scaleq.store.reader import TrajectoryStore

    data = tiny_nbody_dataset(tmp_path / "data", train=12, valid=6, test=6)
    result = cli(["--config", "configs/default.yaml", f"data.path={data}", f"out_dir={tmp_path / 'runs'}", *BASE,
                  "train.device=cpu", "engine.workers=1", "data.generate.train=5", "data.generate.valid=3",
                  "data.generate.test=3", "--regenerate-data", "--launcher", "ray", "--ray-address", "local"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert [TrajectoryStore(data / f"{s}.zarr").num_trajectories for s in ("train", "valid", "test")] == [5, 3, 3]
    assert "(generated now): train 5 trajectories" in result.stdout + result.stderr
