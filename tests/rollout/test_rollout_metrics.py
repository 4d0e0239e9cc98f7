import math

import numpy as np
import pytest
import torch

from scaleq.data.dataset import SampleSpec, TrajectoryDataset
from scaleq.graph.builder import GraphBuilder
from scaleq.rollout.metrics import horizon_metrics, kabsch_rmsd, nbody_invariants, radius_of_gyration
from scaleq.rollout.rollout import linear_baseline, reference, rollout
from scaleq.sources.nbody import NBodyParams, draw_initial_states, simulate
from scaleq.store.format import StoreAttrs
from scaleq.store.writer import write_store


def test_simulator_energy_is_conserved_to_its_integrators_accuracy():
    """Leapfrog stores velocities half a step behind the positions, so the energy computed from a
    stored frame is off by O(dt): halving dt halves the drift. (Trajectories with close encounters,
    where the force clip acts, are not conservative at all; the median is not one of them.)"""
    init = draw_initial_states(NBodyParams(), np.random.RandomState(7), 12)
    drifts = []
    for dt, steps, every in ((0.001, 2000, 100), (0.0005, 4000, 200)):
        params = NBodyParams(dt=dt, num_steps=steps, sample_every=every)
        loc, vel = simulate(params, init)
        per = [nbody_invariants(torch.from_numpy(loc[s]), torch.from_numpy(vel[s]),
                                torch.from_numpy(init.charges[s]), vars(params)) for s in range(12)]
        drift = torch.stack([(p["energy"] - p["energy"][0]).abs().max() for p in per])
        drifts.append(float(drift.median()))
        momentum = torch.stack([(p["momentum"] - p["momentum"][0]).norm(dim=-1).max() for p in per])
        assert float(momentum.median()) < 1e-9  # pairwise forces cancel unless the clip acts
    assert drifts[0] < 1e-2, drifts  # against a kinetic energy of 5 * 0.5^2 / 2 = 0.625
    assert 0.35 < drifts[1] / drifts[0] < 0.65, drifts


def test_kabsch_rmsd_ignores_rotation_and_translation_but_not_reflection():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 30, 3, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    rotation = q * torch.sign(torch.linalg.det(q))  # a proper rotation
    moved = x @ rotation.T + torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    assert float(kabsch_rmsd(moved, x)[0]) < 1e-12
    mirrored = x * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    assert float(kabsch_rmsd(mirrored, x)[0]) > 0.1
    noisy = x + 0.01 * torch.randn(x.shape, generator=g, dtype=torch.float64)
    assert 0.005 < float(kabsch_rmsd(noisy, x)[0]) < 0.02
    assert math.isnan(float(kabsch_rmsd(torch.full_like(x, math.nan), x)[0]))
    square = torch.tensor([[[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]]]) + 5.0
    assert float(radius_of_gyration(square)[0]) == pytest.approx(math.sqrt(2.0))


def test_md_store_metrics_have_rmsd_and_radius_of_gyration(tmp_path):
    from tests.support.stores import random_walk_trajectories

    trajectories = random_walk_trajectories(2, 12, [7, 5], bonds=True)
    write_store(tmp_path / "md.zarr", StoreAttrs(kind="md", dim=3, dt=1.0, feature_names=["charge"]), trajectories)
    dataset = TrajectoryDataset(tmp_path / "md.zarr", SampleSpec(delta=2, velocity="backward"))
    ref = reference(dataset, [0, 1], 1, steps=4)
    metrics = horizon_metrics(ref, rollout(linear_baseline()[0], ref, GraphBuilder(kind="complete", local="bonds")))
    row = metrics.rows[3]
    assert row["rmsd"] > 0 and row["rg"] > 0 and row["rg_true"] > 0
    assert metrics.rows[0]["rmsd"] < 1e-6 and metrics.rows[0]["rg"] == pytest.approx(metrics.rows[0]["rg_true"])
