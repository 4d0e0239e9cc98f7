"""`python -m scaleq.verify PATH`: a whole store and run pass (exit 0); each damage (a flipped bit in
a chunk, statistics that do not match the data, a flipped bit in a checkpoint, a checkpoint
that would run code) is one line and exit 1."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import zarr

from scaleq.run import run
from tests.support.stores import tiny_nbody_dataset
from tests.train.test_reliability import tiny_config

ROOT = Path(__file__).resolve().parents[1]


def verify(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "scaleq.verify", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def flip(path: Path, byte: int) -> None:
    data = bytearray(path.read_bytes())
    data[byte] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("verify")
    data = tiny_nbody_dataset(root / "data", train=8, valid=4, test=4)
    summary = run(tiny_config(root, data, epochs=1))
    return root, data, Path(summary.run_dir)


@pytest.fixture
def copy(world, tmp_path):
    root, data, run_dir = world
    shutil.copytree(data, tmp_path / "data")
    shutil.copytree(run_dir, tmp_path / "run")
    return tmp_path / "data", tmp_path / "run"


@pytest.mark.slow
def test_a_whole_store_and_run_pass(world):
    _, data, run_dir = world
    result = verify(str(data), str(run_dir))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == ["verify: whole (6 checked: 3 stores, 1 run, 2 checkpoints; 0 note(s))"]


@pytest.mark.slow
def test_each_damage_is_one_line_and_fails(copy):
    data, run_dir = copy
    flip(data / "train.zarr" / "positions" / "c" / "0" / "0", 40)
    attrs = zarr.open_group(str(data / "valid.zarr"), mode="r+").attrs
    statistics = dict(attrs["statistics"])
    statistics["num_frames_total"] += 1
    attrs["statistics"] = statistics
    flip(run_dir / "checkpoints" / "best.pt", 1000)
    result = verify(str(data), str(run_dir))
    assert result.returncode == 1, result.stdout + result.stderr
    damaged = [line for line in result.stdout.splitlines() if line.startswith("damaged: ")]
    assert len(damaged) == 3, result.stdout
    assert damaged[0].startswith(f"damaged: {data / 'train.zarr'}: array 'positions', chunk 0 (rows ")
    assert "its CRC-32C checksum does not match" in damaged[0]
    assert damaged[1].startswith(f"damaged: {data / 'valid.zarr'}: statistic 'num_frames_total' is ")
    assert damaged[2].startswith(f"damaged: {run_dir / 'checkpoints' / 'best.pt'}: checkpoint is damaged or "
                                 "unreadable (best.pt: SHA-256 ")
    assert result.stdout.splitlines()[-1].startswith("verify: 3 problem(s) (6 checked")


@pytest.mark.slow
def test_a_checkpoint_that_would_run_code_fails_and_nothing_runs(copy, tmp_path):
    from tests.train.test_safe_checkpoints import plant_payload

    _, run_dir = copy
    marker = tmp_path / "created-by-the-payload"
    plant_payload(run_dir / "checkpoints" / "last.pt", marker)
    result = verify(str(run_dir))
    assert result.returncode == 1 and not marker.exists(), result.stdout + result.stderr
    assert f"damaged: {run_dir / 'checkpoints' / 'last.pt'}: refused: loading it would create 'io.open'" in result.stdout


def test_a_path_that_is_neither_is_refused(tmp_path):
    result = verify(str(tmp_path))
    assert result.returncode == 2 and result.stderr.startswith(f"error: {tmp_path}: neither a store"), result.stderr
