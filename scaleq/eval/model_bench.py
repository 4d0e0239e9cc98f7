"""Forward + backward time and peak memory of model variants on the same batches.

The variants of FastEGNN's Table 1: EGNN, EGNN* (EGNN with every real edge dropped) and
FastEGNN-<C, p>. Each variant is measured in a fresh process (``multiprocessing`` spawn), so that
the peak memory of one does not hide inside another's: on CUDA the peak is
``torch.cuda.max_memory_allocated``; on the CPU it is the growth of the process's peak resident
set (``ru_maxrss``) during the first step over the resident set just before it (the batch and the
model already built). Graphs are
built and edges dropped once, before timing, as the published code preprocesses them.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import resource
import time
from dataclasses import asdict, dataclass

import torch
from torch_geometric.data import Batch, Data

from scaleq.config import LossConfig
from scaleq.data.graph import GraphBuilder
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
    repeats: int = 3
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


def measure(variant: Variant, work: Workload) -> dict[str, float | str | int]:
    """Median forward+backward milliseconds and peak MB of one variant, in this process."""
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

    # the first step carries the peak: measure its memory, then time the repeats
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _resident_bytes()
    step()
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base)
    times = []
    for _ in range(work.repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    times.sort()
    return {
        **asdict(variant), "nodes": int(batch.num_nodes), "edges": int(batch.edge_index.shape[1]),
        "ms": 1000 * times[len(times) // 2], "peak_mb": peak / 2**20,
    }


def _resident_bytes() -> int:
    """Current resident set size (Linux /proc; elsewhere the peak so far, a lower bound on growth)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _measure_star(args: tuple[Variant, Workload]) -> dict[str, float | str | int]:
    return measure(*args)


def run_variants(variants: list[Variant], work: Workload, fresh_process: bool = True) -> list[dict[str, float | str | int]]:
    """Measure each variant (in its own spawned process unless ``fresh_process`` is False) and add
    ``relative_time``: time over the first variant's (EGNN's, the paper's "Relative Time")."""
    if fresh_process:
        context = multiprocessing.get_context("spawn")
        rows = []
        for variant in variants:
            with context.Pool(1) as pool:
                rows.append(pool.map(_measure_star, [(variant, work)])[0])
    else:
        rows = [measure(v, work) for v in variants]
    reference = float(rows[0]["ms"])
    for row in rows:
        row["relative_time"] = float(row["ms"]) / reference
    return rows
