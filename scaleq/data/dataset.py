"""Samples from a store: the graph at frame t and the target at frame t + delta.

The sample index is a list of (trajectory, start frame) pairs built from the store's table at
start-up (no data is read for it); each sample then reads just the frames it needs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader as GraphLoader

from scaleq.sample_options import VelocitySource, check_sample_options, first_input_frame
from scaleq.store.format import NUM_FRAMES, StoreError
from scaleq.store.reader import TrajectoryStore, open_store


@dataclass(frozen=True, kw_only=True)
class SampleSpec:
    """Which frames make a sample, and how its velocity is found.

    delta: target frame is t + delta.
    input_frame: use only this start frame t of each trajectory (EGNN's N-body: 30); None: many.
    starts_per_trajectory: draw this many start frames per trajectory at random with ``seed``
        (FastEGNN's Water-3D: 15); None: every valid start frame.
    velocity: 'store' reads stored velocities; 'backward' uses x[t] - x[t-1] and 'forward'
        x[t+1] - x[t] (the published FastEGNN code), both per frame.
    max_samples: keep only the first samples of the index (None: all).
    """

    delta: int
    input_frame: int | None = None
    starts_per_trajectory: int | None = None
    velocity: VelocitySource = "backward"
    max_samples: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        check_sample_options(delta=self.delta, input_frame=self.input_frame,
                             starts_per_trajectory=self.starts_per_trajectory, velocity=self.velocity)


def build_index(store: TrajectoryStore, spec: SampleSpec) -> np.ndarray:
    """All (trajectory, start frame) pairs of the store. Shape: [num_samples, 2] int64."""
    first = first_input_frame(spec.velocity)
    rng = np.random.default_rng(spec.seed)
    pairs: list[np.ndarray] = []
    for s, num_frames in enumerate(store.table[:, NUM_FRAMES]):
        last = int(num_frames) - 1 - spec.delta  # the last start frame whose target exists
        if spec.velocity == "forward":
            last = min(last, int(num_frames) - 2)
        if spec.input_frame is not None:
            if not first <= spec.input_frame <= last:
                raise StoreError(
                    f"{store.path}: trajectory {s} has {num_frames} frames; input frame {spec.input_frame} "
                    f"with delta {spec.delta} and {spec.velocity} velocities needs frames "
                    f"{spec.input_frame - first}..{spec.input_frame + spec.delta}"
                )
            starts = np.array([spec.input_frame])
        else:
            starts = np.arange(first, last + 1)
            if spec.starts_per_trajectory is not None and len(starts) > spec.starts_per_trajectory:
                starts = np.sort(rng.choice(starts, spec.starts_per_trajectory, replace=False))
        pairs.append(np.stack([np.full(len(starts), s), starts], axis=1))
    index = np.concatenate(pairs).astype(np.int64)
    if len(index) == 0:
        raise StoreError(f"{store.path}: no trajectory is long enough for delta {spec.delta}")
    return index[: spec.max_samples] if spec.max_samples is not None else index


class TrajectoryDataset(torch.utils.data.Dataset):
    """Samples as PyG ``Data``.

    Fields (N nodes of the sample's trajectory, D dims, F store features):
        pos [N, D] input coordinates, vel [N, D] input velocities, target [N, D] coordinates at
        t + delta, h [N, 1 + F] invariant features [|v|, features / max |feature|],
        node_attr [N, F] raw static features, horizon [1] time from input to target in the
        velocity's units (so x + v * horizon is the Linear baseline), box [1, D, 2] the store's
        ``bounds`` (lower, upper per axis; the box of periodic radius graphs) when it has them,
        and, when the store has static edges, bond_index [2, E] and bond_attr [E, Fe].

    ``node_features`` keeps only the store features of these names (``attrs.feature_names``), in
    this order (e.g. ``["charge"]`` of an MD store's charge, element and type); None keeps all.
    ``scale_from`` is the store whose statistics scale the features: validation and test sets
    pass the training store, so all three splits share one scale (default: this store).
    """

    def __init__(
        self,
        store: TrajectoryStore | str | os.PathLike[str],
        spec: SampleSpec,
        node_features: Sequence[str] | None = None,
        scale_from: TrajectoryStore | None = None,
    ) -> None:
        self.store = store if isinstance(store, TrajectoryStore) else open_store(store)
        self.spec = spec
        if spec.velocity == "store" and not self.store.has_velocities:
            raise StoreError(f"{self.store.path}: velocity 'store' asked for, but the store has no 'velocities' array")
        self.index = build_index(self.store, spec)
        self.columns = _feature_columns(self.store, node_features)
        scale_store = scale_from if scale_from is not None else self.store
        self.feature_scale = _feature_scale(scale_store, self.columns, self.store.num_node_features)
        # Stored velocities are per unit time; finite differences are per frame.
        self.horizon = spec.delta * (self.store.attrs.dt if spec.velocity == "store" else 1.0)
        bounds = self.store.attrs.bounds
        self.box = torch.tensor(bounds, dtype=torch.float32).unsqueeze(0) if bounds is not None else None

    @property
    def num_node_attr(self) -> int:
        """Width of ``node_attr`` (the static features kept)."""
        return len(self.columns) if self.columns is not None else self.store.num_node_features

    @property
    def num_node_features(self) -> int:
        """Width of ``h``."""
        return 1 + self.num_node_attr

    def __len__(self) -> int:
        return len(self.index)

    def _check_finite(self, s: int, array: str, frames: list[int] | None, values: np.ndarray) -> None:
        """Refuse NaN or inf in what a sample read ([T, N, D] frames, or [1, N, F] features): a store
        damaged, or written by another tool, after the writer's own check. Names the store, the
        array, the trajectory and the frame."""
        bad = _first_bad_frame(values)
        if bad is None:
            return
        k, count = bad
        where = f"frame {frames[k]} of trajectory {s}" if frames is not None else f"trajectory {s}"
        raise StoreError(
            f"{self.store.path}: array '{array}', {where}: {count} values are NaN or infinite; repair or "
            "re-create the store (data_prep/*.py)"
        )

    def __getitem__(self, i: int) -> Data:
        s, t = (int(v) for v in self.index[i])
        delta, velocity = self.spec.delta, self.spec.velocity
        if velocity == "store":
            frames = [t, t + delta]
            read = self.store.frames(s, frames)
            pos, target = read
            vel = self.store.frames(s, [t], "velocities")[0]
            self._check_finite(s, "velocities", [t], vel[None])
        elif velocity == "backward":
            frames = [t - 1, t, t + delta]
            read = self.store.frames(s, frames)
            prev, pos, target = read
            vel = pos - prev
        else:
            frames = [t, t + 1, t + delta]
            read = self.store.frames(s, frames)
            pos, nxt, target = read
            vel = nxt - pos
        self._check_finite(s, "positions", frames, read)
        pos_t, vel_t = torch.from_numpy(pos), torch.from_numpy(vel)
        features = self.store.node_features(s)
        self._check_finite(s, "node_features", None, features[None])
        node_attr = torch.from_numpy(features[:, self.columns] if self.columns is not None else features)
        h = torch.cat([vel_t.norm(dim=-1, keepdim=True), node_attr / self.feature_scale], dim=-1)
        data = Data(
            pos=pos_t,
            vel=vel_t,
            target=torch.from_numpy(target),
            h=h,
            node_attr=node_attr,
            horizon=torch.tensor([self.horizon], dtype=torch.float32),
            num_nodes=pos.shape[0],
        )
        if self.box is not None:
            data.box = self.box
        if self.store.has_edges:
            bond_index, bond_attr = self.store.edges(s)
            data.bond_index = torch.from_numpy(bond_index)
            data.bond_attr = torch.from_numpy(bond_attr)
        return data


def _first_bad_frame(frames: np.ndarray) -> tuple[int, int] | None:
    """(frame position, count) of the first frame of [T, N, D] holding NaN or inf, else None.
    One vectorised pass over the few frames a sample reads: cheap next to building its graph."""
    finite = np.isfinite(frames.reshape(frames.shape[0], -1)).all(axis=1)
    if finite.all():
        return None
    k = int(np.argmin(finite))
    return k, int((~np.isfinite(frames[k])).sum())


def _feature_scale(store: TrajectoryStore, columns: list[int] | None, width: int) -> torch.Tensor:
    """max |feature| per kept column from ``store``'s statistics (1 where absent or zero)."""
    max_abs = np.asarray(store.statistics.get("node_features_max_abs") or [1.0] * store.num_node_features)
    if max_abs.shape != (width,):
        raise StoreError(f"{store.path}: statistics hold {max_abs.shape[0]} node features, the data {width}: "
                         "the splits do not come from one dataset")
    max_abs = max_abs[columns] if columns is not None else max_abs
    return torch.as_tensor(np.where(max_abs > 0, max_abs, 1.0), dtype=torch.float32)


def _feature_columns(store: TrajectoryStore, names: Sequence[str] | None) -> list[int] | None:
    if names is None:
        return None
    available = list(store.attrs.feature_names)
    unknown = [n for n in names if n not in available]
    if unknown or not names:
        raise StoreError(f"{store.path}: node features {list(names)} asked for; the store has {available}")
    return [available.index(n) for n in names]


class ShardedSampler(torch.utils.data.Sampler[int]):
    """This rank's share of a (shuffled) sample order, resumable mid-epoch.

    The order of epoch e is a permutation drawn from ``seed + e`` (the same on every rank), and
    rank r takes every world_size-th sample from r. With ``pad`` (training) the order is first
    padded to a multiple of ``world_size`` by repeating its start, as DistributedSampler does, so
    every rank takes the same number of steps; without it (evaluation) every sample is seen
    exactly once across the ranks, whose shares may then differ by one. ``start`` skips that
    many of this rank's samples (the ones already trained on before a checkpoint).
    """

    def __init__(
        self, num_samples: int, *, shuffle: bool, seed: int, rank: int = 0, world_size: int = 1, pad: bool = True
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.num_samples = num_samples
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.pad = pad
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def _total(self) -> int:
        """Length of the (padded) order that the ranks share."""
        return -(-self.num_samples // self.world_size) * self.world_size if self.pad else self.num_samples

    def __len__(self) -> int:
        return max(len(range(self.rank, self._total(), self.world_size)) - self.start, 0)

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.num_samples, generator=generator)
        else:
            order = torch.arange(self.num_samples)
        total = self._total()
        if total > self.num_samples:
            order = order.repeat(-(-total // self.num_samples))[:total]
        return iter(order[self.rank :: self.world_size][self.start :].tolist())


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask where the system has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def loader_workers(asked: int) -> int:
    """``data.num_workers`` as this machine can run it: a config written for a 16-core node asks
    for more loader processes than a laptop has, which only oversubscribes it (and torch warns
    once per loader). Workers read the same samples in the same order whatever their number."""
    return min(asked, usable_cores())


def make_loader(
    dataset: TrajectoryDataset, batch_size: int, sampler: ShardedSampler, num_workers: int, pin_memory: bool = False
) -> DataLoader:
    """The DataLoader every reader of a dataset uses: PyG batches in ``sampler``'s order, read by
    ``num_workers`` processes, at most as many as this process may use cores (see
    :func:`loader_workers`)."""
    return GraphLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=loader_workers(num_workers),
        persistent_workers=False,
        pin_memory=pin_memory,
    )
