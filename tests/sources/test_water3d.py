import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import zarr

from scaleq.sources.tfrecord import TFRecordError, frame_record, write_records
from scaleq.sources.water3d import convert_water3d
from scaleq.sources.water3d_writer import (
    encode_sequence_example,
    random_raw_trajectories,
    water3d_metadata,
    write_water3d_source,
)
from scaleq.store.format import StoreError
from scaleq.store.reader import open_store

STEPS = 6


def _source(root, dim=3, context=0, nodes=(7, 4, 9, 5)):
    trajs = random_raw_trajectories(len(nodes), STEPS, list(nodes), dim=dim, seed=dim, context=context)
    splits = {"train": trajs[:2], "valid": trajs[2:3], "test": trajs[3:]}
    write_water3d_source(root, splits, water3d_metadata(dim=dim, steps=STEPS, context=context))
    return splits


def _cli():
    spec = importlib.util.spec_from_file_location("water3d_cli", Path(__file__).parents[2] / "data_prep" / "water3d.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_round_trip_is_bit_for_bit(tmp_path):
    splits = _source(tmp_path / "src")
    paths = convert_water3d(tmp_path / "src", tmp_path / "out", rows_per_chunk=5, chunks_per_shard=2)
    for split, trajs in splits.items():
        store = open_store(paths[split])
        assert store.num_trajectories == len(trajs)
        for s, raw in enumerate(trajs):
            back = store.read_trajectory(s)
            assert back.positions.dtype == np.float32
            np.testing.assert_array_equal(back.positions.view(np.uint32), raw.positions.view(np.uint32))
            np.testing.assert_array_equal(back.node_features[:, 0], raw.particle_type)
        assert store.attrs.extra["keys"] == [t.key for t in trajs]
        attrs = store.attrs
        assert (attrs.kind, attrs.dim, attrs.dt, attrs.default_radius) == ("water3d", 3, 0.005, 0.035)
        assert attrs.bounds == [[0.1, 0.9]] * 3 and attrs.feature_names == ["particle_type"]
        assert attrs.extra["metadata"]["vel_std"] == [0.001] * 3
        assert attrs.extra["metadata"]["acc_std"] == [0.0001] * 3
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["test.zarr", "train.zarr", "valid.zarr"]


def test_statistics_of_converted_data(tmp_path):
    splits = _source(tmp_path / "src")
    store = open_store(convert_water3d(tmp_path / "src", tmp_path / "out")["train"])
    disp = np.concatenate([np.diff(t.positions.astype(np.float64), axis=0).reshape(-1, 3) for t in splits["train"]])
    acc = np.concatenate([np.diff(t.positions.astype(np.float64), 2, axis=0).reshape(-1, 3) for t in splits["train"]])
    stats = store.statistics
    np.testing.assert_allclose(stats["displacement"]["mean"], disp.mean(0), rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(stats["displacement"]["std"], disp.std(0), rtol=1e-5)
    np.testing.assert_allclose(stats["acceleration"]["std"], acc.std(0), rtol=1e-3)
    assert stats["num_nodes"] == {"min": 4, "max": 7, "mean": 5.5}
    assert stats["num_frames_total"] == 2 * (STEPS + 1)
    assert stats["node_features_max_abs"] == [float(max(t.particle_type.max() for t in splits["train"]))]


def test_two_dimensional_set_with_step_context(tmp_path):
    splits = _source(tmp_path / "src", dim=2, context=3)
    store = open_store(convert_water3d(tmp_path / "src", tmp_path / "out")["valid"])
    raw = splits["valid"][0]
    assert store.attrs.dim == 2
    np.testing.assert_array_equal(store.read_trajectory(0).positions, raw.positions)
    np.testing.assert_array_equal(np.asarray(store.attrs.extra["step_context"][0], np.float32), raw.step_context)


def _expect_failure(tmp_path, match, error=TFRecordError):
    with pytest.raises(error, match=match):
        convert_water3d(tmp_path / "src", tmp_path / "out")
    assert not (tmp_path / "out").exists(), "a failed conversion must leave nothing behind"


def test_truncated_file(tmp_path):
    _source(tmp_path / "src")
    path = tmp_path / "src" / "train.tfrecord"
    path.write_bytes(path.read_bytes()[:-10])
    _expect_failure(tmp_path, r"train\.tfrecord: record 1: truncated data")


def test_crc_mismatch(tmp_path):
    _source(tmp_path / "src")
    path = tmp_path / "src" / "test.tfrecord"
    data = bytearray(path.read_bytes())
    data[40] ^= 0xFF  # a byte of record 0's payload
    path.write_bytes(bytes(data))
    # train and valid convert fine first; still nothing may be left behind
    _expect_failure(tmp_path, r"test\.tfrecord: record 0: CRC mismatch in the data")


def test_frame_count_not_matching_metadata(tmp_path):
    splits = _source(tmp_path / "src")
    bad = splits["train"][1]
    bad.positions = bad.positions[:-1]
    write_records(tmp_path / "src" / "train.tfrecord", [encode_sequence_example(t) for t in splits["train"]])
    _expect_failure(tmp_path, r"train\.tfrecord: record 1: feature list 'position' has 6 steps, expected sequence_length \+ 1 = 7")


def test_frame_size_not_matching_particle_types(tmp_path):
    splits = _source(tmp_path / "src")
    bad = splits["valid"][0]
    bad.particle_type = bad.particle_type[:-1]
    write_records(tmp_path / "src" / "valid.tfrecord", [encode_sequence_example(bad)])
    _expect_failure(tmp_path, r"valid\.tfrecord: record 0: feature list 'position' step 0 holds 27 float32 values, expected 8 particles")


def test_dim_not_matching_metadata(tmp_path):
    splits = _source(tmp_path / "src", dim=2, nodes=(6, 6, 6, 6))
    write_water3d_source(tmp_path / "src", {}, water3d_metadata(dim=3, steps=STEPS))  # only metadata.json changes
    assert len(splits["train"]) == 2
    _expect_failure(tmp_path, r"train\.tfrecord: record 0: .* holds 12 float32 values, expected 6 particles x dim 3 = 18")


@pytest.mark.parametrize("where", ["context", "sequence"])
def test_unknown_feature_key(tmp_path, where):
    splits = _source(tmp_path / "src")
    bad = splits["test"][0]
    if where == "context":
        bad.extra_context["material"] = b"\x00" * 8
        match = r"test\.tfrecord: record 0: unknown context feature key 'material'"
    else:
        bad.extra_sequences["velocity"] = [b"\x00" * 4] * (STEPS + 1)
        match = r"test\.tfrecord: record 0: unknown feature list key 'velocity'"
    write_records(tmp_path / "src" / "test.tfrecord", [encode_sequence_example(bad)])
    _expect_failure(tmp_path, match)


def test_step_context_without_context_mean_is_unknown(tmp_path):
    traj = random_raw_trajectories(1, STEPS, 3, context=2)
    write_water3d_source(tmp_path / "src", {s: traj for s in ("train", "valid", "test")}, water3d_metadata(steps=STEPS))
    _expect_failure(tmp_path, r"unknown feature list key 'step_context' .*needs context_mean")


def test_not_a_sequence_example(tmp_path):
    _source(tmp_path / "src")
    write_records(tmp_path / "src" / "valid.tfrecord", [b"\x0a\xff\xff\xff\x0f"])  # field 1, absurd length
    _expect_failure(tmp_path, r"valid\.tfrecord: record 0: not a valid tf\.SequenceExample")


def test_nan_positions_name_the_record(tmp_path):
    splits = _source(tmp_path / "src")
    splits["train"][1].positions[3, 2, 1] = np.nan
    write_records(tmp_path / "src" / "train.tfrecord", [encode_sequence_example(t) for t in splits["train"]])
    _expect_failure(tmp_path, r"train\.tfrecord: record 1: .*NaN", StoreError)


def test_missing_files_are_named(tmp_path):
    _source(tmp_path / "src")
    (tmp_path / "src" / "valid.tfrecord").unlink()
    _expect_failure(tmp_path, r"valid\.tfrecord: tfrecord file not found", StoreError)
    (tmp_path / "src" / "metadata.json").unlink()
    _expect_failure(tmp_path, r"metadata\.json: metadata file not found", StoreError)


def test_cli_keeps_existing_stores_unless_overwrite(tmp_path, capsys):
    splits = _source(tmp_path / "src")
    main = _cli()
    args = ["--src", str(tmp_path / "src"), "--out", str(tmp_path / "out")]
    assert main(args + ["--chunks-per-shard", "4", "--compression", "blosc"]) == 0
    positions = zarr.open_array(str(tmp_path / "out" / "train.zarr" / "positions"), mode="r")
    assert positions.shards[0] == 4 * positions.chunks[0]
    assert "blosc" in json.dumps(positions.metadata.to_dict()).lower()
    before = (tmp_path / "out" / "train.zarr" / "zarr.json").read_bytes()
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "out" / "train.zarr" / "zarr.json").read_bytes() == before
    # a failed overwrite keeps the old stores too
    (tmp_path / "src" / "test.tfrecord").write_bytes(frame_record(b"x")[:-1])
    assert main(args + ["--overwrite"]) == 2
    assert "test.tfrecord: record 0: truncated" in capsys.readouterr().err
    assert open_store(tmp_path / "out" / "train.zarr").num_trajectories == 2
    write_records(tmp_path / "src" / "test.tfrecord", [encode_sequence_example(t) for t in splits["test"]])
    assert main(args + ["--overwrite"]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["test.zarr", "train.zarr", "valid.zarr"]



def test_the_sample_source_command_writes_a_source_that_converts(tmp_path):
    """docs/datasets.md's way to try Water-3D without the download: --write-sample, then --src."""
    import subprocess
    import sys
    from pathlib import Path

    from scaleq.store.reader import TrajectoryStore

    root = Path(__file__).resolve().parents[2]
    env = {"PYTHONPATH": str(root), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    for args in (["--write-sample", str(tmp_path / "src")], ["--src", str(tmp_path / "src"), "--out", str(tmp_path / "w")]):
        done = subprocess.run([sys.executable, "data_prep/water3d.py", *args], cwd=root, env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr
    stores = {s: TrajectoryStore(tmp_path / "w" / f"{s}.zarr") for s in ("train", "valid", "test")}
    assert [stores[s].num_trajectories for s in ("train", "valid", "test")] == [2, 1, 1]
    assert stores["train"].num_nodes(0) == 300 and stores["train"].num_frames(0) == 31
    assert stores["train"].attrs.default_radius == 0.035
