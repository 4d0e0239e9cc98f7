"""The charged-particle N-body simulator of EGNN, GMN, SEGNO, DuSEGO and FastEGNN, vectorised.

Physics as in the published generator (Kipf et al.'s NRI simulator, as used by EGNN): charges
+-1 with probability 1/2 each, positions ~ N(0, loc_std^2), velocities in a random direction with
norm ``vel_norm``, Coulomb-like forces F_i = k sum_j q_i q_j (x_i - x_j) / |x_i - x_j|^3 with each
component clipped to +-0.1/dt, leapfrog integration with dt = 0.001, one frame saved every
``sample_every`` steps (the first saved frame is step ``sample_every``, not the initial state).

Initial conditions are drawn trajectory by trajectory from ``np.random.RandomState(seed)`` in the
published order (charges, positions, velocities, then the two noise draws the original makes even
at zero noise), so seed 43 gives the published initial conditions; the integration itself runs
for all trajectories at once.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from scaleq.data.staging import staged_dataset
from scaleq.data.store import StoreAttrs, StoreWriter, Trajectory, default_provenance


@dataclass(frozen=True, kw_only=True)
class NBodyParams:
    num_particles: int = 5
    dim: int = 3
    loc_std: float = 1.0
    vel_norm: float = 0.5
    interaction_strength: float = 1.0
    dt: float = 0.001
    num_steps: int = 5000
    sample_every: int = 100

    def __post_init__(self) -> None:
        if self.num_particles < 2:
            raise ValueError(f"num_particles must be >= 2, got {self.num_particles}")
        if self.num_steps <= self.sample_every:
            raise ValueError(f"num_steps ({self.num_steps}) must exceed sample_every ({self.sample_every})")

    @property
    def num_frames(self) -> int:
        return self.num_steps // self.sample_every - 1

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
    """Draw ``count`` initial states in the published per-trajectory order."""
    n, d = params.num_particles, params.dim
    charges = np.empty((count, n))
    positions = np.empty((count, n, d))
    velocities = np.empty((count, n, d))
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
    """Integrate with leapfrog. Returns positions and velocities, each [S, T, N, D]."""
    loc = init.positions.copy()
    vel = init.velocities.copy()
    count = loc.shape[0]
    shape = (count, params.num_frames, params.num_particles, params.dim)
    saved_loc, saved_vel = np.empty(shape), np.empty(shape)
    vel += params.dt * coulomb_forces(loc, init.charges, params)  # the half step of leapfrog
    frame = 0
    for step in tqdm(range(1, params.num_steps), disable=not progress, desc="simulating", unit="step", leave=False):
        loc += params.dt * vel
        if step % params.sample_every == 0:
            saved_loc[:, frame], saved_vel[:, frame] = loc, vel
            frame += 1
            if frame == params.num_frames:
                break
        vel += params.dt * coulomb_forces(loc, init.charges, params)
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
    params: NBodyParams, rng: np.random.RandomState, count: int, drawn: int | None = None, batch: int = 1000,
    progress: bool = False,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Simulate ``count`` trajectories; ``drawn`` >= count initial states are consumed from rng.

    Yields (positions [T, N, D], velocities [T, N, D], charges [N]) per trajectory, simulated in
    batches so memory stays bounded.
    """
    drawn = count if drawn is None else drawn
    if drawn < count:
        raise ValueError(f"drawn ({drawn}) must be >= count ({count})")
    init = draw_initial_states(params, rng, drawn)
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


def write_nbody_dataset(
    out_dir: str | os.PathLike[str],
    params: NBodyParams,
    splits: Sequence[SplitSpec] = EGNN_SPLITS,
    seed: int = 43,
    overwrite: bool = False,
    progress: bool = False,
) -> dict[str, Path]:
    """Simulate every split from one seeded RNG and write ``<out_dir>/<split>.zarr`` stores, all or
    none (see :func:`scaleq.data.staging.staged_dataset`)."""
    rng = np.random.RandomState(seed)
    attrs = StoreAttrs(
        kind="nbody",
        dim=params.dim,
        dt=params.frame_dt,
        frame_stride=params.sample_every,
        feature_names=["charge"],
        provenance=default_provenance("scaleq.data.nbody charged-particle simulator", seed),
        extra={"simulator": dataclasses.asdict(params)},
    )
    with staged_dataset(out_dir, [spec.name for spec in splits], overwrite) as staging:
        for spec in splits:
            with StoreWriter(staging[spec.name], attrs) as writer:
                for loc, vel, charges in generate(params, rng, spec.count, spec.drawn, progress=progress):
                    writer.add(Trajectory(positions=loc, velocities=vel, node_features=charges[:, None]))
    return {spec.name: Path(out_dir) / f"{spec.name}.zarr" for spec in splits}
