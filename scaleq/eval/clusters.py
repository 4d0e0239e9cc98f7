"""Pictures of a hierarchical model's clusters: a system coloured by its soft cluster assignment.

    plot_clusters(pos, assignments, "adk_clusters.png", bonds=bond_index)
    cluster_plot_from_run("runs/eghn_protein")   # a trained run: first test sample -> PNG
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch_geometric.data import Batch

from scaleq.eval.loading import load_run
from scaleq.graph.builder import GraphBuilder
from scaleq.io import atomic_write
from scaleq.run_directory import BEST, RunDirectory


def plot_clusters(
    pos: np.ndarray | torch.Tensor,
    assignments: np.ndarray | torch.Tensor,
    path: str | os.PathLike[str],
    *,
    bonds: np.ndarray | torch.Tensor | None = None,
    title: str = "",
) -> Path:
    """Write a PNG: the nodes in 3D (or 2D) coloured by their most likely cluster, bonds as grey
    lines, and beside it each cluster's size (sum of its soft assignments).

    Shapes:
        pos: [N, D] with D = 2 or 3, assignments: [N, K], bonds: [2, E] node ids (optional)
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    pos, s = _numpy(pos), _numpy(assignments)
    if pos.ndim != 2 or pos.shape[1] not in (2, 3):
        raise ValueError(f"plot_clusters: pos must be [N, 2] or [N, 3], got shape {pos.shape}")
    if s.ndim != 2 or s.shape[0] != pos.shape[0]:
        raise ValueError(f"plot_clusters: assignments must be [N, K] with N = {pos.shape[0]}, got shape {s.shape}")
    k = s.shape[1]
    label = s.argmax(1)
    colours = plt.get_cmap("tab20" if k > 10 else "tab10")(np.arange(k) % (20 if k > 10 else 10))
    three_d = pos.shape[1] == 3

    fig = plt.figure(figsize=(11, 5))
    ax = fig.add_subplot(1, 2, 1, projection="3d" if three_d else None)
    if bonds is not None:
        b = _numpy(bonds).astype(np.int64)
        segments = np.stack([pos[b[0]], pos[b[1]]], axis=1)  # [E, 2, D]
        if three_d:
            from mpl_toolkits.mplot3d.art3d import Line3DCollection

            ax.add_collection3d(Line3DCollection(segments, colors="0.6", linewidths=0.6))
        else:
            from matplotlib.collections import LineCollection

            ax.add_collection(LineCollection(segments, colors="0.6", linewidths=0.6))
    ax.scatter(*pos.T, c=colours[label], s=12, **({"depthshade": False} if three_d else {}))
    ax.set_title(title or f"{pos.shape[0]} nodes coloured by cluster (K = {k})")
    # few, small tick labels: at the default density a 3-D panel's labels run into each other
    axes = (ax.xaxis, ax.yaxis, ax.zaxis) if three_d else (ax.xaxis, ax.yaxis)
    for axis in axes:
        axis.set_major_locator(MaxNLocator(4))
    ax.tick_params(labelsize=7)
    if three_d:
        ax.set_box_aspect(np.maximum(np.ptp(pos, axis=0), 1e-6))  # equal scale on every axis
    else:
        ax.set_aspect("equal")

    bar = fig.add_subplot(1, 2, 2)
    bar.bar(np.arange(k), s.sum(0), color=colours)
    bar.set_xticks(np.arange(k))
    bar.set_xlabel("cluster")
    bar.set_ylabel("size (sum of soft assignments)")
    bar.set_title(f"cluster sizes; {np.mean(s.max(1)):.2f} mean largest assignment")
    fig.tight_layout()

    target = Path(path)
    try:
        with atomic_write(target) as f:
            fig.savefig(f, format="png", dpi=120)
    finally:
        plt.close(fig)
    return target


def cluster_plot_from_run(
    run_dir: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    split: str = "test",
    index: int = 0,
    checkpoint: str = BEST,
) -> Path:
    """Load a finished run (its config.yaml and checkpoints/<checkpoint>), run the model on one
    sample of ``split`` and plot the input frame coloured by the predicted clusters. Returns the
    PNG path (default: <run_dir>/clusters_<split>_<index>.png)."""
    loaded = load_run(run_dir, checkpoint=checkpoint)
    config, model, run = loaded.config, loaded.model, loaded.run_dir
    if split not in loaded.datasets:
        raise ValueError(f"split must be one of {sorted(loaded.datasets)}, got {split!r}")
    dataset = loaded.datasets[split]
    if not 0 <= index < len(dataset):
        raise IndexError(f"{split}: sample {index} requested, the split has {len(dataset)}")
    graph = GraphBuilder.from_config(config.graph)
    batch = graph(Batch.from_data_list([dataset[index]]), training=False)
    with torch.no_grad():
        output = model(batch)
    if "assignments" not in output:
        raise ValueError(f"model {config.model.name!r} returns no cluster assignments (outputs: {sorted(output)})")
    bonds = getattr(batch, "local_index", None)
    title = f"{config.name}: {split} sample {index}, {batch.num_nodes} nodes, K = {output['assignments'].shape[1]}"
    return plot_clusters(batch.pos, output["assignments"], out or RunDirectory(run).clusters(split, index),
                         bonds=bonds, title=title)


def _numpy(value: np.ndarray | torch.Tensor) -> np.ndarray:
    return value.detach().cpu().float().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
