"""EGHN's M-complex systems (Han et al. 2022, Sec. 4.1): charged particles fixed on M rigid bodies
(sticks, triangles, tetrahedra, ...) that move under the pairwise Coulomb-like forces of every pair.

Read from the authors' generator (hanjq17/EGHN, ``simulation/datagen``: ``system.py``,
``physical_objects.py`` class ``Complex``, ``generate_dataset_complex.py``), reimplemented with all
trajectories of a system type integrated at once in torch (float64):

- Sizes: ``systems`` (J) system types are drawn once per dataset; each is M complex sizes drawn
  without replacement from 2 .. 2 (N/M) - 2 with weights (reversed targets + 4, the first three
  made equal). Each trajectory picks a system type uniformly ("single system": J = 1).
- Initial state (one trajectory, in the published draw order): charges from [1, -1]; M centres
  uniform in [-s, s]^3, s = (n / 5)^(1/3) + 0.5, redrawn (at most 20 times) until 1.6 apart;
  positions N(0, s^2) (drawn, then replaced) and velocities of norm 0.5; each complex takes
  its particles at random among those left; its particles sit at its centre plus a random
  direction times (U/2 + 0.6) d_min / 1.6 (d_min: the closest two centres); each complex gets the
  mean angular velocity w of its particles about its centroid, and its particles the velocity
  w x r (the centroid velocity vc, their mean velocity, moves the body from the first step on).
- Step (dt = 0.001; forces clipped to +-0.1/dt per component, as in the N-body system): the
  centroid moves with a_c = mean(F) / n_c (the published code divides the mean once more by the
  mass, "I did some modification here"); w += dt M / J with torque M = sum r x F and
  J = sum_i |r_i, perpendicular to w|^2 / 3 (the published code's mean over the axes); the body
  turns by |w| dt about w (Rodrigues' rotation matrix); x = x_c + R r, v = v_c + w x R r.
  The rotation keeps every distance within a complex, so the sticks stay rigid to rounding.
- Frames after steps 1, 101, ..., 4901 (50 frames); the task is frame 10 -> 25 (1500 steps).
- A trajectory with any velocity component above 5 at the end is redrawn (the published is_valid).

Differences from the published generator: one seeded RNG draws every trajectory in order (the
published one draws in unseeded worker processes, so its files cannot be regenerated); forces use
x_i - x_j directly instead of |a|^2 + |b|^2 - 2 a.b (a rounding-level change).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from scaleq.store.format import StoreAttrs, StoreError, Trajectory, default_provenance
from scaleq.store.staging import staged_dataset
from scaleq.store.writer import StoreWriter


@dataclass(frozen=True, kw_only=True)
class MComplexParams:
    """The (M, N/M, J) of a dataset and the published simulator constants."""

    complexes: int = 3  # M
    average_size: int = 3  # N/M
    systems: int = 1  # J: system types (1: "single system", 5: the paper's "multiple systems")
    loc_std: float = 1.0
    vel_norm: float = 0.5
    interaction_strength: float = 1.0
    dt: float = 0.001
    num_steps: int = 5000
    sample_every: int = 100
    max_speed: float = 5.0  # a trajectory with a velocity component above this at the end is redrawn
    min_centre_distance: float = 1.6
    max_tries: int = 20

    def __post_init__(self) -> None:
        if self.average_size < 2:
            raise ValueError(f"average_size must be >= 2, got {self.average_size}")
        if not 1 <= self.complexes <= len(self.targets):
            raise ValueError(f"complexes must be 1 .. {len(self.targets)} for average_size {self.average_size} "
                             f"(sizes are drawn without replacement from {self.targets.tolist()}), got {self.complexes}")
        if self.systems < 1:
            raise ValueError(f"systems must be >= 1, got {self.systems}")
        if self.num_steps <= self.sample_every:
            raise ValueError(f"num_steps ({self.num_steps}) must exceed sample_every ({self.sample_every})")

    @property
    def targets(self) -> np.ndarray:
        """The complex sizes a system type draws from."""
        return np.arange(2, max(3, self.average_size * 2 - 1))

    @property
    def saved_steps(self) -> np.ndarray:
        return np.arange(0, self.num_steps, self.sample_every) + 1

    @property
    def num_frames(self) -> int:
        return len(self.saved_steps)


def draw_system_types(params: MComplexParams, rng: np.random.RandomState) -> list[np.ndarray]:
    """J lists of M complex sizes, as the published generator draws them once per dataset."""
    targets = params.targets
    weights = (targets[::-1] + 4).astype(np.float64)
    if len(weights) >= 3:  # the published try-block: the first three weights equal the second
        weights[0] = weights[1]
        weights[2] = weights[1]
    weights = weights / weights.sum()
    return [rng.choice(targets, size=params.complexes, replace=False, p=weights) for _ in range(params.systems)]


@dataclass(frozen=True)
class ComplexState:
    """Initial state of trajectories that share one system type.

    Shapes: charges [S, N]; positions [S, N, D]; velocities [S, N, D] (w x r, as stored at the start);
    membership [S, N] (complex of each particle); centre_velocity [S, M, D]; angular [S, M, D]."""

    charges: np.ndarray
    positions: np.ndarray
    velocities: np.ndarray
    membership: np.ndarray
    centre_velocity: np.ndarray
    angular: np.ndarray


def _draw_one(params: MComplexParams, sizes: np.ndarray, rng: np.random.RandomState) -> tuple[np.ndarray, ...]:
    """One initial state in the published draw order (``System.__init__``, ``Complex.initialize``)."""
    n, dim, m = int(sizes.sum()), 3, len(sizes)
    std = params.loc_std * (n / 5.0) ** (1.0 / 3.0) + 0.5
    charges = rng.choice([1.0, -1.0], size=(n, 1))[:, 0]
    centres = np.zeros((m, dim))
    for i in range(m):
        for _ in range(params.max_tries):
            candidate = 2 * (rng.rand(dim) - 0.5) * std
            if all(np.sqrt(((centres[j] - candidate) ** 2).sum()) >= params.min_centre_distance for j in range(i)):
                break
        centres[i] = candidate  # after max_tries the last candidate is accepted, as published
    gaps = [np.sqrt(((centres[i] - centres[j]) ** 2).sum()) for i in range(m) for j in range(i + 1, m)]
    radius = (min(gaps) if gaps else 1e10) / 1.6
    positions = rng.randn(n, dim) * std  # replaced below; drawn to keep the published stream
    velocities = rng.randn(n, dim)
    velocities = velocities / np.sqrt((velocities**2).sum(-1)).reshape(-1, 1) * params.vel_norm
    membership = np.empty(n, dtype=np.int64)
    members: list[list[int]] = []
    selected: list[int] = []
    for c, size in enumerate(sizes):
        rest = [i for i in range(n) if i not in selected]
        idx = [int(i) for i in rng.choice(rest, size=int(size), replace=False)]
        selected.extend(idx)
        members.append(idx)
        membership[idx] = c
    centre_velocity = np.zeros((m, dim))
    angular = np.zeros((m, dim))
    for c, idx in enumerate(members):
        direction = rng.randn(len(idx), dim)
        distance = (rng.rand(len(idx), 1) / 2 + 0.6) * radius
        x = centres[c] + direction / np.sqrt((direction**2).sum(-1)).reshape(-1, 1) * distance
        v = velocities[idx]
        r = x - x.mean(0)
        vc = v.mean(0)
        w = (np.cross(r, v - vc) / (r**2).sum(-1).reshape(-1, 1)).mean(0)
        positions[idx] = x
        velocities[idx] = np.cross(w, r)
        centre_velocity[c], angular[c] = vc, w
    return charges, positions, velocities, membership, centre_velocity, angular


def draw_initial_states(params: MComplexParams, sizes: np.ndarray, rng: np.random.RandomState,
                        count: int) -> ComplexState:
    parts = [_draw_one(params, sizes, rng) for _ in range(count)]
    return ComplexState(*(np.stack([p[k] for p in parts]) for k in range(6)))


def _rotation(axis: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Rodrigues' rotation by ``theta`` about unit ``axis``. Shapes: [..., 3], [...] -> [..., 3, 3]."""
    x, y, z = axis.unbind(-1)
    c, s = torch.cos(theta), torch.sin(theta)
    t = 1 - c
    return torch.stack([
        torch.stack([c + t * x * x, t * x * y - s * z, t * x * z + s * y], -1),
        torch.stack([t * x * y + s * z, c + t * y * y, t * y * z - s * x], -1),
        torch.stack([t * x * z - s * y, t * y * z + s * x, c + t * z * z], -1),
    ], -2)


