import numpy as np

from scaleq.store.format import StoreAttrs
from scaleq.store.reader import ChunkCache, TrajectoryStore
from scaleq.store.writer import write_store
from tests.support.stores import random_walk_trajectories


def test_cache_stays_within_its_byte_budget():
    cache = ChunkCache(capacity=1000)
    for k in range(20):
        cache.put(("positions", k), np.zeros(30, np.float32))  # 120 bytes each
        assert cache.size == sum(b.nbytes for b in cache.blocks.values()) <= 1000
    assert len(cache.blocks) == 8 and cache.get(("positions", 0)) is None  # least recently used went first
    assert cache.get(("positions", 19)) is not None
    cache.put(("positions", 19), np.zeros(30, np.float32))  # a re-put does not count twice
    assert cache.size == 960
    cache.put(("positions", 99), np.zeros(1000, np.float32))  # larger than the budget: not cached
    assert ("positions", 99) not in cache.blocks and cache.size == 960


def test_reading_a_whole_store_keeps_the_cache_bounded(tmp_path):
    trajectories = random_walk_trajectories(3, 40, [50, 60, 40])
    write_store(tmp_path / "s.zarr", StoreAttrs(kind="synthetic", dim=3, dt=1.0), trajectories, rows_per_chunk=20)
    store = TrajectoryStore(tmp_path / "s.zarr", cache_bytes=4096)
    total = 0
    for s in range(store.num_trajectories):
        frames = store.frames(s, range(store.num_frames(s)))
        total += frames.nbytes
        assert store.cache.size <= 4096
    assert total > 10 * 4096  # the store is much larger than the cache
    assert store.cache.size == sum(b.nbytes for b in store.cache.blocks.values())
    assert len(store.cache.blocks) == 4096 // (20 * 3 * 4)  # full: 17 chunks of 240 bytes
