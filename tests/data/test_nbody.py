import numpy as np
import pytest

from scaleq.data.nbody import (
    NBodyParams,
    SplitSpec,
    draw_initial_states,
    energy,
    generate,
    simulate,
    write_nbody_dataset,
)
from scaleq.data.store import open_store


def test_published_constants():
    p = NBodyParams()
    assert p.num_frames == 49 and p.frame_dt == pytest.approx(0.1) and p.dt == 0.001


def test_initial_states_follow_the_published_draws():
    params = NBodyParams()
    init = draw_initial_states(params, np.random.RandomState(43), 3)
    assert set(np.unique(init.charges)) <= {-1.0, 1.0}
    np.testing.assert_allclose(np.linalg.norm(init.velocities, axis=-1), 0.5)
    # the same seed draws the same states; later trajectories do not depend on how many are kept
    again = draw_initial_states(params, np.random.RandomState(43), 5)
    np.testing.assert_array_equal(init.positions, again.positions[:3])


def test_generation_is_reproducible_and_drawn_skips():
    params = NBodyParams(num_steps=1000)
    a = list(generate(params, np.random.RandomState(1), 4))
    b = list(generate(params, np.random.RandomState(1), 4))
    for (la, va, qa), (lb, vb, qb) in zip(a, b):
        np.testing.assert_array_equal(va, vb)
        np.testing.assert_array_equal(la, lb)
        np.testing.assert_array_equal(qa, qb)
    # consuming extra initial states leaves the kept ones unchanged but shifts the next split
    rng = np.random.RandomState(1)
    kept = list(generate(params, rng, 2, drawn=4))
    np.testing.assert_array_equal(kept[1][0], a[1][0])
    after = next(generate(params, rng, 1))
    rng2 = np.random.RandomState(1)
    draw_initial_states(params, rng2, 4)
    np.testing.assert_array_equal(after[0], next(generate(params, rng2, 1))[0])


def test_energy_is_conserved_without_close_encounters():
    # two like charges far apart: smooth repulsion, no force clipping
    params = NBodyParams(num_particles=2)
    from scaleq.data.nbody import InitialState

    init = InitialState(
        charges=np.array([[1.0, 1.0]]),
        positions=np.array([[[-1.0, 0, 0], [1.0, 0, 0]]]),
        velocities=np.array([[[0.0, 0.3, 0], [0.0, -0.3, 0]]]),
    )
    loc, vel = simulate(params, init)
    e = energy(loc[0], vel[0], np.repeat(init.charges, loc.shape[1], 0), params)
    assert np.ptp(e) / abs(e.mean()) < 1e-3
    # momentum is conserved too (pairwise forces)
    np.testing.assert_allclose(vel[0].sum(axis=1), 0.0, atol=1e-9)


def test_dataset_stores(tmp_path):
    paths = write_nbody_dataset(tmp_path, NBodyParams(num_steps=600), [SplitSpec("train", 3), SplitSpec("test", 2)], seed=5)
    store = open_store(paths["train"])
    assert store.num_trajectories == 3 and store.has_velocities
    assert store.attrs.kind == "nbody" and store.attrs.dt == pytest.approx(0.1)
    assert store.attrs.provenance["seed"] == 5
    assert store.frames(0, [0]).shape == (1, 5, 3)


def test_existing_dataset_is_refused_and_left_whole(tmp_path):
    from scaleq.data.store import StoreError

    splits = [SplitSpec("train", 2), SplitSpec("test", 1)]
    write_nbody_dataset(tmp_path, NBodyParams(num_steps=300), splits, seed=1)
    (tmp_path / "train.zarr").rename(tmp_path / "kept.zarr")
    with pytest.raises(StoreError, match="test.zarr: a store already exists"):
        write_nbody_dataset(tmp_path, NBodyParams(num_steps=300), splits, seed=1)
    # all or none: the refused run wrote no new train.zarr either
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.zarr", "test.zarr"]
