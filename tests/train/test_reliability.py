"""Failures lose nothing: the NaN guard, resumed loss sums, damaged checkpoints, run-directory
ownership, temporaries of killed writers, and the loss parts in metrics.csv and TensorBoard."""

import contextlib
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
import zarr

from scaleq.config import config_from_dict
from scaleq.distributed.process_group import free_port
from scaleq.run import run
from scaleq.store.format import StoreError
from scaleq.train.checkpoint import CheckpointError
from scaleq.train.metrics import read_metrics
from scaleq.train.run_dir import RunDirError, claim_run_dir
from scaleq.train.trainer import Trainer
from tests.support.stores import tiny_nbody_dataset

ROOT = Path(__file__).resolve().parents[2]
TRAIN = 16  # training samples (one per trajectory: input frame 30)
BATCH = 4


def tiny_config(tmp_path, data_path, model=None, loss=None, **train):
    return config_from_dict({
        "name": "tiny",
        "out_dir": str(tmp_path / "runs"),
        "seed": 0,
        "data": {"path": str(data_path), "input_frame": 30, "delta": 10, "velocity": "store", "batch_size": BATCH},
        "model": model or {"name": "egnn", "hidden": 8, "layers": 1},
        "loss": loss or {},
        "train": {"epochs": 2, "lr": 3e-3, "eval_every": 1, "patience": 100, "progress": False, **train},
    })


@pytest.fixture(scope="module")
def nbody(tmp_path_factory):
    return tiny_nbody_dataset(tmp_path_factory.mktemp("nbody"), train=TRAIN, valid=8, test=8)


def sample_at_step(step: int, seed: int = 0) -> int:
    """The first training sample of 1-based ``step`` in epoch 1 (the sampler's seeded order)."""
    order = torch.randperm(TRAIN, generator=torch.Generator().manual_seed(seed))
    return int(order[(step - 1) * BATCH])


def blow_up_trajectory(data: Path, trajectory: int) -> None:
    """Finite positions so large that the loss overflows: NaN/inf exactly when this sample is trained on."""
    table = zarr.open_array(str(data / "train.zarr" / "trajectories"), mode="r")[:]
    offset, frames, nodes = (int(v) for v in table[trajectory, :3])
    positions = zarr.open_array(str(data / "train.zarr" / "positions"), mode="r+")
    positions[offset : offset + frames * nodes] = positions[offset : offset + frames * nodes] * np.float32(1e30)


def checkpoint_state(path: Path) -> dict:
    return torch.load(path, weights_only=False)


@pytest.mark.slow
@pytest.mark.parametrize("checkpoint_every_steps, check_every, where", [(1, 100, "step 3"), (0, 2, "one of steps 3..4")])
def test_nan_loss_stops_the_run_and_is_never_checkpointed(tmp_path, nbody, checkpoint_every_steps, check_every, where):
    data = tmp_path / "data"
    shutil.copytree(nbody, data)
    blow_up_trajectory(data, sample_at_step(3))
    config = tiny_config(tmp_path, data, checkpoint_every_steps=checkpoint_every_steps, finite_check_every=check_every)
    with pytest.raises(FloatingPointError, match=rf"training loss became (nan|inf) at epoch 1, {where};") as caught:
        run(config)
    run_dir = tmp_path / "runs" / "tiny"
    if checkpoint_every_steps:  # the mid-epoch checkpoints before step 3 stay; none after it
        assert "the last good checkpoint is" in str(caught.value)
        saved = checkpoint_state(run_dir / "checkpoints" / "last.pt")
        assert saved["extra"]["state"]["step"] == 2
        assert all(torch.isfinite(p).all() for p in saved["model"].values())
        assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["last.pt", "last.pt.sha256"]
    else:  # read every 2 steps: found at step 4; nothing saved, nothing left
        assert "(no checkpoint was written)" in str(caught.value)
        assert not run_dir.exists()


