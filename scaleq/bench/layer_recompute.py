"""Peak memory and step time of EGNN with and without gradient checkpointing, as graphs and depth grow.

Every variant runs in a fresh process (so peak memory is its own): one radius graph of N uniform
random points with about ``degree`` neighbours per node (:func:`scaleq.bench.models.random_particles`),
L layers, one warm-up step and ``steps`` timed steps. Memory: what the steps need at their peak
above what was in use before them (:func:`scaleq.bench.memory.peak_memory`). ``launch/bench_layer_recompute.py``
runs it, writes bench/memory.csv and bench/memory.png and prints a table with the with/without ratios.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from scaleq.bench.child import call_in_spawned_process
from scaleq.bench.memory import peak_memory
from scaleq.bench.models import Workload, random_particles
from scaleq.bench.timing import call_ms
from scaleq.graph.builder import GraphBuilder
from scaleq.io import save_figure, write_rows
from scaleq.losses import position_mse
from scaleq.models.egnn import EGNN

FIELDS = ["nodes", "edges", "layers", "checkpointing", "peak_mb", "step_s"]


def measure(nodes: int, layers: int, every: int, degree: float, hidden: int, steps: int, device: str) -> dict[str, Any]:
    """One variant, in this process."""
    torch.manual_seed(0)
    dev = torch.device(device)
    work = Workload(graphs=1, nodes=nodes, neighbours=degree)
    graph = GraphBuilder(kind="radius", radius=work.radius, max_num_neighbors=4 * int(degree) + 8)
    batch = graph(random_particles(work).to(dev))
    model = EGNN(in_node_features=2, in_edge_features=2, hidden=hidden, layers=layers, gradient_checkpointing=every)
    model = model.to(dev)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step() -> None:
        loss = position_mse(model(batch)["pos"], batch.target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    times = []
    with peak_memory(dev) as memory:
        step()  # the warm-up step
        for _ in range(steps):
            times.append(call_ms(step, dev) / 1000)
    return {"nodes": nodes, "edges": int(batch.edge_index.shape[1]), "layers": layers, "checkpointing": every,
            "peak_mb": round(memory.growth_mb, 1), "step_s": round(min(times), 4)}


def run(nodes: Sequence[int], layers: Sequence[int], degree: float, hidden: int, steps: int, device: str,
        out: Path) -> list[dict[str, Any]]:
    """Every (N, L) plain and checkpointed, each in a fresh spawned process; writes
    ``<out>/memory.csv`` and ``<out>/memory.png`` and prints the table."""
    rows = []
    for n in nodes:
        for depth in layers:
            for every in (0, 1):
                rows.append(call_in_spawned_process(measure, n, depth, every, degree, hidden, steps, device))
                print(f"  N={n} L={depth} checkpointing={every}: {rows[-1]['peak_mb']} MB, {rows[-1]['step_s']} s",
                      flush=True)
    write_rows(rows, out / "memory.csv", FIELDS)
    print(f"\n{'N':>7} {'E':>9} {'L':>3} | {'MB plain':>9} {'MB ckpt':>8} {'ratio':>6} | {'s plain':>8} {'s ckpt':>7} {'ratio':>6}")
    for plain, ckpt in zip(rows[::2], rows[1::2]):
        print(f"{plain['nodes']:>7} {plain['edges']:>9} {plain['layers']:>3} | {plain['peak_mb']:>9.1f} "
              f"{ckpt['peak_mb']:>8.1f} {ckpt['peak_mb'] / max(plain['peak_mb'], 1e-9):>6.2f} | "
              f"{plain['step_s']:>8.3f} {ckpt['step_s']:>7.3f} {ckpt['step_s'] / plain['step_s']:>6.2f}")
    plot(rows, out / "memory.png")
    print(f"\nwrote {out / 'memory.csv'} and {out / 'memory.png'}")
    return rows


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for layers in sorted({r["layers"] for r in rows}):
        for every, style in ((0, "-o"), (1, "--s")):
            sel = [r for r in rows if r["layers"] == layers and r["checkpointing"] == every]
            label = f"L={layers} {'checkpointed' if every else 'plain'}"
            axes[0].plot([r["edges"] for r in sel], [r["peak_mb"] for r in sel], style, label=label)
            axes[1].plot([r["edges"] for r in sel], [r["step_s"] for r in sel], style, label=label)
    for ax, ylabel in zip(axes, ("peak memory of the step (MB)", "step time (s)")):
        ax.set_xscale("log")
        ax.set_xlabel("edges E")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
    save_figure(fig, path)
