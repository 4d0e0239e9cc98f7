"""The CUDA input pipeline: pinned memory and the side-stream prefetch of the next batch. Skips
itself without CUDA (run on a GPU machine: pytest -m gpu tests/train/test_gpu_transfer.py)."""

import math
from pathlib import Path

import pytest
import torch

from scaleq.config import config_from_dict
from scaleq.data.dataset import SampleSpec, ShardedSampler, TrajectoryDataset, make_loader
from scaleq.run import run
from scaleq.train.trainer import device_batches
from tests.support.stores import tiny_nbody_dataset, tiny_store

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def test_prefetched_batches_equal_the_loader_batches(tmp_path):
    dataset = TrajectoryDataset(tiny_store(tmp_path / "s.zarr"), SampleSpec(delta=2))
    loader = make_loader(dataset, 4, ShardedSampler(len(dataset), shuffle=False, seed=0), 0, pin_memory=True)
    expected = list(loader)
    assert expected[0].pos.is_pinned()
    got = list(device_batches(loader, torch.device("cuda")))
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        assert a.pos.is_cuda and torch.equal(a.pos.cpu(), b.pos) and torch.equal(a.batch.cpu(), b.batch)


def test_a_run_on_cuda_trains_and_checkpoints(tmp_path):
    data = tiny_nbody_dataset(tmp_path / "nbody", train=16, valid=8, test=8)
    summary = run(config_from_dict({
        "name": "cuda", "out_dir": str(tmp_path / "runs"), "seed": 0,
        "data": {"path": str(data), "input_frame": 30, "delta": 10, "velocity": "store", "batch_size": 4},
        "model": {"name": "egnn", "hidden": 16, "layers": 2},
        "train": {"epochs": 2, "eval_every": 1, "device": "cuda", "progress": False, "finite_check_every": 3},
    }))
    assert math.isfinite(summary.test_mse) and summary.epochs_run == 2
    saved = torch.load(Path(summary.run_dir) / "checkpoints" / "last.pt", weights_only=False)
    assert saved["extra"]["state"]["step"] == 8 and all(torch.isfinite(p).all() for p in saved["model"].values())
