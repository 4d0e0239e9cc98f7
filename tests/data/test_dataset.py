import numpy as np
import pytest
import torch
from torch_geometric.loader import DataLoader

from scaleq.data.dataset import SampleSpec, ShardedSampler, TrajectoryDataset, build_index
from scaleq.store.format import StoreError
from tests.support.stores import tiny_store


@pytest.fixture
def store(tmp_path):
    return tiny_store(tmp_path / "s.zarr", velocities=True, bonds=True)


def test_sample_pairs_frame_t_with_t_plus_delta(store):
    ds = TrajectoryDataset(store, SampleSpec(delta=3, velocity="backward"))
    # trajectories of 12 frames: start frames 1..8 with backward velocities
    assert len(ds) == 3 * 8
    s, t = ds.index[10]
    sample = ds[10]
    traj = store.read_trajectory(int(s))
    np.testing.assert_array_equal(sample.pos.numpy(), traj.positions[t])
    np.testing.assert_array_equal(sample.target.numpy(), traj.positions[t + 3])
    np.testing.assert_allclose(sample.vel.numpy(), traj.positions[t] - traj.positions[t - 1])
    assert sample.h.shape == (traj.positions.shape[1], 2)
    np.testing.assert_allclose(sample.h[:, 0], np.linalg.norm(sample.vel.numpy(), axis=-1), rtol=1e-6)
    assert sample.bond_index.shape[0] == 2 and sample.bond_attr.shape[1] == 1
    assert float(sample.horizon) == 3.0


def test_forward_and_store_velocities(store):
    fwd = TrajectoryDataset(store, SampleSpec(delta=2, velocity="forward", input_frame=0))
    traj = store.read_trajectory(0)
    np.testing.assert_allclose(fwd[0].vel.numpy(), traj.positions[1] - traj.positions[0])
    stored = TrajectoryDataset(store, SampleSpec(delta=2, velocity="store", input_frame=4))
    np.testing.assert_array_equal(stored[0].vel.numpy(), traj.velocities[4])
    assert float(stored[0].horizon) == pytest.approx(2 * store.attrs.dt)


def test_store_velocity_needs_velocities(tmp_path):
    plain = tiny_store(tmp_path / "p.zarr")
    with pytest.raises(StoreError, match="no 'velocities' array"):
        TrajectoryDataset(plain, SampleSpec(delta=1, velocity="store"))


def test_input_frame_out_of_range_is_explained(store):
    with pytest.raises(StoreError, match="input frame 10 with delta 5"):
        build_index(store, SampleSpec(delta=5, input_frame=10))


def test_random_starts_are_seeded(store):
    a = build_index(store, SampleSpec(delta=2, starts_per_trajectory=3, seed=1))
    b = build_index(store, SampleSpec(delta=2, starts_per_trajectory=3, seed=1))
    c = build_index(store, SampleSpec(delta=2, starts_per_trajectory=3, seed=2))
    assert len(a) == 9
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_dataloader_workers_give_the_same_samples(store):
    ds = TrajectoryDataset(store, SampleSpec(delta=2))
    plain = [b.pos for b in DataLoader(ds, batch_size=4)]
    with_workers = [b.pos for b in DataLoader(ds, batch_size=4, num_workers=2)]
    assert len(plain) == len(with_workers)
    for a, b in zip(plain, with_workers):
        torch.testing.assert_close(a, b)


def test_sharded_sampler_splits_and_resumes():
    shards = [list(ShardedSampler(10, shuffle=True, seed=3, rank=r, world_size=3)) for r in range(3)]
    assert all(len(s) == 4 for s in shards)
    assert set().union(*shards) == set(range(10))
    # evaluation: no padding, so each sample is counted exactly once across ranks
    unpadded = [list(ShardedSampler(10, shuffle=False, seed=0, rank=r, world_size=3, pad=False)) for r in range(3)]
    assert sorted(sum(unpadded, [])) == list(range(10))
    assert [len(ShardedSampler(10, shuffle=False, seed=0, rank=r, world_size=3, pad=False)) for r in range(3)] == [4, 3, 3]
    # fewer samples than ranks still gives every rank a step
    assert all(len(list(ShardedSampler(2, shuffle=True, seed=0, rank=r, world_size=3))) == 1 for r in range(3))
    sampler = ShardedSampler(10, shuffle=True, seed=3)
    full = list(sampler)
    sampler.set_epoch(0, start=4)
    assert list(sampler) == full[4:]
    sampler.set_epoch(1)
    assert list(sampler) != full


def test_loader_workers_are_capped_at_the_usable_cores(tmp_path):
    """A config written for a bigger node (data.num_workers: 4 on 2 cores) runs as many loader
    processes as there are cores, not more (torch warns once per loader otherwise)."""
    from scaleq.data.dataset import make_loader, usable_cores

    store = tiny_store(tmp_path / "s.zarr")
    dataset = TrajectoryDataset(store.path, SampleSpec(delta=1))
    sampler = ShardedSampler(len(dataset), shuffle=False, seed=0, rank=0, world_size=1, pad=False)
    assert make_loader(dataset, 4, sampler, usable_cores() + 3).num_workers == usable_cores()
    assert make_loader(dataset, 4, sampler, 0).num_workers == 0
