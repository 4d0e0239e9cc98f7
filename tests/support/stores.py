"""Tiny stores for tests: made here, never downloaded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch_geometric.data import Batch

from scaleq.sources.nbody import NBodyParams, SplitSpec, write_nbody_dataset
from scaleq.store.format import StoreAttrs, Trajectory
from scaleq.store.reader import TrajectoryStore
from scaleq.store.writer import write_store


def random_walk_trajectories(
    num_trajectories: int, num_frames: int, num_nodes: list[int] | int, dim: int = 3, seed: int = 0,
    velocities: bool = False, bonds: bool = False,
) -> list[Trajectory]:
    """Smooth random trajectories with ragged node counts, optional velocities and chain bonds."""
    rng = np.random.default_rng(seed)
    sizes = num_nodes if isinstance(num_nodes, list) else [num_nodes] * num_trajectories
    out = []
    for n in sizes[:num_trajectories]:
        steps = rng.normal(scale=0.05, size=(num_frames, n, dim))
        pos = rng.normal(size=(1, n, dim)) + np.cumsum(steps, axis=0)
        edge_index = edge_attr = None
        if bonds:
            edge_index = np.stack([np.arange(n - 1), np.arange(1, n)])
            edge_attr = np.linalg.norm(pos[0, 1:] - pos[0, :-1], axis=-1, keepdims=True)
        out.append(Trajectory(
            positions=pos.astype(np.float32),
            node_features=rng.integers(0, 3, size=(n, 1)).astype(np.float32),
            velocities=steps.astype(np.float32) if velocities else None,
            edge_index=edge_index,
            edge_attr=edge_attr,
        ))
    return out


def tiny_store(path: Path, **kwargs: object) -> TrajectoryStore:
    """A small ragged store at ``path`` (kwargs go to :func:`random_walk_trajectories`)."""
    options = {"num_trajectories": 3, "num_frames": 12, "num_nodes": [5, 7, 4], **kwargs}
    trajectories = random_walk_trajectories(**options)  # type: ignore[arg-type]
    dim = trajectories[0].positions.shape[2]
    attrs = StoreAttrs(kind="synthetic", dim=dim, dt=0.1, feature_names=["type"])
    return write_store(path, attrs, trajectories)


def tiny_nbody_dataset(root: Path, particles: int = 5, train: int = 64, valid: int = 32, test: int = 32,
                       seed: int = 7, steps: int = 5200) -> Path:
    """A short N-body dataset with the real simulator (frames up to 50 with the default ``steps``;
    frame f is simulator step 100 (f + 1), so fewer steps make fewer, cheaper frames)."""
    params = NBodyParams(num_particles=particles, num_steps=steps)
    splits = [SplitSpec("train", train), SplitSpec("valid", valid), SplitSpec("test", test)]
    write_nbody_dataset(root, params, splits, seed=seed)
    return root


def random_batch(num_graphs: int = 3, nodes: tuple[int, ...] = (5, 8, 6), node_features: int = 2,
                 dim: int = 3, seed: int = 0) -> Batch:
    """A batch with pos, vel, h, node_attr, target, horizon and batch; no edges yet."""
    from torch_geometric.data import Data

    generator = torch.Generator().manual_seed(seed)
    graphs = []
    for n in nodes[:num_graphs]:
        graphs.append(Data(
            pos=torch.randn(n, dim, generator=generator),
            vel=torch.randn(n, dim, generator=generator),
            h=torch.randn(n, node_features, generator=generator),
            node_attr=torch.randn(n, 1, generator=generator),
            target=torch.randn(n, dim, generator=generator),
            horizon=torch.tensor([1.0]),
            num_nodes=n,
        ))
    return Batch.from_data_list(graphs)
