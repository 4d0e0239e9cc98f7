"""The charged-particle integrator of :mod:`scaleq.sources.nbody` in torch: every trajectory of a
split advances together, on CPU threads or a GPU, in float64.

The initial states still come from :func:`scaleq.sources.nbody.draw_initial_states` (the published
per-trajectory NumPy draw order, so a seed gives the same systems); only the integration moves to
torch. Each step computes the same quantities as the NumPy :func:`~scaleq.sources.nbody.coulomb_forces`
(|x_i - x_j|^2, 1 / (d^2 sqrt(d^2)), clip at +-0.1/dt, v += F dt, x += v dt) to float64 rounding,
arranged differently (see :func:`coulomb_forces_torch`), so a test compares the two with a
tolerance and not bit for bit. The systems are chaotic (close encounters are clipped), so a
rounding difference grows with the steps: over EGNN's 5000 steps the two can part by more than
rounding in a few trajectories; both are equally valid integrations of the same initial states.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch
from tqdm import tqdm


# What the integrator reads of scaleq.sources.nbody's NBodyParams and InitialState, stated here so
# that this module needs nothing from that one (which imports this one to integrate with torch).
class NBodyParams(Protocol):
    interaction_strength: float
    dt: float
    num_particles: int
    num_frames: int
    dim: int
    saved_steps: Sequence[int]


class InitialState(Protocol):
    charges: np.ndarray  # [S, N, 1]
    positions: np.ndarray  # [S, N, D]
    velocities: np.ndarray  # [S, N, D]

# Bytes of the [S, N, N] pair arrays one chunk of trajectories may take (about four of them live
# at once); on a GPU, chunks are sized from its free memory instead.
CPU_CHUNK_BYTES = 256 * 2**20


def coulomb_forces_torch(positions: torch.Tensor, charges: torch.Tensor, params: NBodyParams) -> torch.Tensor:
    """Clipped pairwise forces. Shapes: positions [S, N, D], charges [S, N] -> [S, N, D].

    The same quantities as :func:`scaleq.sources.nbody.coulomb_forces`, arranged for speed: |x_i - x_j|^2
    one axis at a time (no [S, N, N, D] array), and sum_j s_ij (x_i - x_j) as
    x_i sum_j s_ij - (S x)_i, a batched matrix product (3x the NumPy speed on one thread). The
    subtraction there cancels digits when |x| is large against the forces: rounding, about 1e-13
    of the force."""
    dist2: torch.Tensor | None = None
    for axis in positions.unbind(-1):
        d = axis[:, :, None] - axis[:, None, :]  # [S, N, N]
        dist2 = d * d if dist2 is None else dist2.addcmul_(d, d)
    assert dist2 is not None
    dist2.diagonal(dim1=1, dim2=2).fill_(float("inf"))  # no self-interaction: 1 / inf^1.5 = 0
    size = (params.interaction_strength * charges[:, :, None] * charges[:, None, :]).div_(dist2.mul_(dist2.sqrt()))
    forces = positions * size.sum(-1, keepdim=True) - torch.bmm(size, positions)
    max_force = 0.1 / params.dt
    return forces.clamp_(-max_force, max_force)


def chunk_size(params: NBodyParams, device: torch.device) -> int:
    """Trajectories simulated together: as many as keep the pair array within the memory budget."""
    per_trajectory = params.num_particles**2 * 4 * 8
    budget = CPU_CHUNK_BYTES
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = free // 2
    return max(1, budget // per_trajectory)


def simulate_torch(
    params: NBodyParams, init: InitialState, device: str | torch.device = "cpu", progress: bool = False,
    chunk: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Integrate every trajectory of ``init`` as :func:`scaleq.sources.nbody.simulate` does, in torch.

    Returns positions and velocities, each [S, T, N, D] float64 NumPy arrays (on the host)."""
    device = torch.device(device)
    count = init.positions.shape[0]
    chunk = chunk or chunk_size(params, device)
    shape = (count, params.num_frames, params.num_particles, params.dim)
    saved_loc, saved_vel = np.empty(shape), np.empty(shape)
    saved = [int(s) for s in params.saved_steps]
    last = saved[-1]
    for start in range(0, count, chunk):
        stop = min(start + chunk, count)
        loc = torch.as_tensor(init.positions[start:stop], dtype=torch.float64, device=device).clone()
        vel = torch.as_tensor(init.velocities[start:stop], dtype=torch.float64, device=device).clone()
        charges = torch.as_tensor(init.charges[start:stop], dtype=torch.float64, device=device)
        out_loc = torch.empty((stop - start, *shape[1:]), dtype=torch.float64, device=device)
        out_vel = torch.empty_like(out_loc)
        frame = 0
        steps = tqdm(range(1, last + 1), disable=not progress, desc=f"simulating {start}-{stop}", unit="step",
                     leave=False)
        for step in steps:
            vel.add_(coulomb_forces_torch(loc, charges, params), alpha=params.dt)
            loc.add_(vel, alpha=params.dt)
            if step == saved[frame]:
                out_loc[:, frame], out_vel[:, frame] = loc, vel
                frame += 1
        saved_loc[start:stop] = out_loc.cpu().numpy()
        saved_vel[start:stop] = out_vel.cpu().numpy()
    return saved_loc, saved_vel


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


__all__ = ["coulomb_forces_torch", "simulate_torch", "chunk_size", "default_device"]
