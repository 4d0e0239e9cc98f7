"""EGHN's M-complex generator: rigid bodies stay rigid, seeds reproduce, the published sizes."""

import numpy as np
import pytest

from scaleq.sources.mcomplex import (
    MComplexParams,
    complex_edges,
    draw_initial_states,
    draw_system_types,
    generate,
    simulate_complexes,
    write_mcomplex_dataset,
)
from scaleq.store.reader import open_store


def _pair_distances(x: np.ndarray) -> np.ndarray:
    return np.sqrt(((x[..., :, None, :] - x[..., None, :, :]) ** 2).sum(-1))


def test_system_types_follow_the_published_size_rule():
    params = MComplexParams(complexes=5, average_size=5, systems=5)
    types = draw_system_types(params, np.random.RandomState(43))
    assert len(types) == 5
    for sizes in types:
        assert len(sizes) == 5 and len(set(sizes.tolist())) == 5  # drawn without replacement
        assert sizes.min() >= 2 and sizes.max() <= 8  # 2 .. 2 (N/M) - 2
    assert sorted(draw_system_types(MComplexParams(), np.random.RandomState(0))[0].tolist()) == [2, 3, 4]


@pytest.mark.parametrize("m, size", [(3, 3), (5, 5)])
def test_complexes_stay_rigid(m, size):
    params = MComplexParams(complexes=m, average_size=size, num_steps=1500)
    rng = np.random.RandomState(1)
    sizes = draw_system_types(params, rng)[0]
    init = draw_initial_states(params, sizes, rng, 3)
    pos, vel = simulate_complexes(params, init)
    assert pos.shape == (3, params.num_frames, int(sizes.sum()), 3)
    for s in range(3):
        same = init.membership[s][:, None] == init.membership[s][None, :]
        start = _pair_distances(init.positions[s])
        drift = np.abs(_pair_distances(pos[s]) - start)[:, same]
        assert drift.max() < 1e-9, drift.max()  # rounding only, over 1500 steps
        # each body moves as a whole: its particles' velocities are those of one rigid motion
        assert np.abs(pos[s, -1] - pos[s, 0]).max() > 1e-3
    # bodies interact: distances between particles of different bodies change
    other = init.membership[0][:, None] != init.membership[0][None, :]
    assert np.abs(_pair_distances(pos[0, -1]) - _pair_distances(pos[0, 0]))[other].max() > 1e-3


def test_seeds_reproduce_and_differ():
    params = MComplexParams(num_steps=300)
    sizes = draw_system_types(params, np.random.RandomState(2))
    a = generate(params, sizes, np.random.RandomState(5), 3)
    b = generate(params, sizes, np.random.RandomState(5), 3)
    c = generate(params, sizes, np.random.RandomState(6), 3)
    for (pa, va, _, ma), (pb, vb, _, mb) in zip(a, b):
        np.testing.assert_array_equal(pa, pb)
        np.testing.assert_array_equal(va, vb)
        np.testing.assert_array_equal(ma, mb)
    assert not np.allclose(a[0][0], c[0][0])


def test_edges_are_the_sticks_of_each_body():
    edges = complex_edges(np.array([0, 1, 0, 1, 1]))
    pairs = set(map(tuple, edges.T.tolist()))
    assert pairs == {(0, 2), (2, 0), (1, 3), (3, 1), (1, 4), (4, 1), (3, 4), (4, 3)}


def test_dataset_written_with_bonds(tmp_path):
    params = MComplexParams(complexes=3, average_size=3, num_steps=400)
    paths = write_mcomplex_dataset(tmp_path / "a", params, {"train": 2, "valid": 1, "test": 1}, seed=9)
    again = write_mcomplex_dataset(tmp_path / "b", params, {"train": 2, "valid": 1, "test": 1}, seed=9)
    store, twin = open_store(paths["train"]), open_store(again["train"])
    assert store.num_trajectories == 2 and store.attrs.kind == "mcomplex"
    assert store.num_nodes(0) == 9  # sizes 2 + 3 + 4
    edge_index, _ = store.edges(0)
    assert edge_index.shape == (2, 2 * (1 + 3 + 6))  # every ordered pair within each body
    np.testing.assert_array_equal(store.frames(1, [0, 3]), twin.frames(1, [0, 3]))


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="complexes must be"):
        MComplexParams(complexes=4, average_size=3)
