import csv
from pathlib import Path

import pytest
import ray

from scaleq.config import config_from_dict
from tests.distributed.conftest import tiny_raw

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture
def local_ray(ray_tmpdir):
    from scaleq.launchers.ray import runtime_env

    ray.init(address="local", num_cpus=2, include_dashboard=False, runtime_env=runtime_env(), log_to_driver=False)
    yield
    ray.shutdown()


def epochs_logged(run_dir):
    with open(Path(run_dir) / "metrics.csv") as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


def test_torch_trainer_two_workers_trains_then_resumes_from_its_checkpoint(tmp_path, nbody_small, local_ray):
    from scaleq.launchers.ray import run_with_ray

    first = run_with_ray(config_from_dict(tiny_raw(tmp_path, nbody_small, epochs=1)))
    assert first["done"] == 1 and first["epochs_run"] == 1
    run_dir = Path(first["run_dir"])
    assert (run_dir / "checkpoints" / "last.pt").exists()
    ray_dir = tmp_path / "runs" / "ray" / run_dir.name
    assert any(p.name.startswith("checkpoint") for p in ray_dir.iterdir())

    resumed = run_with_ray(config_from_dict(tiny_raw(tmp_path, nbody_small, epochs=2)), resume=True)
    assert resumed["run_dir"] == first["run_dir"] and resumed["epochs_run"] == 2
    # the second run trained only epoch 2: it started from the reported checkpoint of epoch 1
    assert epochs_logged(run_dir) == [1, 2]


def test_killed_worker_is_restarted_and_the_run_completes(tmp_path, nbody_small, local_ray):
    import os
    import signal
    import threading
    import time

    import psutil

    from scaleq.launchers.ray import run_with_ray

    config = config_from_dict({**tiny_raw(tmp_path, nbody_small, epochs=4), "engine": {"max_failures": 1}})
    storage = tmp_path / "runs" / "ray" / "tiny"
    killed: list[int] = []

    def kill_a_worker_after_the_first_checkpoint():
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not killed:
            if storage.exists() and any(p.name.startswith("checkpoint") for p in storage.iterdir()):
                for proc in psutil.Process().children(recursive=True):
                    try:
                        if "RayTrainWorker" in " ".join(proc.cmdline()):
                            os.kill(proc.pid, signal.SIGKILL)
                            killed.append(proc.pid)
                            return
                    except psutil.Error:
                        continue
            time.sleep(0.05)

    killer = threading.Thread(target=kill_a_worker_after_the_first_checkpoint, daemon=True)
    killer.start()
    metrics = run_with_ray(config)
    killer.join()
    assert killed, "no Ray Train worker was found to kill"
    assert metrics["done"] == 1 and metrics["epochs_run"] == 4
    assert not psutil.pid_exists(killed[0]) or psutil.Process(killed[0]).status() == psutil.STATUS_ZOMBIE


def test_simulated_two_node_cluster_runs_one_worker_per_node(tmp_path, nbody_small, ray_tmpdir):
    from ray.cluster_utils import Cluster

    from scaleq.launchers.ray import run_with_ray, runtime_env

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        ray.init(address=cluster.address, runtime_env=runtime_env(), log_to_driver=False)
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
        # STRICT_SPREAD: one worker per node, or the run cannot be placed at all
        raw = {**tiny_raw(tmp_path, nbody_small, epochs=1), "engine": {"placement_strategy": "STRICT_SPREAD"}}
        metrics = run_with_ray(config_from_dict(raw))
        assert metrics["done"] == 1 and metrics["epochs_run"] == 1
        assert metrics["test_mse"] < metrics["linear_test_mse"] * 10  # a real number came back
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.mark.parametrize("signal_name", ["SIGKILL", "SIGTERM"])
def test_a_worker_killed_mid_epoch_ends_as_an_uninterrupted_run(tmp_path, nbody_small, local_ray, signal_name):
    """Ray Train with max_failures 1: one worker SIGKILLed (a lost worker) or SIGTERMed (a
    scheduler's preemption notice: under Ray the worker's loop runs in a thread, so the signal ends
    the worker) right after the first mid-epoch checkpoint; Ray restarts the group by itself and the
    run ends with bitwise the weights and the metrics of a run nobody stopped."""
    import os
    import signal
    import threading
    import time

    import psutil
    import torch

    from scaleq.launchers.ray import run_with_ray
    from scaleq.train.checkpoint import read_model_state
    from scaleq.train.metrics import read_metrics

    def config(name):
        return config_from_dict({**tiny_raw(tmp_path, nbody_small, name=name, epochs=2, checkpoint_every_steps=1),
                                 "engine": {"max_failures": 1}})

    full = run_with_ray(config("full"))
    storage = tmp_path / "runs" / "ray" / "cut"
    killed: list[int] = []

    def kill_a_worker_after_the_first_checkpoint():
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not killed:
            if storage.exists() and any(p.name.startswith("checkpoint") for p in storage.iterdir()):
                workers = [p for p in psutil.Process().children(recursive=True)
                           if "RayTrainWorker" in " ".join(p.cmdline())]
                if workers:
                    os.kill(workers[-1].pid, getattr(signal, signal_name))
                    killed.append(workers[-1].pid)
                    return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_a_worker_after_the_first_checkpoint, daemon=True)
    killer.start()
    cut = run_with_ray(config("cut"))
    killer.join()
    assert killed, "no Ray Train worker was found to kill"
    assert cut["done"] == 1 and cut["epochs_run"] == 2
    weights = {name: read_model_state(Path(r["run_dir"]) / "checkpoints" / "last.pt") for name, r in
               (("full", full), ("cut", cut))}
    for key, value in weights["full"].items():
        assert torch.equal(weights["cut"][key], value), key
    columns = ("epoch", "train_loss", "val_mse", "test_mse")
    rows = {name: [[row[c] for c in columns] for row in read_metrics(Path(r["run_dir"]) / "metrics.csv")]
            for name, r in (("full", full), ("cut", cut))}
    assert rows["cut"] == rows["full"]
    assert cut["test_mse"] == full["test_mse"]
