import numpy as np
import pytest

from scaleq.sources.nbody import (
    NBodyParams,
    SplitSpec,
    draw_initial_states,
    energy,
    generate,
    simulate,
    write_nbody_dataset,
)
from scaleq.store.reader import open_store


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
    from scaleq.sources.nbody import InitialState

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
    from scaleq.store.format import StoreError

    splits = [SplitSpec("train", 2), SplitSpec("test", 1)]
    write_nbody_dataset(tmp_path, NBodyParams(num_steps=300), splits, seed=1)
    (tmp_path / "train.zarr").rename(tmp_path / "kept.zarr")
    with pytest.raises(StoreError, match="test.zarr: a store already exists"):
        write_nbody_dataset(tmp_path, NBodyParams(num_steps=300), splits, seed=1)
    # all or none: the refused run wrote no new train.zarr either
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.zarr", "test.zarr"]


# -- FastEGNN's 100-body system (GMN's System of isolated balls) -------------------------------


class PublishedBallSystem:
    """GMN's ``System`` with isolated balls, written from the published code's structure (global
    np.random, the |a|^2 + |b|^2 - 2 a.b distances, a per-ball update loop). Where the published
    mixture lists fewer centres than Gaussians, the remainder is drawn around the origin first."""

    def __init__(self, n, gaussians, centres, delta_t=0.001, loc_std=1.0, vel_norm=0.5):
        self.n, self.delta_t, self.max_f = n, delta_t, 0.1 / delta_t
        self.loc_std = loc_std * (float(n) / 5.0) ** (1 / 3) + 0.1
        self.charges = np.random.choice([1.0, -1.0], size=(n, 1))
        self.edges = self.charges.dot(self.charges.transpose())
        cnt = n // gaussians
        x = np.random.randn(n - cnt * len(centres), 3) * self.loc_std
        for c in centres:
            x = np.concatenate((x, np.random.randn(cnt, 3) * self.loc_std + np.array([[c, c, c]])), axis=0)
        v = np.random.randn(n, 3)
        v = v / np.sqrt((v**2).sum(axis=-1)).reshape(-1, 1) * vel_norm
        selected = []
        for _ in range(n):
            rest = [i for i in range(n) if i not in selected]
            selected.extend(list(np.random.choice(rest, size=1, replace=False)))
        self.order = selected
        self.X, self.V = x, v

    def compute_f(self, x):
        sq = (x**2).sum(axis=1)
        l2 = sq.reshape(-1, 1) + sq.reshape(1, -1) - 2 * x.dot(x.T)
        with np.errstate(divide="ignore", invalid="ignore"):
            size = self.edges / np.power(l2, 1.5)
        np.fill_diagonal(size, 0)
        f = np.stack([(size * np.subtract.outer(x[:, d], x[:, d])).sum(axis=-1) for d in range(3)], axis=1)
        return np.clip(f, -self.max_f, self.max_f)

    def simulate_one_step(self):
        f = self.compute_f(self.X)
        for i in self.order:  # Isolated.update, ball by ball
            self.V[i] = self.V[i] + f[i] / 1.0 * self.delta_t
            self.X[i] = self.X[i] + self.V[i] * self.delta_t


def published_trajectories(seed, count, n, gaussians, centres, length, sample_freq):
    np.random.seed(seed)
    out = []
    for _ in range(count):
        system = PublishedBallSystem(n, gaussians, centres)
        xs, vs = [], []
        for t in range(length):
            system.simulate_one_step()
            if t % sample_freq == 0:
                xs.append(system.X.copy())
                vs.append(system.V.copy())
        out.append((np.array(xs), np.array(vs), system.charges[:, 0]))
    return out


TEN_CENTRES = (-100, -80, -60, -40, -20, 20, 40, 60, 80, 100)  # the published list for --gaussians 10


@pytest.mark.parametrize(("n", "gaussians", "centres"), [(7, 3, (-25.0, 25.0)), (20, 10, TEN_CENTRES)])
def test_fastegnn_system_follows_the_published_draws_and_equations(n, gaussians, centres):
    params = NBodyParams(system="fastegnn", num_particles=n, gaussians=gaussians, num_steps=450)
    assert params.num_frames == 5 and params.saved_steps.tolist() == [1, 101, 201, 301, 401]
    ours = list(generate(params, np.random.RandomState(43), 3))
    expected = published_trajectories(43, 3, n, gaussians, centres, length=450, sample_freq=100)
    for (loc, vel, charges), (loc_ref, vel_ref, charges_ref) in zip(ours, expected, strict=True):
        np.testing.assert_array_equal(charges, charges_ref)
        np.testing.assert_allclose(loc, loc_ref, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(vel, vel_ref, rtol=1e-9, atol=1e-9)


def test_fastegnn_system_setup():
    params = NBodyParams(system="fastegnn", num_particles=100, gaussians=3)
    assert params.num_frames == 50 and params.position_std == pytest.approx(20 ** (1 / 3) + 0.1)
    init = draw_initial_states(params, np.random.RandomState(0), 2)
    np.testing.assert_allclose(np.linalg.norm(init.velocities, axis=-1), 0.5)
    # 34 balls around the origin, then 33 around -25 (1, 1, 1) and 33 around +25 (1, 1, 1)
    centres = [init.positions[:, a:b].mean(axis=(0, 1)) for a, b in ((0, 34), (34, 67), (67, 100))]
    for centre, c in zip(centres, (0.0, -25.0, 25.0), strict=True):
        np.testing.assert_allclose(centre, c, atol=2.0)
    with pytest.raises(ValueError, match="gaussians=3 is for the 'fastegnn' system"):
        NBodyParams(gaussians=3)


def test_fastegnn_dataset_is_reproducible_from_its_seed(tmp_path):
    params = NBodyParams(system="fastegnn", num_particles=6, gaussians=3, num_steps=300)
    splits = [SplitSpec("train", 3), SplitSpec("valid", 2)]
    a = write_nbody_dataset(tmp_path / "a", params, splits, seed=43)
    b = write_nbody_dataset(tmp_path / "b", params, splits, seed=43)
    c = write_nbody_dataset(tmp_path / "c", params, splits, seed=44)
    for split in ("train", "valid"):
        first, second, other = (open_store(paths[split]) for paths in (a, b, c))
        np.testing.assert_array_equal(first.frames(1, [0, 2]), second.frames(1, [0, 2]))
        assert not np.allclose(first.frames(1, [0]), other.frames(1, [0]))
    # one RNG runs through the splits: validation is not a copy of the first training trajectories
    assert not np.allclose(open_store(a["train"]).frames(0, [0]), open_store(a["valid"]).frames(0, [0]))
    assert open_store(a["train"]).attrs.extra["simulator"]["system"] == "fastegnn"
