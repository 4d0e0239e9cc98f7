"""Every stored chunk carries a CRC-32C (format version 2): seeded random single-bit flips anywhere
in a store's chunk files are all detected when read, each as one line naming the store, the array
and the chunk (which frames of which trajectory). Version 1 stores (no checksums) still open and
train, with one warning naming the command that adds them; that command makes them version 2."""

from __future__ import annotations

import random
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from scaleq.store.format import FORMAT_VERSION, StoreError, StoreWarning
from scaleq.store.reader import open_store
from scaleq.store.writer import write_store
from tests.support.stores import random_walk_trajectories

FLIPS = 300


def ragged_store(path: Path, checksums: bool = True):
    """3 trajectories of 5, 7 and 4 nodes over 12 frames; one frame-sized chunk per shard file, so
    that a flipped file is one chunk whose frames the test knows."""
    from scaleq.store.format import StoreAttrs

    trajectories = random_walk_trajectories(num_trajectories=3, num_frames=12, num_nodes=[5, 7, 4])
    attrs = StoreAttrs(kind="synthetic", dim=3, dt=0.1, feature_names=["type"])
    return write_store(path, attrs, trajectories, rows_per_chunk=10, chunks_per_shard=1, checksums=checksums)


def read_everything(path: Path) -> None:
    store = open_store(path)
    for s in range(store.num_trajectories):
        store.read_trajectory(s)


def chunk_files(path: Path) -> list[Path]:
    return sorted(p for p in path.glob("*/c/**/*") if p.is_file())


def test_every_single_bit_flip_in_a_chunk_is_detected_in_one_line(tmp_path):
    store = ragged_store(tmp_path / "s.zarr")
    assert store.version == FORMAT_VERSION == 2 and store.checksums
    files = chunk_files(store.path)
    rng = random.Random(28)
    detected, lines = 0, []
    for _ in range(FLIPS):
        file = rng.choice(files)
        original = file.read_bytes()
        bit = rng.randrange(len(original) * 8)
        damaged = bytearray(original)
        damaged[bit // 8] ^= 1 << (bit % 8)
        file.write_bytes(bytes(damaged))
        try:
            read_everything(store.path)
        except StoreError as err:
            detected += 1
            lines.append(str(err))
            array = file.relative_to(store.path).parts[0]
            assert str(err).startswith(f"{store.path}: array '{array}', chunk"), str(err)
        file.write_bytes(original)
    assert detected == FLIPS, f"{FLIPS - detected} of {FLIPS} flips read back as data"
    assert all("\n" not in line for line in lines)
    read_everything(store.path)  # restored: whole again


def test_the_error_names_the_frames_and_trajectory_of_the_damaged_chunk(tmp_path):
    store = ragged_store(tmp_path / "s.zarr")
    # positions rows: trajectory 0 is rows 0..59 (12 frames x 5 nodes), trajectory 1 rows 60..143
    # (7 nodes); chunk 7 is rows 70..79: frames 1..2 of trajectory 1
    file = store.path / "positions" / "c" / "7" / "0"
    damaged = bytearray(file.read_bytes())
    damaged[3] ^= 0x10
    file.write_bytes(bytes(damaged))
    with pytest.raises(StoreError) as caught:
        read_everything(store.path)
    assert str(caught.value) == (
        f"{store.path}: array 'positions', chunk 7 (rows 70..79: frames 1..2 of trajectory 1) cannot be read "
        "(its CRC-32C checksum does not match: the stored bytes changed since they were written); the store is "
        "damaged: re-create it with data_prep/*.py")


def test_an_old_store_opens_with_one_warning_and_gets_its_checksums_added(tmp_path):
    from scaleq.verify import main

    old = ragged_store(tmp_path / "old.zarr", checksums=False)
    expected = [open_store(old.path).read_trajectory(s).positions for s in range(3)]
    with pytest.warns(StoreWarning) as caught:
        store = open_store(old.path)
    assert len(caught) == 1 and store.version == 1 and not store.checksums
    assert str(caught[0].message) == (
        f"{old.path}: store format version 1 carries no chunk checksums, so damaged data cannot be detected; add "
        f"them with: python -m scaleq.verify --add-checksums {old.path}")
    assert main(["--add-checksums", str(old.path)]) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning any more
        store = open_store(old.path)
    assert store.version == 2 and store.checksums
    assert all(np.array_equal(store.read_trajectory(s).positions, expected[s]) for s in range(3))
    assert not list(tmp_path.glob("old.zarr.*"))  # no temporary left beside it
    file = old.path / "positions" / "c" / "0" / "0"
    file.write_bytes(bytes([file.read_bytes()[0] ^ 1]) + file.read_bytes()[1:])
    with pytest.raises(StoreError, match=re.escape("array 'positions', chunk 0 (rows 0..9: frames 0..1 of "
                                                   "trajectory 0) cannot be read (its CRC-32C")):
        read_everything(old.path)


@pytest.mark.slow
def test_an_old_dataset_still_trains_with_its_warning(tmp_path):
    from scaleq.run import run
    from tests.support.stores import tiny_nbody_dataset
    from tests.train.test_reliability import tiny_config

    new = tiny_nbody_dataset(tmp_path / "new", train=8, valid=4, test=4)
    old = tmp_path / "old"
    for split in ("train", "valid", "test"):
        store = open_store(new / f"{split}.zarr")
        write_store(old / f"{split}.zarr", store.attrs,
                    [store.read_trajectory(s) for s in range(store.num_trajectories)], checksums=False)
    for leftover in new.iterdir():  # the splits file (and anything else) as the dataset had them
        if not leftover.name.endswith(".zarr"):
            (shutil.copytree if leftover.is_dir() else shutil.copy)(leftover, old / leftover.name)
    with pytest.warns(StoreWarning, match=r"carries no chunk checksums.*--add-checksums") as caught:
        summary = run(tiny_config(tmp_path, old, epochs=1))
    assert np.isfinite(summary.test_mse)
    assert {str(w.message).split(":")[0] for w in caught if issubclass(w.category, StoreWarning)} >= {
        str(old / "train.zarr")}
