"""Each distributed rank and each DataLoader worker reads only its own part of the sample index."""

import numpy as np
import torch

from scaleq.data.dataset import SampleSpec, ShardedSampler, TrajectoryDataset, make_loader
from tests.support.stores import tiny_store


class RecordingDataset(TrajectoryDataset):
    """The real dataset; each sample also says which worker read it and which (trajectory, frame)."""

    def __getitem__(self, i):
        data = super().__getitem__(i)
        info = torch.utils.data.get_worker_info()
        data.worker = torch.tensor([info.id if info is not None else -1])
        data.sample = torch.tensor([i])
        data.read = torch.as_tensor(self.index[i]).view(1, 2)
        return data


def test_ranks_and_workers_read_disjoint_parts(tmp_path):
    store = tiny_store(tmp_path / "s.zarr", num_trajectories=3, num_frames=12, num_nodes=[5, 7, 4])
    dataset = RecordingDataset(store, SampleSpec(delta=2, starts_per_trajectory=5, seed=1))
    num_samples = len(dataset)
    assert num_samples == 15
    world_size, workers = 2, 2
    seen: dict[tuple[int, int], list[int]] = {}
    for rank in range(world_size):
        sampler = ShardedSampler(num_samples, shuffle=True, seed=7, rank=rank, world_size=world_size)
        expected = list(sampler)
        got = []
        for batch in make_loader(dataset, 3, sampler, workers):
            # one batch comes from one worker, and each sample's frames are those of its (trajectory, frame)
            assert batch.worker.unique().numel() == 1 and int(batch.worker[0]) in range(workers)
            for k, sample in enumerate(batch.to_data_list()):
                s, t = (int(v) for v in batch.read[k])
                np.testing.assert_array_equal(sample.pos.numpy(), store.frames(s, [t])[0])
                seen.setdefault((rank, int(batch.worker[0])), []).append(int(batch.sample[k]))
            got.extend(batch.sample.tolist())
        assert got == expected  # the rank read exactly its shard, in the sampler's order
    # workers of one rank never share a sample; both workers of both ranks did work
    assert len(seen) == world_size * workers
    for rank in range(world_size):
        a, b = (set(seen[(rank, w)]) for w in range(workers))
        assert not a & b
    rank_sets = [set(seen[(r, 0)]) | set(seen[(r, 1)]) for r in range(world_size)]
    assert rank_sets[0] | rank_sets[1] == set(range(num_samples))
    assert len(rank_sets[0] & rank_sets[1]) <= 1  # only DistributedSampler-style padding repeats a sample
