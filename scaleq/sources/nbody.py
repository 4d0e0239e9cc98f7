"""The charged-particle N-body simulators of EGNN, GMN, SEGNO, DuSEGO and FastEGNN, vectorised.

Two systems (``NBodyParams.system``), both with Coulomb-like forces
F_i = k sum_j q_i q_j (x_i - x_j) / |x_i - x_j|^3, each component clipped to +-0.1/dt, unit
masses, and the update v += F dt; x += v dt with dt = 0.001 (leapfrog in velocity-first form):

- 'egnn' (default): Kipf et al.'s NRI simulator as EGNN publishes it (5 bodies). Charges +-1 with
  probability 1/2 each, positions ~ N(0, loc_std^2), velocities in a random direction with norm
  ``vel_norm``; one frame every ``sample_every`` steps, the first after step ``sample_every``
  (the initial state is not saved), 49 frames from 5000 steps.
- 'fastegnn': GMN's ``System`` of isolated charged balls as FastEGNN's 100-body data uses it
  (GLAD-RUC/FastEGNN, ``datasets/nbody/script/system.py``, run by ``run_100_3.sh``). Charges drawn
  from [1, -1]; positions from a mixture of ``gaussians`` Gaussians of standard deviation
  loc_std (n / 5)^(1/3) + 0.1 centred at (c, c, c) for c in :data:`GAUSSIAN_CENTRES`; velocities
  in a random direction with norm ``vel_norm``; a frame after steps 1, 1 + sample_every, ...
  (50 frames from 5000 steps).
  The published code cannot run with ``--gaussians 3``: it lists two centres (-25, 25) for three
  Gaussians and draws n // 3 balls around each, 66 of 100 positions, and stops at an assertion
  (``run_100_3.sh`` retries it forever). Its commented-out first line draws the remaining
  n - n // 3 * (gaussians - 1) balls around the origin; that is what this module does (3
  Gaussians at 0 and +-25 (1, 1, 1): 34, 33 and 33 balls); for ``gaussians`` 10 the remainder is
  empty and the draws are exactly the published ones. The published scripts also seed each split
  separately with the same seed (in 32 unseeded worker processes); here one RNG runs through
  train, valid and test, so the splits differ and the data are reproducible.

Initial conditions are drawn trajectory by trajectory from ``np.random.RandomState(seed)`` in the
published order ('egnn': charges, positions, velocities, then the two noise draws the original
makes even at zero noise, so seed 43 gives the published initial conditions; 'fastegnn': charges,
positions, velocities, then the random node index each ball object picks); the integration itself
runs for all trajectories at once.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from tqdm import tqdm

from scaleq.store.format import StoreAttrs, Trajectory, default_provenance
from scaleq.store.staging import staged_dataset
from scaleq.store.writer import StoreWriter

NBodySystem = Literal["egnn", "fastegnn"]
SYSTEMS: tuple[NBodySystem, ...] = ("egnn", "fastegnn")
Engine = Literal["torch", "numpy"]
ENGINES: tuple[Engine, ...] = ("torch", "numpy")
# Centres c of the 'fastegnn' Gaussian mixture, each at (c, c, c); the remaining balls go to the origin.
GAUSSIAN_CENTRES: dict[int, tuple[float, ...]] = {
    1: (),
    3: (-25.0, 25.0),
    10: (-100.0, -80.0, -60.0, -40.0, -20.0, 20.0, 40.0, 60.0, 80.0, 100.0),
}


@dataclass(frozen=True, kw_only=True)
class NBodyParams:
    """Simulator settings. ``gaussians`` is for the 'fastegnn' system only (1, 3 or 10)."""

    system: NBodySystem = "egnn"
    num_particles: int = 5
    dim: int = 3
    loc_std: float = 1.0
    vel_norm: float = 0.5
    interaction_strength: float = 1.0
    dt: float = 0.001
    num_steps: int = 5000
    sample_every: int = 100
    gaussians: int = 1

    def __post_init__(self) -> None:
        if self.system not in SYSTEMS:
            raise ValueError(f"system must be one of {list(SYSTEMS)}, got {self.system!r}")
        if self.num_particles < 2:
            raise ValueError(f"num_particles must be >= 2, got {self.num_particles}")
        if self.num_steps <= self.sample_every:
            raise ValueError(f"num_steps ({self.num_steps}) must exceed sample_every ({self.sample_every})")
        if self.gaussians not in GAUSSIAN_CENTRES:
            raise ValueError(f"gaussians must be one of {sorted(GAUSSIAN_CENTRES)}, got {self.gaussians}")
        if self.system == "egnn" and self.gaussians != 1:
            raise ValueError(f"gaussians={self.gaussians} is for the 'fastegnn' system; 'egnn' draws one Gaussian")
        if self.num_particles < self.gaussians:
            raise ValueError(f"{self.gaussians} Gaussians need at least as many particles, got {self.num_particles}")

    @property
    def num_frames(self) -> int:
        return len(self.saved_steps)

    @property
    def saved_steps(self) -> np.ndarray:
        """The simulator steps after which frames are saved, in order. Shape: [T]."""
        if self.system == "egnn":  # steps sample_every, 2 sample_every, ..., not the last
            return np.arange(1, self.num_steps // self.sample_every) * self.sample_every
        return np.arange(0, self.num_steps, self.sample_every) + 1  # after step t + 1 for t % sample_every == 0

    @property
    def position_std(self) -> float:
        """Standard deviation of the initial positions around their centre."""
        if self.system == "egnn":
            return self.loc_std
        return self.loc_std * (self.num_particles / 5.0) ** (1.0 / 3.0) + 0.1

    @property
    def frame_dt(self) -> float:
        return self.dt * self.sample_every


@dataclass(frozen=True)
class InitialState:
    """Shapes: charges [S, N]; positions [S, N, D]; velocities [S, N, D]."""

    charges: np.ndarray
    positions: np.ndarray
    velocities: np.ndarray


def draw_initial_states(params: NBodyParams, rng: np.random.RandomState, count: int) -> InitialState:
    """Draw ``count`` initial states in the published per-trajectory order of ``params.system``."""
    n, d = params.num_particles, params.dim
    charges = np.empty((count, n))
    positions = np.empty((count, n, d))
    velocities = np.empty((count, n, d))
    if params.system == "fastegnn":
        for s in range(count):
            charges[s], positions[s], velocities[s] = _draw_ball_system(params, rng)
        return InitialState(charges, positions, velocities)
    for s in range(count):
        charges[s] = rng.choice(np.array([-1.0, 0.0, 1.0]), size=(n, 1), p=[0.5, 0.0, 0.5])[:, 0]
        positions[s] = (rng.randn(d, n) * params.loc_std).T
        vel = rng.randn(d, n)
        velocities[s] = (vel * params.vel_norm / np.sqrt((vel**2).sum(axis=0, keepdims=True))).T
        # The original adds observation noise at the end of each trajectory (zero-scaled here);
        # consuming the same draws keeps later trajectories identical to the published ones.
        rng.randn(params.num_frames, d, n)
        rng.randn(params.num_frames, d, n)
    return InitialState(charges, positions, velocities)


def _draw_ball_system(params: NBodyParams, rng: np.random.RandomState) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One initial state of GMN's ``System`` with isolated balls only, in its draw order.
    Shapes: -> charges [N], positions [N, D], velocities [N, D]."""
    n, d = params.num_particles, params.dim
    charges = rng.choice([1.0, -1.0], size=(n, 1))[:, 0]
    std = params.position_std
    centres = GAUSSIAN_CENTRES[params.gaussians]
    per_gaussian = n // params.gaussians
    blocks = [rng.randn(n - per_gaussian * len(centres), d) * std]  # the remainder, around the origin
    blocks += [rng.randn(per_gaussian, d) * std + np.full((1, d), c) for c in centres]
    positions = np.concatenate(blocks, axis=0)
    vel = rng.randn(n, d)
    velocities = vel / np.sqrt((vel**2).sum(axis=-1)).reshape(-1, 1) * params.vel_norm
    # Each ball object picks its node index at random among those left; for isolated balls the
    # choice changes nothing but the RNG state, which later trajectories depend on.
    selected: list[int] = []
    for _ in range(n):
        rest = [i for i in range(n) if i not in selected]
        selected.extend(int(i) for i in rng.choice(rest, size=1, replace=False))
    return charges, positions, velocities


