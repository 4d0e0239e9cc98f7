import numpy as np
import pytest
import zarr

from scaleq.store.format import FORMAT_VERSION, StoreAttrs, StoreError, Trajectory
from scaleq.store.reader import open_store
from scaleq.store.writer import StoreWriter, write_store
from tests.support.stores import random_walk_trajectories, tiny_store

ATTRS = StoreAttrs(kind="synthetic", dim=3, dt=0.1)


def test_round_trip_ragged_with_velocities_and_bonds(tmp_path):
    trajs = random_walk_trajectories(4, 9, [5, 7, 3, 6], velocities=True, bonds=True)
    store = write_store(tmp_path / "s.zarr", ATTRS, trajs, rows_per_chunk=4, chunks_per_shard=2)
    assert store.num_trajectories == 4
    for s, traj in enumerate(trajs):
        back = store.read_trajectory(s)
        np.testing.assert_array_equal(back.positions, traj.positions)
        np.testing.assert_array_equal(back.velocities, traj.velocities)
        np.testing.assert_array_equal(back.node_features, traj.node_features)
        np.testing.assert_array_equal(back.edge_index, traj.edge_index)
        np.testing.assert_allclose(back.edge_attr, traj.edge_attr, rtol=1e-6)
    np.testing.assert_array_equal(store.frames(2, [4, 1]), trajs[2].positions[[4, 1]])


def test_statistics_are_computed_while_writing(tmp_path):
    trajs = random_walk_trajectories(2, 6, 4)
    store = write_store(tmp_path / "s.zarr", ATTRS, trajs)
    stats = store.statistics
    disp = np.concatenate([np.diff(t.positions, axis=0).reshape(-1, 3) for t in trajs])
    np.testing.assert_allclose(stats["displacement"]["mean"], disp.mean(0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(stats["displacement"]["std"], disp.std(0), rtol=1e-4)
    assert stats["num_nodes"] == {"min": 4, "max": 4, "mean": 4.0}
    assert stats["num_frames_total"] == 12
    assert store.attrs.bounds is not None and len(store.attrs.bounds) == 3


def test_nan_is_refused_and_nothing_is_left(tmp_path):
    traj = random_walk_trajectories(1, 5, 4)[0]
    bad = traj.positions.copy()
    bad[2, 1, 0] = np.nan
    with pytest.raises(StoreError, match=r"trajectory 1, array 'positions': 1 values are NaN"):
        write_store(tmp_path / "s.zarr", ATTRS, [traj, Trajectory(positions=bad, node_features=traj.node_features)])
    assert list(tmp_path.iterdir()) == []


def test_wrong_shapes_are_named(tmp_path):
    traj = random_walk_trajectories(1, 5, 4)[0]
    with pytest.raises(StoreError, match=r"array 'node_features': expected shape \[4, F\]"):
        write_store(tmp_path / "s.zarr", ATTRS, [Trajectory(positions=traj.positions, node_features=np.zeros((3, 1)))])
    with pytest.raises(StoreError, match=r"array 'positions': expected shape \[T, N, 3\]"):
        write_store(tmp_path / "s.zarr", ATTRS, [Trajectory(positions=traj.positions[..., :2], node_features=traj.node_features)])
    assert list(tmp_path.iterdir()) == []


def test_existing_store_is_kept_unless_overwrite(tmp_path):
    path = tmp_path / "s.zarr"
    tiny_store(path)
    with pytest.raises(StoreError, match="already exists"):
        tiny_store(path)
    # a failed overwrite leaves the old store intact
    with pytest.raises(RuntimeError):
        with StoreWriter(path, ATTRS, overwrite=True) as writer:
            writer.add(random_walk_trajectories(1, 5, 4)[0])
            raise RuntimeError("crash mid-write")
    assert open_store(path).num_trajectories == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]


def test_open_reports_missing_store(tmp_path):
    with pytest.raises(StoreError, match="no store here"):
        open_store(tmp_path / "nope.zarr")


def test_open_reports_wrong_version(tmp_path):
    path = tmp_path / "s.zarr"
    tiny_store(path)
    zarr.open_group(str(path), mode="r+").attrs["version"] = FORMAT_VERSION + 1
    with pytest.raises(StoreError, match="format version 3 is not supported"):
        open_store(path)


def test_open_reports_missing_array_and_wrong_dtype(tmp_path):
    path = tmp_path / "s.zarr"
    tiny_store(path)
    group = zarr.open_group(str(path), mode="r+")
    group.create_array("velocities", shape=(1, 3), dtype="float64")
    with pytest.raises(StoreError, match=r"array 'velocities' has dtype float64, expected float32"):
        open_store(path)
    del group["velocities"]
    del group["node_features"]
    with pytest.raises(StoreError, match=r"array 'node_features' is missing"):
        open_store(path)


def test_open_reports_inconsistent_table(tmp_path):
    path = tmp_path / "s.zarr"
    tiny_store(path)
    group = zarr.open_group(str(path), mode="r+")
    table = group["trajectories"][:]
    table[0, 1] += 1  # claims one more frame than positions holds
    group["trajectories"][:] = table
    with pytest.raises(StoreError, match=r"array 'positions' has shape .* from the 'trajectories' table"):
        open_store(path)


def test_not_a_store(tmp_path):
    (tmp_path / "junk").mkdir()
    with pytest.raises(StoreError, match="junk"):
        open_store(tmp_path / "junk")


def test_leftovers_of_killed_writers_are_removed_live_ones_kept(tmp_path):
    import os
    import subprocess

    finished = subprocess.Popen(["true"])
    finished.wait()  # its pid now names no process
    dead = tmp_path / f"s.zarr.partial-{finished.pid}"
    live = tmp_path / f"s.zarr.partial-{os.getppid()}"
    dead.mkdir()
    live.mkdir()
    tiny_store(tmp_path / "s.zarr")
    assert not dead.exists() and live.exists()
