import os
import tempfile
from pathlib import Path

import pytest

from scaleq.testing.stores import tiny_nbody_dataset

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def nbody_small(tmp_path_factory):
    """32 training samples: 2 ranks x 2 batches of 8 per epoch."""
    return tiny_nbody_dataset(tmp_path_factory.mktemp("nbody_small"), train=32, valid=16, test=16)


def tiny_raw(tmp_path, data_path, name="tiny", **train):
    return {
        "name": name,
        "out_dir": str(tmp_path / "runs"),
        "seed": 0,
        "data": {"path": str(data_path), "input_frame": 30, "delta": 10, "velocity": "store", "batch_size": 8},
        "model": {"name": "egnn", "hidden": 16, "layers": 2},
        "train": {"epochs": 2, "lr": 3e-3, "eval_every": 1, "progress": False, "device": "cpu", **train},
    }


@pytest.fixture
def ray_tmpdir(monkeypatch):
    """A machine state that has never run Ray: a private, short RAY_TMPDIR (Unix socket paths are
    limited to ~100 characters) and a private, empty HOME, so that no ``~/.ray/auth_token`` left
    by an earlier run or test is seen, and none is left behind."""
    with tempfile.TemporaryDirectory(prefix="rq", dir="/tmp") as folder:
        home = Path(folder) / "home"
        home.mkdir()
        monkeypatch.setenv("RAY_TMPDIR", folder)
        monkeypatch.setenv("HOME", str(home))
        for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE", "RAY_ADDRESS"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
        yield Path(folder)