def coulomb_forces(positions: np.ndarray, charges: np.ndarray, params: NBodyParams) -> np.ndarray:
    """Clipped pairwise forces. Shapes: positions [S, N, D], charges [S, N] -> [S, N, D]."""
    diff = positions[:, :, None, :] - positions[:, None, :, :]  # [S, N, N, D]: x_i - x_j
    dist2 = np.einsum("sijd,sijd->sij", diff, diff)
    diagonal = np.arange(positions.shape[1])
    dist2[:, diagonal, diagonal] = np.inf  # no self-interaction: 1 / inf^1.5 = 0
    size = params.interaction_strength * charges[:, :, None] * charges[:, None, :] / (dist2 * np.sqrt(dist2))
    forces = np.einsum("sij,sijd->sid", size, diff)
    max_force = 0.1 / params.dt
    return np.clip(forces, -max_force, max_force, out=forces)


def simulate(params: NBodyParams, init: InitialState, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Integrate (v += F dt, then x += v dt, per step) and keep the frames after
    ``params.saved_steps``. Returns positions and velocities, each [S, T, N, D]."""
    loc = init.positions.copy()
    vel = init.velocities.copy()
    count = loc.shape[0]
    shape = (count, params.num_frames, params.num_particles, params.dim)
    saved_loc, saved_vel = np.empty(shape), np.empty(shape)
    saved = params.saved_steps
    frame = 0
    for step in tqdm(range(1, int(saved[-1]) + 1), disable=not progress, desc="simulating", unit="step", leave=False):
        vel += params.dt * coulomb_forces(loc, init.charges, params)
        loc += params.dt * vel
        if step == saved[frame]:
            saved_loc[:, frame], saved_vel[:, frame] = loc, vel
            frame += 1
    return saved_loc, saved_vel


def energy(positions: np.ndarray, velocities: np.ndarray, charges: np.ndarray, params: NBodyParams) -> np.ndarray:
    """Kinetic plus potential energy (unit masses). Shapes: [S, N, D], [S, N, D], [S, N] -> [S]."""
    kinetic = 0.5 * (velocities**2).sum(axis=(1, 2))
    dist = np.sqrt(((positions[:, :, None] - positions[:, None]) ** 2).sum(-1))
    n = positions.shape[1]
    iu = np.triu_indices(n, k=1)
    pair = charges[:, :, None] * charges[:, None, :] / np.where(dist > 0, dist, np.inf)
    return kinetic + params.interaction_strength * pair[:, iu[0], iu[1]].sum(-1)


def generate(
    params: NBodyParams, rng: np.random.RandomState, count: int, drawn: int | None = None, batch: int | None = None,
    progress: bool = False, engine: Engine = "torch",
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Simulate ``count`` trajectories; ``drawn`` >= count initial states are consumed from rng.
    ``engine`` 'torch' integrates them all at once (:mod:`scaleq.sources.nbody_torch`, a GPU when
    there is one), 'numpy' in batches with :func:`simulate`; both give the same data to rounding.

    Yields (positions [T, N, D], velocities [T, N, D], charges [N]) per trajectory, simulated in
    batches (default: as many trajectories as keep one [S, N, N, D] array near 32 MB, at most 1000)
    so memory stays bounded.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {list(ENGINES)}, got {engine!r}")
    drawn = count if drawn is None else drawn
    if drawn < count:
        raise ValueError(f"drawn ({drawn}) must be >= count ({count})")
    init = draw_initial_states(params, rng, drawn)
    if engine == "torch":
        from scaleq.sources.nbody_torch import default_device, simulate_torch

        part = InitialState(init.charges[:count], init.positions[:count], init.velocities[:count])
        loc, vel = simulate_torch(params, part, default_device(), progress=progress)
        for k in range(count):
            yield loc[k], vel[k], part.charges[k]
        return
    if batch is None:
        batch = max(1, min(1000, 4_000_000 // (params.num_particles**2 * params.dim)))
    bar = tqdm(total=count, disable=not progress, desc="trajectories", unit="traj")
    for start in range(0, count, batch):
        stop = min(start + batch, count)
        part = InitialState(init.charges[start:stop], init.positions[start:stop], init.velocities[start:stop])
        loc, vel = simulate(params, part, progress=progress)
        for k in range(stop - start):
            yield loc[k], vel[k], part.charges[k]
        bar.update(stop - start)
    bar.close()


@dataclass(frozen=True)
class SplitSpec:
    """One split: ``count`` trajectories kept out of ``drawn`` initial states consumed."""

    name: str
    count: int
    drawn: int | None = None


# EGNN's protocol: seed 43 draws 10000/2000/2000 trajectories, of which training uses 3000.
EGNN_SPLITS = (SplitSpec("train", 3000, 10000), SplitSpec("valid", 2000), SplitSpec("test", 2000))
# FastEGNN's 100-body protocol (run_100_3.sh): 100 balls in 3 Gaussians, 5000/2000/2000, seed 43.
FASTEGNN_SPLITS = (SplitSpec("train", 5000), SplitSpec("valid", 2000), SplitSpec("test", 2000))
# DuSEGO's protocol as its paper states it (Sec. 6.1): EGNN's simulator with positions N(0, 0.5^2)
# and speed 0.5, 10000/2000/2000 trajectories, targets 1000/1500/2000 steps after frame 30 (frames
# 40, 45, 50), hence 6000 steps. Its code is not published; the seed is EGNN's 43.
DUSEGO_SPLITS = (SplitSpec("train", 10000), SplitSpec("valid", 2000), SplitSpec("test", 2000))
# Published protocols by name: the simulator settings and the splits.
PROTOCOLS: dict[str, tuple[NBodyParams, tuple[SplitSpec, ...]]] = {
    "egnn": (NBodyParams(), EGNN_SPLITS),
    "fastegnn": (NBodyParams(system="fastegnn", num_particles=100, gaussians=3), FASTEGNN_SPLITS),
    "dusego": (NBodyParams(loc_std=0.5, num_steps=6000), DUSEGO_SPLITS),
}


def protocol_params(system: str, *, particles: int | None = None, steps: int | None = None,
                    gaussians: int | None = None) -> NBodyParams:
    """The published simulator settings of protocol ``system`` (:data:`PROTOCOLS`), with overrides."""
    if system not in PROTOCOLS:
        raise ValueError(f"system must be one of {list(PROTOCOLS)}, got {system!r}")
    overrides = {"num_particles": particles, "num_steps": steps, "gaussians": gaussians}
    return dataclasses.replace(PROTOCOLS[system][0], **{k: v for k, v in overrides.items() if v is not None})


def write_nbody_dataset(
    out_dir: str | os.PathLike[str],
    params: NBodyParams,
    splits: Sequence[SplitSpec] = EGNN_SPLITS,
    seed: int = 43,
    overwrite: bool = False,
    progress: bool = False,
    engine: Engine = "torch",
) -> dict[str, Path]:
    """Simulate every split from one seeded RNG and write ``<out_dir>/<split>.zarr`` stores, all or
    none (see :func:`scaleq.store.staging.staged_dataset`)."""
    rng = np.random.RandomState(seed)
    attrs = StoreAttrs(
        kind="nbody",
        dim=params.dim,
        dt=params.frame_dt,
        frame_stride=params.sample_every,
        feature_names=["charge"],
        provenance=default_provenance(f"scaleq.sources.nbody charged-particle simulator ({params.system} system)", seed),
        extra={"simulator": dataclasses.asdict(params)},
    )
    with staged_dataset(out_dir, [spec.name for spec in splits], overwrite) as staging:
        for spec in splits:
            with StoreWriter(staging[spec.name], attrs) as writer:
                for loc, vel, charges in generate(params, rng, spec.count, spec.drawn, progress=progress,
                                                          engine=engine):
                    writer.add(Trajectory(positions=loc, velocities=vel, node_features=charges[:, None]))
    return {spec.name: Path(out_dir) / f"{spec.name}.zarr" for spec in splits}