@pytest.mark.slow
def test_resumed_epoch_logs_the_train_loss_of_an_uninterrupted_run(tmp_path, nbody, monkeypatch):
    full = run(tiny_config(tmp_path / "full", nbody, checkpoint_every_steps=1))

    class Killed(BaseException):
        pass

    save = Trainer.save

    def save_then_die(self, name):
        save(self, name)
        if self.state.step == 6:  # mid-epoch 2 (4 steps per epoch), right after last.pt
            raise Killed

    monkeypatch.setattr(Trainer, "save", save_then_die)
    with pytest.raises(Killed):
        run(tiny_config(tmp_path / "cut", nbody, checkpoint_every_steps=1))
    monkeypatch.setattr(Trainer, "save", save)
    resumed = run(tiny_config(tmp_path / "cut", nbody, checkpoint_every_steps=1), resume=True)

    rows = {name: read_metrics(Path(s.run_dir) / "metrics.csv") for name, s in (("full", full), ("cut", resumed))}
    assert [r["epoch"] for r in rows["cut"]] == ["1", "2"]
    for column in ("train_loss", "train_mse", "val_mse"):
        assert [float(r[column]) for r in rows["cut"]] == pytest.approx([float(r[column]) for r in rows["full"]],
                                                                        rel=1e-5), column


@pytest.mark.slow
def test_damaged_checkpoint_is_named_and_best_is_the_explicit_way_out(tmp_path, nbody):
    first = run(tiny_config(tmp_path, nbody, epochs=3, eval_every=2))
    run_dir = Path(first.run_dir)
    last = run_dir / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:2000])  # a checkpoint cut short
    with pytest.raises(CheckpointError, match=r"last\.pt: checkpoint is damaged .*--resume-from best"):
        run(tiny_config(tmp_path, nbody, epochs=5, eval_every=2), resume=True)
    best_epoch = checkpoint_state(run_dir / "checkpoints" / "best.pt")["extra"]["state"]["best_epoch"]
    resumed = run(tiny_config(tmp_path, nbody, epochs=5, eval_every=2), resume_from="best")
    assert resumed.run_dir == first.run_dir and resumed.epochs_run == 5
    rows = read_metrics(run_dir / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5]  # the epochs after best were redone, once each
    assert all(r["train_loss"] != "" for r in rows) and best_epoch in (1, 2)
    with pytest.raises(CheckpointError, match="nowhere.pt: no such checkpoint"):
        run(tiny_config(tmp_path, nbody), resume_from=str(tmp_path / "nowhere.pt"))


def _claim(out_dir, barrier, queue):
    barrier.wait()
    claim = claim_run_dir(out_dir, "same", resume=False)
    queue.put(str(claim.path))
    barrier.wait()  # hold the claim until every process has one


