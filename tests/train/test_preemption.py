"""A scheduler's SIGTERM or SIGUSR1, to the one process, to one rank or to torchrun: every rank
finishes its step, one checkpoint is written, the run exits 75 ("preempted") within the grace
period, and --resume ends bit for bit as the run that was never told to stop."""

from __future__ import annotations

import contextlib
import os
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
from scaleq.train.preemption import EXIT_PREEMPTED
from tests.support.stores import tiny_nbody_dataset

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
COMPARED = ("epoch", "train_loss", "train_mse", "val_mse", "test_mse")
GRACE_S = 30  # what docs/reliability.md promises on these tiny runs: a step, an all-reduce, a checkpoint


@pytest.fixture(scope="module")
def nbody(tmp_path_factory):
    return tiny_nbody_dataset(tmp_path_factory.mktemp("nbody"), train=16, valid=4, test=4)


def config(tmp_path: Path, data: Path, name: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "name": name, "out_dir": str(tmp_path / "runs"), "seed": 0,
        "data": {"path": str(data), "input_frame": 30, "delta": 10, "velocity": "store", "batch_size": 2},
        "model": {"name": "egnn", "hidden": 8, "layers": 1},
        "train": {"epochs": 3, "lr": 3e-3, "eval_every": 1, "patience": 100, "progress": False, "device": "cpu"},
    }))
    return path


def command(cfg: Path, ranks: int, *extra: str, launcher: str = "torchrun") -> list[str]:
    if launcher == "deepspeed":  # the deepspeed launcher's CPU ranks, ZeRO-2 (per-rank optimizer shards)
        return [str(BIN / "deepspeed"), "--num_gpus", str(ranks), "--master_port", str(free_port()),
                "launch/train.py", "--config", str(cfg), "engine.kind=deepspeed", "engine.zero_stage=2", *extra]
    if ranks == 1:
        return [sys.executable, "launch/train.py", "--config", str(cfg), *extra]
    return [str(BIN / "torchrun"), "--nproc_per_node", str(ranks), "--master_port", str(free_port()),
            "launch/train.py", "--config", str(cfg), *extra]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def rank_pids(launcher: int) -> list[int]:
    """torchrun's rank processes (its children that run launch/train.py); the deepspeed launcher's
    (its grandchildren, under deepspeed.launcher.launch), by their ``--local_rank``."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            children.setdefault(int(stat.read_text().rsplit(")", 1)[1].split()[1]), []).append(int(stat.parent.name))
    found = children.get(launcher, [])
    if len(found) == 1:  # deepspeed -> deepspeed.launcher.launch -> ranks
        found = children.get(found[0], [])
    return sorted(found)


def saved_state(last: Path) -> dict:
    """The loop's state in ``last``; a DeepSpeed checkpoint's ``last.pt`` points to a folder whose
    client state holds it."""
    saved = torch.load(last, weights_only=False)
    if "folder" in saved:
        saved = torch.load(last.parent / saved["folder"] / saved["tag"] / "mp_rank_00_model_states.pt",
                           weights_only=False)
    return saved["extra"]["state"]


def same_run(a: Path, b: Path) -> None:
    wa, wb = read_model_state(a / "checkpoints" / "last.pt"), read_model_state(b / "checkpoints" / "last.pt")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    ra, rb = read_metrics(a / "metrics.csv"), read_metrics(b / "metrics.csv")
    assert [[r[c] for c in COMPARED] for r in ra] == [[r[c] for c in COMPARED] for r in rb]


# (ranks, signal, whom: "process" is the lone CLI or torchrun itself, "rank1" one of the launcher's
# ranks, launcher)
CASES = {
    "torch_sigterm": (1, signal.SIGTERM, "process", "torchrun"),
    "torch_sigusr1": (1, signal.SIGUSR1, "process", "torchrun"),
    "ddp_sigusr1_to_one_rank": (2, signal.SIGUSR1, "rank1", "torchrun"),
    "ddp_sigterm_to_torchrun": (2, signal.SIGTERM, "process", "torchrun"),
    "deepspeed_sigterm_to_one_rank": (2, signal.SIGTERM, "rank1", "deepspeed"),
}


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.deepspeed) if "deepspeed" in c else c
                                  for c in CASES])
def test_preempted_run_checkpoints_exits_75_and_resumes_bitwise(case, tmp_path, nbody):
    ranks, sig, whom, launcher = CASES[case]
    full = subprocess.run(command(config(tmp_path, nbody, "full"), ranks, launcher=launcher), cwd=ROOT, env=env(),
                          capture_output=True, text=True, timeout=300)
    assert full.returncode == 0, full.stdout[-3000:] + full.stderr[-3000:]

    cfg = config(tmp_path, nbody, "preempted")
    proc = subprocess.Popen(command(cfg, ranks, launcher=launcher), cwd=ROOT, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    metrics = tmp_path / "runs" / "preempted" / "metrics.csv"
    try:
        while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):  # epoch 1 done
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            time.sleep(0.05)
        target = proc.pid if whom == "process" else rank_pids(proc.pid)[1]
        os.kill(target, sig)
        sent = time.monotonic()
        out, _ = proc.communicate(timeout=120)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
    print(f"{case}: exit {proc.returncode} {took:.1f} s after {sig.name}")
    preempted_lines = [line for line in out.splitlines() if line.startswith("preempted (")]
    assert preempted_lines, out[-3000:]
    if whom == "rank1" and launcher == "deepspeed":  # the deepspeed launcher exits with its first failed rank's code
        assert proc.returncode == EXIT_PREEMPTED, out[-3000:]
    elif whom == "rank1":  # torchrun reports the rank's exit code 75 (and exits 1 itself)
        assert f"exitcode  : {EXIT_PREEMPTED}" in out, out[-3000:]
    elif ranks == 1:
        assert proc.returncode == EXIT_PREEMPTED, out[-3000:]
    else:  # torchrun told itself: it passes SIGTERM to its ranks, waits for them, and exits 1 (its own code)
        assert proc.returncode == 1, out[-3000:]
    assert took < GRACE_S
    assert saved_state(tmp_path / "runs" / "preempted" / "checkpoints" / "last.pt")["epoch"] >= 1  # the stop's, after epoch 1
    assert not (tmp_path / "runs" / "preempted" / "summary.json").exists()

    resumed = subprocess.run(command(cfg, ranks, "--resume", launcher=launcher), cwd=ROOT, env=env(),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    same_run(tmp_path / "runs" / "full", tmp_path / "runs" / "preempted")
