"""Bad inputs and faults through the real CLI (`launch/train.py` in a subprocess), one table row each.

Every row asserts the exit code (2: the input is wrong; 1: the run failed while running), one
`error:` line that names the file, array or key, no traceback, and that the output directory, the
dataset and the runs that were there before are byte-for-byte unchanged (nothing half-made left).
"""

from __future__ import annotations

import fcntl
import os
import re
import resource
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import zarr

from tests.support.stores import tiny_nbody_dataset

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
BASE = ["train.epochs=1", "train.progress=false", "model.hidden=8", "model.layers=1", "data.batch_size=8",
        "data.max_train_samples=8", "data.max_eval_samples=4"]
FILE_SIZE_LIMIT = 16 * 1024  # bytes: the config, metrics and event files fit; a checkpoint does not


@dataclass
class World:
    """One row's sandbox: a copy of the dataset, an output directory holding a finished run."""

    root: Path
    data: Path
    out: Path
    args: list[str] = field(default_factory=list)
    preexec: Callable[[], None] | None = None
    cleanup: list[Callable[[], None]] = field(default_factory=list)


def put_nan(store: Path, trajectory: int, frame: int) -> None:
    """Write NaN into one node of one frame, as a tool other than scaleq's writer could."""
    table = zarr.open_array(str(store / "trajectories"), mode="r")[:]
    offset, _, num_nodes = (int(v) for v in table[trajectory, :3])
    positions = zarr.open_array(str(store / "positions"), mode="r+")
    positions[offset + frame * num_nodes] = np.nan


def garble_shard(store: Path) -> None:
    shard = sorted((store / "positions" / "c").rglob("*"))[-1]
    raw = bytearray(shard.read_bytes())
    raw[10:200] = b"\x13" * 190
    shard.write_bytes(bytes(raw))


def limit_file_size(w: World) -> None:
    def preexec() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))

    w.preexec = preexec


def fill_disk(w: World) -> None:
    """A small tmpfs as out_dir where the test may mount one; else the file-size limit."""
    mount = w.out / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        mount.rmdir()
        limit_file_size(w)
        return
    w.cleanup.append(lambda: subprocess.run(["umount", str(mount)], check=False))
    w.args.append(f"out_dir={mount}")


def truncate_last_checkpoint(w: World) -> None:
    last = w.out / "done" / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    w.args += ["name=done", "--resume"]