def test_runs_started_together_get_directories_of_their_own(tmp_path):
    context = multiprocessing.get_context("fork")
    barrier, queue = context.Barrier(4), context.Queue()
    workers = [context.Process(target=_claim, args=(tmp_path / "runs", barrier, queue)) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    paths = {queue.get(timeout=5) for _ in workers}
    assert len(paths) == 4 and str(tmp_path / "runs" / "same") in paths
    assert all(worker.exitcode == 0 for worker in workers)

    held = claim_run_dir(tmp_path / "runs", "same", resume=True)  # a live run of runs/same
    try:
        with pytest.raises(RunDirError, match="another running process is training in this run directory"):
            claim_run_dir(tmp_path / "runs", "same", resume=True)
    finally:
        held.release()
    claim_run_dir(tmp_path / "runs", "same", resume=True).release()  # free again once released


@pytest.mark.slow
def test_temporaries_of_killed_writers_are_removed_on_the_next_start(tmp_path, nbody):
    first = run(tiny_config(tmp_path, nbody, epochs=1))
    run_dir = Path(first.run_dir)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    leftovers = [run_dir / "checkpoints" / f".last.pt.tmp-{dead.pid}", run_dir / f".config.yaml.tmp-{dead.pid}",
                 run_dir / ".config.yaml.tmp"]  # the last as earlier versions named it
    for path in leftovers:
        path.write_bytes(b"")  # what a kill -9 during a write leaves
    run(tiny_config(tmp_path, nbody, epochs=2), resume=True)
    assert not any(path.exists() for path in leftovers)


@pytest.mark.slow
def test_loss_parts_are_logged_separately(tmp_path, nbody):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    weight = 0.5
    summary = run(tiny_config(tmp_path, nbody, model={"name": "fastegnn", "hidden": 8, "layers": 1, "virtual_nodes": 2},
                              loss={"mmd_weight": weight, "mmd_sigma": 1.5}, epochs=1))
    (row,) = read_metrics(Path(summary.run_dir) / "metrics.csv")
    assert float(row["train_mmd"]) != 0 and row["train_connectivity"] == ""
    assert float(row["train_loss"]) == pytest.approx(float(row["train_mse"]) + weight * float(row["train_mmd"]), rel=1e-6)
    events = EventAccumulator(str(Path(summary.run_dir) / "tensorboard"))
    events.Reload()
    assert {"train_loss", "train_mse", "train_mmd"} <= set(events.Tags()["scalars"])


def test_nan_in_a_stored_frame_names_trajectory_and_frame(tmp_path, nbody):
    from scaleq.data.dataset import SampleSpec, TrajectoryDataset

    data = tmp_path / "data"
    shutil.copytree(nbody, data)
    table = zarr.open_array(str(data / "valid.zarr" / "trajectories"), mode="r")[:]
    offset, _, nodes = (int(v) for v in table[5, :3])
    zarr.open_array(str(data / "valid.zarr" / "positions"), mode="r+")[offset + 40 * nodes + 2, 1] = np.inf
    dataset = TrajectoryDataset(data / "valid.zarr", SampleSpec(delta=10, input_frame=30, velocity="store"))
    assert torch.isfinite(dataset[4].pos).all()
    with pytest.raises(StoreError, match=r"valid\.zarr: array 'positions', frame 40 of trajectory 5: 1 values"):
        dataset[5]


def _torchrun(config_path: Path, *extra: str, wait: bool = True):
    command = [str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", "2", "--master_port",
               str(free_port()), "launch/train.py", "--config", str(config_path), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    if wait:
        return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (torchrun starts each rank in a session of its own)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, queue = [], [pid]
    while queue:
        tree.append(queue.pop())
        queue += parents.get(tree[-1], [])
    return tree


def _kill_tree(pid: int) -> None:
    """SIGKILL the agent and both ranks at once, as a lost machine would."""
    for member in _process_tree(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(member, signal.SIGKILL)


@pytest.mark.slow
def test_two_ranks_killed_mid_epoch_log_the_train_loss_of_an_uninterrupted_run(tmp_path, nbody):
    raw = tiny_config(tmp_path, nbody, epochs=3, checkpoint_every_steps=1, device="cpu").to_dict()
    raw["data"]["batch_size"] = 2  # 16 samples, 2 ranks: 4 steps per epoch
    configs = {}
    for name in ("full", "killed"):
        configs[name] = tmp_path / f"{name}.yaml"
        configs[name].write_text(yaml.safe_dump({**raw, "name": name}))
    full = _torchrun(configs["full"])
    assert full.returncode == 0, full.stderr[-3000:]

    last = tmp_path / "runs" / "killed" / "checkpoints" / "last.pt"
    proc = _torchrun(configs["killed"], wait=False)
    try:
        while proc.poll() is None:
            if last.exists():
                state = checkpoint_state(last)["extra"]["state"]
                if state["epoch"] >= 1 and state["batch_in_epoch"] > 0:
                    _kill_tree(proc.pid)
                    break
            time.sleep(0.01)
    finally:
        _kill_tree(proc.pid)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed mid-epoch"
    resumed = _torchrun(configs["killed"], "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    rows = {name: read_metrics(tmp_path / "runs" / name / "metrics.csv") for name in ("full", "killed")}
    assert [r["epoch"] for r in rows["killed"]] == ["1", "2", "3"]
    for column in ("train_loss", "train_mse", "val_mse"):
        assert [float(r[column]) for r in rows["killed"]] == pytest.approx(
            [float(r[column]) for r in rows["full"]], rel=1e-5), column