def simulate_complexes(params: MComplexParams, init: ComplexState, device: str | torch.device = "cpu",
                       progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Integrate every trajectory of ``init`` at once. Returns positions, velocities [S, T, N, D]."""
    f64 = dict(dtype=torch.float64, device=device)
    x = torch.as_tensor(init.positions, **f64).clone()
    v = torch.as_tensor(init.velocities, **f64).clone()
    q = torch.as_tensor(init.charges, **f64)
    member = torch.as_tensor(init.membership, device=device)
    m = init.centre_velocity.shape[1]
    onehot = torch.nn.functional.one_hot(member, m).to(torch.float64)  # [S, N, M]
    count = onehot.sum(1)[..., None]  # [S, M, 1]
    xc = torch.einsum("snm,snd->smd", onehot, x) / count
    vc = torch.as_tensor(init.centre_velocity, **f64).clone()
    wc = torch.as_tensor(init.angular, **f64).clone()
    pair_q = params.interaction_strength * q[:, :, None] * q[:, None, :]
    max_force = 0.1 / params.dt
    saved = [int(s) for s in params.saved_steps]
    out_x = torch.empty((x.shape[0], len(saved), *x.shape[1:]), **f64)
    out_v = torch.empty_like(out_x)
    frame = 0
    gather = lambda per_complex: torch.einsum("snm,smd->snd", onehot, per_complex)  # noqa: E731
    for step in tqdm(range(1, saved[-1] + 1), disable=not progress, desc="simulating", unit="step", leave=False):
        diff = x[:, :, None, :] - x[:, None, :, :]
        dist2 = (diff * diff).sum(-1)
        dist2.diagonal(dim1=1, dim2=2).fill_(float("inf"))
        force = torch.einsum("sij,sijd->sid", pair_q / (dist2 * dist2.sqrt()), diff).clamp_(-max_force, max_force)
        r = x - gather(xc)
        vc = vc + torch.einsum("snm,snd->smd", onehot, force) / count / count * params.dt
        xc = xc + vc * params.dt
        w_node = gather(wc)
        along = (r * w_node).sum(-1, keepdim=True) / (w_node * w_node).sum(-1, keepdim=True) * w_node
        inertia = torch.einsum("snm,sn->sm", onehot, ((r - along) ** 2).mean(-1))[..., None]
        torque = torch.einsum("snm,snd->smd", onehot, torch.linalg.cross(r, force))
        wc = wc + torque / inertia * params.dt
        norm = wc.norm(dim=-1)
        rot = _rotation(wc / norm[..., None], norm * params.dt)  # [S, M, 3, 3]
        turned = torch.einsum("snm,smij,snj->sni", onehot, rot, r)
        x = gather(xc) + turned
        v = gather(vc) + torch.linalg.cross(gather(wc), turned)
        if step == saved[frame]:
            out_x[:, frame], out_v[:, frame] = x, v
            frame += 1
    return out_x.cpu().numpy(), out_v.cpu().numpy()


def complex_edges(membership: np.ndarray) -> np.ndarray:
    """Every ordered pair of distinct particles of one complex (the rigid sticks), as [2, E] (j, i)."""
    same = membership[:, None] == membership[None, :]
    np.fill_diagonal(same, False)
    target, source = np.nonzero(same)
    return np.stack([source, target])


def generate(params: MComplexParams, sizes: list[np.ndarray], rng: np.random.RandomState, count: int,
             device: str | torch.device = "cpu", progress: bool = False) -> list[tuple[np.ndarray, ...]]:
    """``count`` valid trajectories: (positions [T, N, D], velocities [T, N, D], charges [N],
    membership [N]), each of a system type picked at random; invalid ones are redrawn."""
    kinds = [int(rng.randint(0, len(sizes))) for _ in range(count)]
    result: list[tuple[np.ndarray, ...] | None] = [None] * count
    pending = list(range(count))
    while pending:
        states = {k: [] for k in range(len(sizes))}
        for i in pending:
            states[kinds[i]].append((i, _draw_one(params, sizes[kinds[i]], rng)))
        retry = []
        for drawn in states.values():
            if not drawn:
                continue
            init = ComplexState(*(np.stack([d[1][k] for d in drawn]) for k in range(6)))
            pos, vel = simulate_complexes(params, init, device, progress)
            for j, (i, _) in enumerate(drawn):
                if (vel[j, -1] > params.max_speed).any():
                    retry.append(i)
                else:
                    result[i] = (pos[j], vel[j], init.charges[j], init.membership[j])
        pending = sorted(retry)
    return [r for r in result if r is not None]


def write_mcomplex_dataset(
    out_dir: str | os.PathLike[str], params: MComplexParams, counts: Mapping[str, int], seed: int = 43,
    overwrite: bool = False, progress: bool = False, device: str | torch.device | None = None,
) -> dict[str, Path]:
    """Simulate each split (``counts``: split name -> trajectories) from one seeded RNG, after the
    dataset's system types, and write ``<out_dir>/<split>.zarr`` (all or none)."""
    if not counts or any(c < 1 for c in counts.values()):
        raise StoreError(f"mcomplex split sizes must be >= 1, got {dict(counts)}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    rng = np.random.RandomState(seed)
    sizes = draw_system_types(params, rng)
    attrs = StoreAttrs(
        kind="mcomplex", dim=3, dt=params.dt * params.sample_every, frame_stride=params.sample_every,
        feature_names=["charge"], edge_feature_names=["stick"],
        provenance=default_provenance("scaleq.sources.mcomplex (EGHN's M-complex simulator)", seed),
        extra={"simulator": dataclasses.asdict(params), "system_sizes": [s.tolist() for s in sizes]},
    )
    with staged_dataset(out_dir, list(counts), overwrite) as staging:
        for split, count in counts.items():
            with StoreWriter(staging[split], attrs) as writer:
                for pos, vel, charges, membership in generate(params, sizes, rng, count, device, progress):
                    edges = complex_edges(membership)
                    # the published local graph's indicator: 1 on every stick
                    writer.add(Trajectory(positions=pos, velocities=vel, node_features=charges[:, None],
                                          edge_index=edges, edge_attr=np.ones((edges.shape[1], 1))))
    return {split: Path(out_dir) / f"{split}.zarr" for split in counts}


__all__ = ["MComplexParams", "draw_system_types", "draw_initial_states", "simulate_complexes", "complex_edges",
           "generate", "write_mcomplex_dataset"]
