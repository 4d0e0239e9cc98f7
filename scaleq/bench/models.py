"""Forward + backward time and peak memory of model variants on the same batches.

The variants of FastEGNN's Table 1: EGNN, EGNN* (EGNN with every real edge dropped) and
FastEGNN-<C, p>. Times: all variants in one process, round-robin, best of ``repeats`` rounds.
Memory: each variant in a fresh process (``multiprocessing`` spawn), so that the peak of one does
not hide inside another's: :func:`scaleq.bench.memory.peak_memory` over one step (batch and
model already built). Graphs are
built and edges dropped once, before timing, as the published code preprocesses them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch_geometric.data import Batch, Data

from scaleq.bench.child import call_in_spawned_process
from scaleq.bench.memory import peak_memory
from scaleq.bench.timing import call_ms
from scaleq.config import LossConfig
from scaleq.graph.builder import GraphBuilder
from scaleq.io import save_figure, write_rows
from scaleq.losses import training_loss
from scaleq.models import EGNN, FastEGNN


@dataclass(frozen=True, kw_only=True)
class Variant:
    label: str
    model: str  # 'egnn' or 'fastegnn'
    edge_drop: float
    virtual_nodes: int = 3


@dataclass(frozen=True, kw_only=True)
class Workload:
    """``graphs`` random particle clouds of ``nodes`` particles in a unit cube, radius graphs with
    about ``neighbours`` neighbours per particle."""

    graphs: int = 2
    nodes: int = 3000
    neighbours: float = 24.0
    hidden: int = 64
    layers: int = 4
    repeats: int = 5
    device: str = "cpu"
    seed: int = 0

    @property
    def radius(self) -> float:
        # expected neighbours in a ball of radius r inside a unit cube of n points: n 4/3 pi r^3
        return (3 * self.neighbours / (4 * math.pi * self.nodes)) ** (1 / 3)


def table1_variants(virtual_nodes: int = 3, drops: tuple[float, ...] = (0.0, 0.5, 0.75, 1.0)) -> list[Variant]:
    out = [Variant(label="EGNN", model="egnn", edge_drop=0.0), Variant(label="EGNN*", model="egnn", edge_drop=1.0)]
    out += [
        Variant(label=f"FastEGNN-<{virtual_nodes},{p:.2f}>", model="fastegnn", edge_drop=p, virtual_nodes=virtual_nodes)
        for p in drops
    ]
    return out


def random_particles(work: Workload) -> Batch:
    """The same batch for every variant (seeded): pos, vel, h, node_attr, target, horizon."""
    g = torch.Generator().manual_seed(work.seed)
    graphs = []
    for _ in range(work.graphs):
        n = work.nodes
        pos = torch.rand(n, 3, generator=g)
        vel = 0.001 * torch.randn(n, 3, generator=g)
        node_attr = torch.randint(0, 3, (n, 1), generator=g).float()
        graphs.append(Data(
            pos=pos, vel=vel, target=pos + 10 * vel, h=torch.cat([vel.norm(dim=-1, keepdim=True), node_attr / 2], -1),
            node_attr=node_attr, horizon=torch.tensor([10.0]), num_nodes=n,
        ))
    return Batch.from_data_list(graphs)


def prepare(variant: Variant, work: Workload) -> Callable[[], None]:
    """Build the variant's graph (edges dropped once, as the published code preprocesses them)
    and model; return one training step (forward, loss, backward) on that batch."""
    device = torch.device(work.device)
    torch.manual_seed(work.seed)
    batch = GraphBuilder(kind="radius", radius=work.radius, max_num_neighbors=256, edge_drop=variant.edge_drop)(
        random_particles(work).to(device)
    )
    common = {"in_node_features": 2, "in_edge_features": 2, "hidden": work.hidden, "layers": work.layers}
    if variant.model == "egnn":
        model, loss_config = EGNN(**common), LossConfig()
    else:
        model, loss_config = FastEGNN(**common, virtual_nodes=variant.virtual_nodes), LossConfig(mmd_weight=0.01)
    model = model.to(device)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        loss, _ = training_loss(model(batch), batch, loss_config)
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()

    step.num_edges = int(batch.edge_index.shape[1])  # type: ignore[attr-defined]
    return step


def step_peak_mb(variant: Variant, work: Workload) -> float:
    """MB that one step adds at its peak over what the process held before it (batch and model
    built). Meant to run in a fresh process: on the CPU the peak resident set never goes down."""
    step = prepare(variant, work)
    with peak_memory(work.device) as memory:
        step()
    return memory.growth_mb


def step_times(variants: list[Variant], work: Workload) -> list[tuple[int, float]]:
    """(edges, best milliseconds) per variant, timed round-robin in this process (one warm-up
    round, then ``repeats`` rounds): every variant sees the same load from the rest of the
    machine, and the best of the rounds is the least disturbed."""
    steps = [prepare(v, work) for v in variants]
    for step in steps:
        step()
    best = [math.inf] * len(steps)
    for _ in range(work.repeats):
        for k, step in enumerate(steps):
            best[k] = min(best[k], call_ms(step, torch.device(work.device)))
    return [(step.num_edges, t) for step, t in zip(steps, best)]  # type: ignore[attr-defined]


def run_variants(variants: list[Variant], work: Workload) -> list[dict[str, float | str | int]]:
    """One row per variant: edges, best ms, ``relative_time`` (over the first variant's, EGNN's:
    the paper's "Relative Time") and ``peak_mb`` (each measured in its own spawned process)."""
    peaks = [call_in_spawned_process(step_peak_mb, variant, work) for variant in variants]
    times = step_times(variants, work)
    reference = times[0][1]
    return [
        {**asdict(v), "nodes": work.graphs * work.nodes, "edges": edges, "ms": ms, "relative_time": ms / reference,
         "peak_mb": peak}
        for v, (edges, ms), peak in zip(variants, times, peaks)
    ]


COLUMNS = ("label", "model", "edge_drop", "virtual_nodes", "nodes", "edges", "ms", "relative_time", "peak_mb")


def report(rows: list[dict[str, Any]], work: Workload, out: Path) -> Path:
    """Print the table, write ``<out>/models_<device>.csv`` and ``.png``; the path stem."""
    print(f"{'variant':<20}{'edges':>10}{'rel. time':>11}{'ms':>10}{'peak MB':>10}")
    for r in rows:
        print(f"{r['label']:<20}{r['edges']:>10}{r['relative_time']:>11.2f}{r['ms']:>10.1f}{r['peak_mb']:>10.1f}")

    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"models_{work.device}"
    write_rows(rows, Path(f"{stem}.csv"), COLUMNS)
    plot(rows, Path(f"{stem}.png"), f"{work.graphs} x {work.nodes} particles, {work.device}")
    print(f"wrote {stem}.csv and {stem}.png")
    return stem


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib.pyplot as plt

    labels = [str(r["label"]) for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, name in ((axes[0], "relative_time", "time / EGNN"), (axes[1], "peak_mb", "peak memory (MB)")):
        bars = ax.bar(labels, [float(r[key]) for r in rows], color=["#888"] * 2 + ["#2a7"] * (len(rows) - 2))
        ax.bar_label(bars, fmt="%.2f" if key == "relative_time" else "%.0f", fontsize=8)
        ax.set_ylabel(name)
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    fig.suptitle(f"forward + backward, {title}")
    save_figure(fig, path)
