"""kill -9 at any moment, under any engine, and resumed until done: the same weights and metrics as
a run that was never interrupted.

Each engine runs the real CLI (torchrun for 2 ranks) on a tiny dataset with a checkpoint after
every optimizer step. Kill moments are drawn from a seeded generator: while a checkpoint is being
written (its temporary file seen), or after a drawn number of checkpoints plus a drawn delay (so
mid-step, mid-write or between the two): twice for one process, once for 2 ranks, to keep the matrix near 3 minutes on 2 cores. Multi-rank runs lose ONE rank
(torchrun then stops the other); then `--resume` until the run ends by itself. Ray Train's case
(a worker killed mid-epoch, restarted by Ray itself) is in tests/distributed/test_ray_cli.py. On the CPU every engine here is
deterministic for a fixed number of ranks, so the final weights are compared bit for bit, and the
metrics.csv losses as written.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from scaleq.distributed.process_group import free_port
from scaleq.train.checkpoint import read_model_state
from scaleq.train.metrics import read_metrics
from tests.support.stores import tiny_nbody_dataset

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
COMPARED = ("epoch", "train_loss", "train_mse", "val_mse", "test_mse", "lr")

# ranks, engine section, where the kills land ('write': while a checkpoint is written; 'running':
# after a drawn number of checkpoints and a drawn delay)
ENGINES = {
    "torch": (1, {}, ["write", "running"]),
    "ddp": (2, {}, ["running"]),
    "deepspeed_zero2": (2, {"kind": "deepspeed", "zero_stage": 2}, ["write"]),  # shards, then the pointer
    "graph_parallel": (2, {"graph_parallel": 2}, ["write"]),
}


@pytest.fixture(scope="module")
def nbody(tmp_path_factory):
    return tiny_nbody_dataset(tmp_path_factory.mktemp("nbody"), train=8, valid=4, test=4)


def write_config(path: Path, data: Path, out: Path, name: str, engine: dict) -> Path:
    path.write_text(yaml.safe_dump({
        "name": name, "out_dir": str(out), "seed": 0,
        "data": {"path": str(data), "input_frame": 30, "delta": 10, "velocity": "store", "batch_size": 2},
        "model": {"name": "egnn", "hidden": 8, "layers": 1},
        "engine": engine,
        "train": {"epochs": 2, "lr": 3e-3, "eval_every": 1, "patience": 100, "progress": False, "device": "cpu",
                  "checkpoint_every_steps": 1},
    }))
    return path


def start(config: Path, ranks: int, *extra: str) -> subprocess.Popen:
    if ranks == 1:
        command = [sys.executable, "launch/train.py"]
    else:
        command = [str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", str(ranks), "--master_port",
                   str(free_port()), "launch/train.py"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([*command, "--config", str(config), *extra], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            children.setdefault(int(stat.read_text().rsplit(")", 1)[1].split()[1]), []).append(int(stat.parent.name))
    found, queue = [], list(children.get(pid, []))
    while queue:
        found.append(queue.pop())
        queue += children.get(found[-1], [])
    return found


def trainers(proc: subprocess.Popen, ranks: int) -> list[int]:
    """The processes that train: the CLI itself, or torchrun's rank processes."""
    if ranks == 1:
        return [proc.pid]
    ranks_found = []
    for pid in descendants(proc.pid):
        with contextlib.suppress(OSError):
            if "launch/train.py" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                ranks_found.append(pid)
    return sorted(ranks_found)


def kill_once(proc: subprocess.Popen, ranks: int, checkpoints: Path, moment: tuple[str, int, float],
              rng: random.Random) -> str:
    """Wait for ``moment`` and SIGKILL one training process; what was hit ('write', 'running', or
    'finished' if the run ended first)."""
    kind, after, delay = moment
    seen, last_mtime = 0, None
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline:
        names = [p.name for p in checkpoints.iterdir()] if checkpoints.is_dir() else []
        writing = any(".tmp-" in n for n in names)
        with contextlib.suppress(OSError):
            mtime = (checkpoints / "last.pt").stat().st_mtime_ns
            if mtime != last_mtime:
                seen, last_mtime = seen + 1, mtime
        if seen >= after and (kind == "running" or writing):
            if kind == "running":
                time.sleep(delay)
            targets = trainers(proc, ranks)
            if targets:
                os.kill(rng.choice(targets), signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=120)
                return kind
        time.sleep(0.0005 if kind == "write" else 0.005)
    proc.wait()
    return "finished"


def end_or_kill(proc: subprocess.Popen) -> int:
    try:
        proc.wait(timeout=240)
    finally:
        for pid in [*descendants(proc.pid), proc.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return proc.returncode


@pytest.mark.parametrize("engine", list(ENGINES))
def test_killed_and_resumed_runs_end_as_the_uninterrupted_one(engine, nbody, tmp_path):
    ranks, engine_section, kinds = ENGINES[engine]
    out = tmp_path / "runs"
    full_config = write_config(tmp_path / "full.yaml", nbody, out, "full", engine_section)
    cut_config = write_config(tmp_path / "cut.yaml", nbody, out, "cut", engine_section)
    full = start(full_config, ranks)
    assert end_or_kill(full) == 0, full.stderr.read()[-3000:]

    rng = random.Random(f"kill-matrix-{engine}")  # seeded: the same moments every time
    moments = [(kind, rng.randint(1, 2), rng.uniform(0.0, 0.05)) for kind in kinds]
    checkpoints = out / "cut" / "checkpoints"
    hits, launches = [], 0
    for moment in moments:
        proc = start(cut_config, ranks, *(["--resume"] if launches else []))
        launches += 1
        hits.append(kill_once(proc, ranks, checkpoints, moment, rng))
        end_or_kill(proc)
    print(f"{engine}: killed at {hits}")
    assert any(hit != "finished" for hit in hits), hits
    final = start(cut_config, ranks, "--resume")  # the last resume runs to the end by itself
    assert end_or_kill(final) == 0, final.stderr.read()[-3000:]

    weights = {name: read_model_state(out / name / "checkpoints" / "last.pt") for name in ("full", "cut")}
    assert weights["cut"].keys() == weights["full"].keys()
    for key, value in weights["full"].items():
        assert torch.equal(weights["cut"][key], value), f"{engine}: {key} differs after kills at {hits}"
    rows = {name: read_metrics(out / name / "metrics.csv") for name in ("full", "cut")}
    assert [[r[c] for c in COMPARED] for r in rows["cut"]] == [[r[c] for c in COMPARED] for r in rows["full"]], hits
    assert yaml.safe_load((out / "cut" / "summary.json").read_text())["test_mse"] == \
        yaml.safe_load((out / "full" / "summary.json").read_text())["test_mse"]
