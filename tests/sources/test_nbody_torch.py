"""The torch integrator equals the NumPy one (to float64 rounding) for both published systems."""

import numpy as np
import pytest
import torch

from scaleq.sources.nbody import (
    SplitSpec,
    draw_initial_states,
    generate,
    protocol_params,
    simulate,
    write_nbody_dataset,
)
from scaleq.sources.nbody_torch import simulate_torch
from scaleq.store.reader import open_store


@pytest.mark.parametrize("system, particles, steps", [("egnn", 5, 1200), ("fastegnn", 20, 400), ("dusego", 5, 1200)])
def test_torch_equals_numpy(system, particles, steps):
    params = protocol_params(system, particles=particles, steps=steps)
    init = draw_initial_states(params, np.random.RandomState(43), 6)
    loc_np, vel_np = simulate(params, init)
    loc_t, vel_t = simulate_torch(params, init, chunk=4)  # two chunks: the split is simulated in parts too
    assert loc_t.shape == loc_np.shape == (6, params.num_frames, particles, 3)
    # the order of the sum over j may differ: rounding, grown a little by the steps taken
    np.testing.assert_allclose(loc_t, loc_np, rtol=0, atol=1e-9)
    np.testing.assert_allclose(vel_t, vel_np, rtol=0, atol=1e-9)
    assert not np.array_equal(loc_np[:, 0], loc_np[:, -1])  # the particles moved


def test_engines_give_the_same_dataset(tmp_path):
    params = protocol_params("egnn", steps=600)
    splits = [SplitSpec("train", 3, 5), SplitSpec("test", 2)]
    a = write_nbody_dataset(tmp_path / "torch", params, splits, seed=7, engine="torch")
    b = write_nbody_dataset(tmp_path / "numpy", params, splits, seed=7, engine="numpy")
    for split in ("train", "test"):
        sa, sb = open_store(a[split]), open_store(b[split])
        assert sa.num_trajectories == sb.num_trajectories
        for i in range(sa.num_trajectories):
            frames = list(range(sa.num_frames(i)))
            np.testing.assert_allclose(sa.frames(i, frames), sb.frames(i, frames), atol=1e-6)


def test_torch_engine_is_reproducible():
    params = protocol_params("egnn", steps=500)
    first = [t[0] for t in generate(params, np.random.RandomState(3), 4, engine="torch")]
    again = [t[0] for t in generate(params, np.random.RandomState(3), 4, engine="torch")]
    for x, y in zip(first, again):
        np.testing.assert_array_equal(x, y)


def test_unknown_engine_is_refused():
    with pytest.raises(ValueError, match="engine must be one of"):
        next(generate(protocol_params("egnn", steps=300), np.random.RandomState(0), 1, engine="jax"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_equals_numpy():
    params = protocol_params("fastegnn", particles=50, steps=300)
    init = draw_initial_states(params, np.random.RandomState(43), 4)
    np.testing.assert_allclose(simulate_torch(params, init, "cuda")[0], simulate(params, init)[0], atol=1e-9)
