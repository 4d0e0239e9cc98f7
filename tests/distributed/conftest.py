import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.support.stores import tiny_nbody_dataset

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


@pytest.fixture(scope="session")
def ray_token():
    """The cluster token, made as the README says (``ray get-auth-token --generate``) in the test
    session's own HOME (tests/conftest.py) before any Ray starts in this process: Ray's driver
    keeps the token it first read, so all of a session's clusters share this one."""
    made = subprocess.run([str(Path(sys.executable).parent / "ray"), "get-auth-token", "--generate"],
                          capture_output=True, text=True, timeout=120)
    token = Path(os.environ["HOME"]) / ".ray" / "auth_token"
    assert made.returncode == 0 and token.is_file(), made.stderr[-2000:]
    return token


@pytest.fixture
def ray_tmpdir(monkeypatch, ray_token):
    """A private, short RAY_TMPDIR (Unix socket paths are limited to ~100 characters), with the
    session's token in place."""
    with tempfile.TemporaryDirectory(prefix="rq", dir="/tmp") as folder:
        monkeypatch.setenv("RAY_TMPDIR", folder)
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
        yield Path(folder)


@pytest.fixture
def namespace_hosts():
    """A factory of namespace hosts (tests/distributed/hosts.py), torn down after the test however
    it ends; skips with one line where namespaces cannot be made."""
    from tests.distributed.hosts import HostNet, unavailable

    reason = unavailable()
    if reason is not None:
        pytest.skip(reason)
    made: list[HostNet] = []

    def make(n: int, rate_mbit: float | None = None) -> HostNet:
        net = HostNet(n, rate_mbit)
        made.append(net)
        return net.__enter__()

    try:
        yield make
    finally:
        for net in made:
            net.close()
