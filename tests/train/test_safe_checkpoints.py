"""Checkpoints load as data, never as code, and a damaged one never loads silently.

A checkpoint carrying a pickle payload (a ``__reduce__`` that would create a file) is refused by
``launch/train.py --resume`` and ``--resume-from``, ``launch/rollout.py --run`` and ``load_run``,
with one line naming the file and what it wanted to create, exit 2, and the file is never
created. Seeded random single-bit flips in a checkpoint are all caught by its SHA-256 digest, one
line each; ``--resume-from best`` is the way out of a damaged ``last.pt``."""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scaleq.digests import DigestError, digest_path, record_digest, write_with_digest
from scaleq.eval.loading import load_run
from scaleq.safe_load import UnsafeFileError, safe_load
from scaleq.train.checkpoint import CheckpointError, checkpoint_problem, read_model_state
from scaleq.train.metrics import read_metrics
from tests.support.stores import tiny_nbody_dataset
from tests.test_cli_train import BASE, ROOT, cli

FLIPS = 200


class Payload:
    """What an attacker hides in a checkpoint: unpickling it (full pickle) creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def plant_payload(checkpoint: Path, marker: Path) -> None:
    """Rewrite ``checkpoint`` (a real one) with a payload beside its state, and a digest that
    matches (the attacker rewrites that too), so that only the safe unpickler stands in the way."""
    state = torch.load(checkpoint, weights_only=False)  # our own file, written by this test's run
    state["extra"]["note"] = Payload(marker)
    torch.save(state, checkpoint)
    record_digest(checkpoint)


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("safe")
    data = tiny_nbody_dataset(root / "data", train=16, valid=8, test=8)
    done = cli(["--config", "configs/default.yaml", f"data.path={data}", f"out_dir={root / 'runs'}", "name=done",
                *BASE, "train.epochs=2"])
    assert done.returncode == 0, done.stderr[-3000:]
    return root


@pytest.fixture
def world(finished, tmp_path):
    shutil.copytree(finished, tmp_path / "w")
    return tmp_path / "w"


def test_checkpoints_are_written_with_their_digest_and_load_as_data(finished):
    checkpoints = finished / "runs" / "done" / "checkpoints"
    for name in ("last.pt", "best.pt"):
        line = digest_path(checkpoints / name).read_text()
        assert line.endswith(f"  {name}\n") and len(line.split()[0]) == 64  # sha256sum's format
        assert checkpoint_problem(checkpoints / name) is None
        state = safe_load(checkpoints / name)  # nothing but tensors and plain containers
        assert isinstance(state["extra"]["rng"]["numpy"][1], torch.Tensor)
    check = subprocess.run(["sha256sum", "-c", "last.pt.sha256"], cwd=checkpoints, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.slow
@pytest.mark.parametrize("how", ["--resume", "--resume-from"])
def test_a_payload_checkpoint_is_refused_by_resume_and_nothing_runs(world, how):
    checkpoints = world / "runs" / "done" / "checkpoints"
    marker = world / "created-by-the-payload"
    target = checkpoints / "last.pt"
    args = ["--resume"]
    if how == "--resume-from":  # a checkpoint someone handed over, outside the run directory
        target = world / "shared.pt"
        shutil.copy(checkpoints / "best.pt", target)
        args = ["--resume-from", str(target)]
    plant_payload(target, marker)
    result = cli([f"out_dir={world / 'runs'}", "name=done", *args, "train.epochs=3"])
    errors = error_lines(result)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and len(errors) == 1, result.stderr[-3000:]
    assert errors[0] == (f"error: {target}: refused: loading it would create 'io.open', which is not checkpoint "
                         "data (tensors, numbers, strings, plain containers); nothing from the file was run")
    assert not marker.exists()
    assert [r["epoch"] for r in read_metrics(world / "runs" / "done" / "metrics.csv")] == ["1", "2"]


@pytest.mark.slow
def test_a_payload_checkpoint_is_refused_by_rollout_and_load_run(world):
    run_dir = world / "runs" / "done"
    marker = world / "created-by-the-payload"
    plant_payload(run_dir / "checkpoints" / "best.pt", marker)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "launch/rollout.py", "--run", str(run_dir), "--animation", "none"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    errors = error_lines(result)
    assert result.returncode == 2 and len(errors) == 1, result.stderr[-3000:]
    assert "best.pt: refused: loading it would create 'io.open'" in errors[0]
    with pytest.raises(CheckpointError, match=r"best\.pt: refused: loading it would create 'io\.open'"):
        load_run(run_dir)
    assert not marker.exists()
    assert not (run_dir / "rollout_test").exists()


def test_the_safe_loader_names_any_global_it_refuses(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "x": Payload(tmp_path / "marker")}, path)
    with pytest.raises(UnsafeFileError, match=r"evil\.pt: refused: loading it would create 'io\.open'"):
        safe_load(path)
    with pytest.raises(CheckpointError, match="refused"):
        read_model_state(path)  # no digest beside it: the safe unpickler still refuses
    assert not (tmp_path / "marker").exists()


def flip_bits(path: Path, flips: int, seed: int):
    """Yield once per seeded single-bit flip of ``path``, with the file flipped; restored after."""
    original = path.read_bytes()
    rng = random.Random(seed)
    for _ in range(flips):
        bit = rng.randrange(len(original) * 8)
        damaged = bytearray(original)
        damaged[bit // 8] ^= 1 << (bit % 8)
        path.write_bytes(bytes(damaged))
        yield bit
    path.write_bytes(original)


def test_every_single_bit_flip_in_a_checkpoint_is_detected_in_one_line(finished, tmp_path):
    path = tmp_path / "best.pt"
    shutil.copy(finished / "runs" / "done" / "checkpoints" / "best.pt", path)
    record_digest(path)
    lines = []
    for bit in flip_bits(path, FLIPS, seed=28):
        problem = checkpoint_problem(path)
        assert problem is not None, f"bit {bit} flipped and not detected"
        lines.append(problem)
        with pytest.raises(CheckpointError) as caught:
            read_model_state(path)
        assert "\n" not in str(caught.value)
    assert len(lines) == FLIPS and all("\n" not in line and line.startswith(f"{path}: ") for line in lines)
    digest_lines = [line for line in lines if re.match(
        rf"{re.escape(str(path))}: checkpoint is damaged or unreadable \(best\.pt: SHA-256 \w+\.\.\. does not match the "
        r"digest recorded in best\.pt\.sha256 .*; resume from another with --resume-from best", line)]
    assert len(digest_lines) == FLIPS  # the digest is checked first: every flip reads as that
    assert checkpoint_problem(path) is None  # restored: whole again


def test_a_crash_between_the_digest_and_the_rename_leaves_a_checkpoint_that_verifies(tmp_path, monkeypatch):
    from scaleq import digests

    path = tmp_path / "last.pt"
    write_with_digest(path, lambda f: f.write(b"old checkpoint"))

    class Crash(BaseException):
        pass

    record, written = digests.atomic_write_text, []

    def record_then_crash(target, text):  # step 2 done, step 3 (the rename) never happens
        record(target, text)
        written.append(text)
        raise Crash

    monkeypatch.setattr(digests, "atomic_write_text", record_then_crash)
    with pytest.raises(Crash):
        write_with_digest(path, lambda f: f.write(b"new checkpoint"))
    monkeypatch.undo()
    assert len(written) == 1 and len(written[0].splitlines()) == 2  # the new digest and the current one
    assert path.read_bytes() == b"old checkpoint" and digests.verify(path)
    write_with_digest(path, lambda f: f.write(b"newer"))
    assert digests.verify(path) and len(digest_path(path).read_text().splitlines()) == 1
    path.write_bytes(b"newes")
    with pytest.raises(DigestError, match=r"last\.pt: SHA-256 .* does not match"):
        digests.verify(path)


@pytest.mark.slow
def test_a_damaged_last_is_one_line_and_best_resumes(world):
    last = world / "runs" / "done" / "checkpoints" / "last.pt"
    for bit in flip_bits(last, 1, seed=3):
        result = cli([f"out_dir={world / 'runs'}", "name=done", "--resume", "train.epochs=3"])
        errors = error_lines(result)
        assert result.returncode == 2 and len(errors) == 1, (bit, result.stderr[-3000:])
        assert re.search(r"last\.pt: checkpoint is damaged or unreadable \(last\.pt: SHA-256 .*--resume-from best",
                         errors[0]), errors[0]
    last.write_bytes(b"\0" * 64)  # damaged for good
    resumed = cli([f"out_dir={world / 'runs'}", "name=done", "--resume-from", "best", "train.epochs=3"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [r["epoch"] for r in read_metrics(world / "runs" / "done" / "metrics.csv")][-1] == "3"
