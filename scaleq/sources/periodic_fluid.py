"""A small periodic fluid: soft spheres in a cubic periodic box, a dataset for periodic models.

N particles in the box [0, L)^D interact by a soft repulsive pair potential, U(r) = eps (1 - r / sigma)^2
for r < sigma (0 beyond), with every pair difference taken by minimum image (sigma < L / 2, so each
pair meets through one image only). Velocity Verlet with a fixed step; the initial positions are
uniform in the box (soft spheres tolerate overlaps), the initial velocities Gaussian with the total
momentum removed. All trajectories of a call are integrated together (numpy, [T, N, N, D] pair
arrays), reproducibly from one seed.

Stored as every other store (scaleq.store): positions CONTINUOUS (unwrapped: a particle that
leaves the box is not put back, so x[t + k] - x[t] is its true displacement and the MSE and the
Linear baseline mean what they do elsewhere), the box in the store's ``bounds`` (what
``graph.periodic`` makes periodic: the graph builder and the models see positions only modulo the
box), and ``extra.periodic`` saying so.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scaleq.store.format import StoreAttrs, Trajectory, default_provenance
from scaleq.store.staging import staged_dataset
from scaleq.store.writer import StoreWriter


@dataclass(frozen=True)
class FluidParams:
    """The fluid and its integration. ``frames`` stored frames, one every ``sample_every`` steps."""

    num_particles: int = 32
    box: float = 4.0  # side L of the cubic box [0, L)^D
    dim: int = 3
    sigma: float = 1.0  # interaction range (< L / 2)
    epsilon: float = 1.0  # strength
    temperature: float = 0.5  # variance of each initial velocity component
    dt: float = 0.01
    sample_every: int = 10
    frames: int = 50

    def __post_init__(self) -> None:
        if self.num_particles < 2 or self.dim < 1 or self.frames < 2 or self.sample_every < 1:
            raise ValueError(f"fluid: need >= 2 particles, dim >= 1, frames >= 2, sample_every >= 1, got {self}")
        if not 0 < self.sigma < self.box / 2:
            raise ValueError(f"fluid: sigma must be in (0, box / 2) so each pair meets through one image, got "
                             f"sigma={self.sigma}, box={self.box}")
        if self.dt <= 0 or self.temperature < 0 or self.epsilon < 0:
            raise ValueError(f"fluid: need dt > 0, temperature >= 0, epsilon >= 0, got {self}")


def pair_forces(positions: np.ndarray, params: FluidParams) -> np.ndarray:
    """Soft-sphere forces by minimum image.

    Shapes: positions [T, N, D] (any image) -> forces [T, N, D]
    """
    diff = positions[:, :, None, :] - positions[:, None, :, :]  # [T, N, N, D] x_i - x_j
    diff -= params.box * np.floor(diff / params.box + 0.5)
    dist = np.sqrt((diff**2).sum(-1, keepdims=True))  # [T, N, N, 1]
    inside = (dist < params.sigma) & (dist > 0)
    # -dU/dr = 2 eps (1 - r / sigma) / sigma, along (x_i - x_j) / r
    magnitude = np.where(inside, 2 * params.epsilon * (1 - dist / params.sigma) / params.sigma, 0.0)
    return (magnitude * diff / np.where(inside, dist, 1.0)).sum(2)


def simulate_fluid(params: FluidParams, count: int, rng: np.random.RandomState) -> tuple[np.ndarray, np.ndarray]:
    """``count`` trajectories. Shapes: -> positions [T, F, N, D], velocities [T, F, N, D] (F frames)."""
    shape = (count, params.num_particles, params.dim)
    x = rng.uniform(0.0, params.box, size=shape)
    v = rng.normal(scale=np.sqrt(params.temperature), size=shape)
    v -= v.mean(1, keepdims=True)  # no drift of the whole fluid
    force = pair_forces(x, params)
    positions, velocities = [x.copy()], [v.copy()]
    for step in range(1, (params.frames - 1) * params.sample_every + 1):
        v += 0.5 * params.dt * force
        x += params.dt * v
        force = pair_forces(x, params)
        v += 0.5 * params.dt * force
        if step % params.sample_every == 0:
            positions.append(x.copy())
            velocities.append(v.copy())
    return np.stack(positions, 1), np.stack(velocities, 1)


def write_fluid_dataset(
    out_dir: str | os.PathLike[str], params: FluidParams, splits: Sequence[tuple[str, int]],
    seed: int = 0, overwrite: bool = False,
) -> dict[str, Path]:
    """Simulate every split (name, trajectories) from one seeded RNG and write
    ``<out_dir>/<split>.zarr`` stores with the periodic box in ``bounds``, all or none."""
    rng = np.random.RandomState(seed)
    attrs = StoreAttrs(
        kind="periodic_fluid", dim=params.dim, dt=params.dt * params.sample_every, frame_stride=params.sample_every,
        default_radius=1.5 * params.sigma, bounds=[[0.0, params.box]] * params.dim, feature_names=["type"],
        provenance=default_provenance("scaleq.sources.periodic_fluid soft-sphere simulator", seed),
        extra={"simulator": dataclasses.asdict(params),
               "periodic": "cubic box 'bounds', forces by minimum image; positions stored unwrapped (continuous)"},
    )
    with staged_dataset(out_dir, [name for name, _ in splits], overwrite) as staging:
        for name, count in splits:
            positions, velocities = simulate_fluid(params, count, rng)
            with StoreWriter(staging[name], attrs) as writer:
                for pos, vel in zip(positions, velocities, strict=True):
                    writer.add(Trajectory(positions=pos.astype(np.float32), velocities=vel.astype(np.float32),
                                          node_features=np.ones((params.num_particles, 1), dtype=np.float32)))
    return {name: Path(out_dir) / f"{name}.zarr" for name, _ in splits}
