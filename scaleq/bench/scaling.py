"""Data-parallel scaling of EGNN training: graphs/s, edges/s and per-worker memory.

Each (workers, nodes) setting is one run of :func:`time_steps` in every worker (DDP over gloo or
nccl; ``launch/bench_scaling.py`` starts them with :func:`scaleq.launchers.ray.run_in_workers`):
it times ``steps`` steps on synthetic complete graphs of ``graph_nodes`` nodes, twice: strong
scaling (the global batch ``batch`` is split over the workers) and weak scaling (every worker takes
``batch``). :func:`run` makes the table: efficiency is throughput / (workers x one worker's
throughput) in the same mode; it writes bench/scaling.csv and bench/scaling.png.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch_geometric.data import Batch

from scaleq.bench.memory import peak_memory
from scaleq.bench.models import Workload, random_particles
from scaleq.distributed import TorchEngine
from scaleq.graph.builder import GraphBuilder
from scaleq.io import save_figure, write_rows
from scaleq.losses import position_mse
from scaleq.models.egnn import EGNN

FIELDS = ["mode", "workers", "nodes", "graphs_per_s", "edges_per_s", "worker_rss_mb", "efficiency"]


def time_steps(cfg: dict[str, Any]) -> dict[str, float]:
    """Runs in every worker: strong- and weak-scaling step rates; this worker's numbers."""
    engine = TorchEngine(device="cpu" if not cfg["use_gpu"] else "cuda")
    world = engine.world_size
    torch.manual_seed(0)
    model = EGNN(in_node_features=2, in_edge_features=2, hidden=64, layers=4)
    model = engine.wrap(model, torch.optim.Adam(model.parameters(), lr=1e-4))
    results = {}
    with peak_memory(engine.device) as memory:
        for mode, per_worker in (("strong", max(1, cfg["batch"] // world)), ("weak", cfg["batch"])):
            graphs = random_particles(Workload(graphs=1, nodes=cfg["graph_nodes"])).to_data_list() * per_worker
            batch = GraphBuilder(kind="complete")(Batch.from_data_list(graphs)).to(engine.device)
            times = []
            for i in range(cfg["steps"] + 1):
                engine.barrier()
                start = time.perf_counter()
                loss = position_mse(model(batch)["pos"], batch.target)
                engine.backward(loss)
                engine.step()
                engine.barrier()
                if i:  # the first step warms up
                    times.append(time.perf_counter() - start)
            step = sum(times) / len(times)
            edges = int(batch.edge_index.shape[1]) * world
            results[f"{mode}_graphs_per_s"] = per_worker * world / step
            results[f"{mode}_edges_per_s"] = edges / step
    results["worker_rss_mb"] = memory.peak_mb  # this process's peak during the steps
    return results


def run(settings: Sequence[tuple[int, int]], run_setting: Callable[[int, int], dict[str, Any]],
        out: Path) -> list[dict[str, Any]]:
    """``run_setting(workers, nodes)`` (rank 0's :func:`time_steps`) for every setting; the table,
    written to ``<out>/scaling.csv`` and ``<out>/scaling.png`` and printed."""
    rows = []
    for workers, nodes in settings:
        metrics = run_setting(workers, nodes)
        for mode in ("strong", "weak"):
            rows.append({"mode": mode, "workers": workers, "nodes": nodes,
                         "graphs_per_s": round(metrics[f"{mode}_graphs_per_s"], 2),
                         "edges_per_s": round(metrics[f"{mode}_edges_per_s"]),
                         "worker_rss_mb": round(metrics["worker_rss_mb"], 1)})
        print(f"  {workers} worker(s) on {nodes} node(s): {metrics}", flush=True)
    for row in rows:
        base = next(r for r in rows if r["mode"] == row["mode"] and r["workers"] == 1)
        row["efficiency"] = round(row["graphs_per_s"] / (row["workers"] * base["graphs_per_s"]), 3)
    write_rows(rows, out / "scaling.csv", FIELDS)
    print(f"\n{'mode':<7}{'workers':>8}{'nodes':>6}{'graphs/s':>10}{'edges/s':>11}{'RSS MB':>8}{'eff.':>6}")
    for r in rows:
        print(f"{r['mode']:<7}{r['workers']:>8}{r['nodes']:>6}{r['graphs_per_s']:>10.1f}{r['edges_per_s']:>11}"
              f"{r['worker_rss_mb']:>8.0f}{r['efficiency']:>6.2f}")
    plot(rows, out / "scaling.png")
    print(f"\nwrote {out / 'scaling.csv'} and {out / 'scaling.png'}")
    return rows


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, mode in zip(axes, ("strong", "weak")):
        for nodes in sorted({r["nodes"] for r in rows}):
            sel = sorted((r for r in rows if r["mode"] == mode and (r["nodes"] == nodes or r["workers"] == 1)),
                         key=lambda r: r["workers"])
            ax.plot([r["workers"] for r in sel], [r["graphs_per_s"] for r in sel], "-o", label=f"{nodes} node(s)")
        base = next(r["graphs_per_s"] for r in rows if r["mode"] == mode and r["workers"] == 1)
        workers = sorted({r["workers"] for r in rows})
        ax.plot(workers, [w * base for w in workers], ":", color="grey", label="ideal")
        ax.set_title(f"{mode} scaling")
        ax.set_xlabel("workers")
        ax.set_ylabel("graphs / s")
        ax.legend(fontsize=8)
    save_figure(fig, path)