def lock_finished_run(w: World) -> None:
    fd = os.open(w.out / "done", os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a live run holds it
    w.cleanup.append(lambda: os.close(fd))
    w.args += ["name=done", "--resume"]


def out_dir_is_a_file(w: World) -> None:
    (w.root / "afile").write_text("not a directory\n")
    w.args.append(f"out_dir={w.root / 'afile'}")


def out_dir_under_a_file(w: World) -> None:
    (w.root / "afile").write_text("not a directory\n")
    w.args.append(f"out_dir={w.root / 'afile' / 'runs'}")


def huge_positions(w: World) -> None:
    """Finite but so large that squared distances overflow: the loss is NaN at the first step."""
    positions = zarr.open_array(str(w.data / "train.zarr" / "positions"), mode="r+")
    positions[:] = positions[:] * np.float32(1e30)


@dataclass
class Case:
    name: str
    prepare: Callable[[World], None] | None
    args: list[str]
    exit_code: int
    message: str  # regular expression the `error:` line must match


CASES = [
    Case("unknown key", None, ["train.lrr=1"], 2, r"unknown key 'train\.lrr'"),
    Case("garbage zarr.json", lambda w: (w.data / "valid.zarr" / "positions" / "zarr.json").write_bytes(b"\xff\xfe\x00"),
         [], 2, r"valid\.zarr: array 'positions' \(positions/zarr\.json\) cannot be read"),
    Case("corrupt shard", lambda w: garble_shard(w.data / "train.zarr"), [], 2,
         r"train\.zarr: array 'positions', chunk \d+ \(rows \d+\.\.\d+: frames .*\) cannot be read \(its CRC-32C "
         r"checksum does not match"),
    Case("model argument out of range", None, ["model.hidden=0"], 2,
         r"model 'egnn' \(model\.hidden=0, .*\) cannot be built: EGNN needs hidden >= 1"),
    Case("mutually exclusive data keys", None, ["data.starts_per_trajectory=2"], 2,
         r"data\.input_frame \(30\) and data\.starts_per_trajectory \(2\) exclude each other"),
    Case("out_dir is a file", out_dir_is_a_file, [], 2, r"out_dir .*afile: is a file, expected a directory"),
    Case("out_dir cannot be created", out_dir_under_a_file, [], 2,
         r"out_dir .*afile/runs: cannot create the run directory .*Not a directory"),
    Case("NaN in the training split", lambda w: put_nan(w.data / "train.zarr", 1, 30), [], 2,
         r"train\.zarr: array 'positions', frame 30 of trajectory 1: 3 values are NaN or infinite"),
    Case("NaN read in a DataLoader worker", lambda w: put_nan(w.data / "train.zarr", 1, 30), ["data.num_workers=1"], 2,
         r"^error: \S*train\.zarr: array 'positions', frame 30 of trajectory 1: 3 values are NaN or infinite"),
    Case("NaN in the validation split", lambda w: put_nan(w.data / "valid.zarr", 2, 40), [], 2,
         r"valid\.zarr: array 'positions', frame 40 of trajectory 2: 3 values are NaN or infinite"),
    Case("NaN loss", huge_positions, [], 1,
         r"training loss became nan at epoch 1, step 1; .*\(no checkpoint was written\)"),
    Case("corrupt checkpoint", truncate_last_checkpoint, [], 2,
         r"done/checkpoints/last\.pt: checkpoint is damaged or unreadable .* --resume-from best"),
    Case("run directory in use", lock_finished_run, [], 2, r"done: another running process is training in this"),
    Case("file-size limit", limit_file_size, [], 1, r"checkpoints/(last|best)\.pt: File too large"),
    Case("full disk", fill_disk, [], 1, r"checkpoints/(last|best)\.pt: (No space left on device|File too large)"),
]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A tiny dataset and a finished run made from it (the run that must stay untouched)."""
    root = tmp_path_factory.mktemp("pristine")
    data = tiny_nbody_dataset(root / "data", train=16, valid=8, test=8)
    done = cli(["--config", "configs/default.yaml", f"data.path={data}", f"out_dir={root / 'runs'}", "name=done", *BASE])
    assert done.returncode == 0, done.stderr
    return root


def cli(args: list[str], preexec: Callable[[], None] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "launch/train.py", *args], cwd=ROOT, capture_output=True, text=True,
                          env=env, preexec_fn=preexec, timeout=300)


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file's bytes and every directory (None) under ``root``."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_line_and_changes_nothing(case: Case, pristine: Path, tmp_path: Path):
    w = World(root=tmp_path, data=tmp_path / "data", out=tmp_path / "runs")
    shutil.copytree(pristine / "data", w.data)
    shutil.copytree(pristine / "runs", w.out)
    try:
        if case.prepare is not None:
            case.prepare(w)
        before = snapshot(tmp_path)
        result = cli(["--config", "configs/default.yaml", f"data.path={w.data}", f"out_dir={w.out}", "name=new",
                      *BASE, *case.args, *w.args], w.preexec)
        after = snapshot(tmp_path)
    finally:
        for undo in w.cleanup:
            undo()
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == case.exit_code, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert len(errors) == 1 and re.search(case.message, errors[0]), result.stderr[-3000:]
    assert after == before, sorted(set(after) ^ set(before)) or "a file changed"


# -- a radius far too large for the data, under an address-space limit -------------------------

DENSE_NODES = 3000  # per graph; two graphs a batch: 2 x 3000 x 2999 ~ 18 M edges within r = 50


@pytest.fixture(scope="module")
def dense_store(tmp_path_factory):
    """Splits of 2, 1 and 1 trajectories of DENSE_NODES particles: a radius of 50 reaches them all."""
    from scaleq.store.format import StoreAttrs
    from scaleq.store.writer import write_store
    from tests.support.stores import random_walk_trajectories

    root = tmp_path_factory.mktemp("dense")
    attrs = StoreAttrs(kind="synthetic", dim=3, dt=0.1, feature_names=["type"])
    for seed, (split, count) in enumerate((("train", 2), ("valid", 1), ("test", 1))):
        write_store(root / f"{split}.zarr", attrs, random_walk_trajectories(count, 5, DENSE_NODES, seed=seed))
    return root


def address_space_limit(margin: int) -> Callable[[], None]:
    """RLIMIT_AS at ``margin`` bytes above what the CLI's imports take (measured in a probe child)."""
    probe = subprocess.run(
        [sys.executable, "-c", "import sys; sys.argv = ['x']; import runpy; "
         "runpy.run_path('launch/train.py', run_name='probe'); "
         "import scaleq.launchers.train_command; "  # what main() imports once the arguments are read
         "print([l for l in open('/proc/self/status') if l.startswith('VmSize:')][0].split()[1])"],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)},
        check=True)
    limit = int(probe.stdout.split()[-1]) * 1024 + margin

    def preexec() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return preexec


@pytest.mark.parametrize("backend", ["torch_cluster", "cell_list"])
def test_a_radius_far_too_large_fails_before_allocating_and_a_cap_bounds_its_memory(dense_store, tmp_path, backend):
    # the CLI's address space grows by ~0.6 GiB after its imports (threads, arenas, data, model); a
    # capped search adds ~0.4 GiB of chunk temporaries
    limit = address_space_limit(1180 * 2**20)
    args = ["--config", "configs/default.yaml", f"data.path={dense_store}", f"out_dir={tmp_path / 'runs'}",
            "data.input_frame=2", "data.delta=2", "data.velocity=backward", "data.batch_size=2",
            "graph.kind=radius", "graph.radius=50", f"graph.backend={backend}", "model.hidden=8", "model.layers=1",
            "train.epochs=1", "train.progress=false"]
    # no effective cap: ~18 M edges, ~1.07 GiB for the graph alone, more than the limit leaves
    refused = cli([*args, "name=uncapped", "graph.max_num_neighbors=10000000"], limit)
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "Traceback" not in refused.stderr and len(errors) == 1, refused.stderr[-3000:]
    assert re.fullmatch(r"error: radius graph: r=50 with max_num_neighbors=10000000 gives 17,994,000 edges for "
                        r"6,000 nodes \(2,999 per node\), about 1\.07 GiB, but cpu has \d\.\d\d GiB free; lower "
                        r"graph\.radius .*", errors[0]), errors[0]
    assert not (tmp_path / "runs" / "uncapped").exists()  # nothing left behind
    # the cap Water-3D-sized runs use: 64 nearest per node, in the same limit, trains to the end
    capped = cli([*args, "name=capped", "graph.max_num_neighbors=64"], limit)
    assert capped.returncode == 0, capped.stderr[-3000:]
    assert "have more than max_num_neighbors=64 neighbours within r=50" in capped.stderr
    assert (tmp_path / "runs" / "capped" / "checkpoints" / "last.pt").is_file()
