"""Peak memory of a capped radius graph: a normal radius and one 10x too large, both CPU backends.

Water-3D-sized graphs (8000 particles in the unit box, a batch of graphs) with max_num_neighbors
64; the normal radius gives ~20 neighbours per particle, ten times that radius reaches most of
the box (thousands). Each case runs in a fresh process; its peak resident memory above what the
process held before the search is the figure (:func:`scaleq.bench.memory.peak_memory`). With the cap bounding what a
search holds, the 10x radius should cost time, not memory.
``launch/bench_graph_memory.py`` runs it (~2 minutes on 2 cores) and writes bench/graph_memory.csv.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch

from scaleq.bench.child import call_in_spawned_process
from scaleq.bench.memory import peak_memory
from scaleq.graph.builder import radius_graph
from scaleq.io import write_rows

CAP = 64


def measure(backend: str, radius: float, particles: int, graphs: int) -> dict[str, Any]:
    """One radius graph of ``graphs`` x ``particles`` uniform points; meant for a fresh process."""
    torch.set_num_threads(1)
    pos = torch.rand(graphs * particles, 3, generator=torch.Generator().manual_seed(0))
    batch = torch.repeat_interleave(torch.arange(graphs), particles)
    start = time.perf_counter()
    with peak_memory("cpu") as memory:
        edges = radius_graph(pos, radius, batch, CAP, backend=backend, num_graphs=graphs)
    return {"peak_mb": memory.growth_mb, "seconds": time.perf_counter() - start,
            "edges": edges.edge_index.shape[1], "capped_nodes": edges.num_capped}


def run(particles: int, graphs: int, neighbours: float, out: Path) -> list[dict[str, Any]]:
    """Both CPU backends at the normal radius and 10x it, each in a fresh process; writes ``out``
    and prints the table with each peak over its backend's normal-radius peak."""
    normal = (neighbours * 3 / (4 * math.pi * particles)) ** (1 / 3)  # uniform density in the unit box
    rows = []
    for backend in ("torch_cluster", "cell_list"):
        for factor in (1, 10):
            result = call_in_spawned_process(measure, backend, normal * factor, particles, graphs)
            rows.append({"backend": backend, "radius": round(normal * factor, 4), "radius_factor": factor,
                         "nodes": particles * graphs, "max_num_neighbors": CAP, **result})
    write_rows(rows, out)
    print(f"{'backend':14} {'radius':>7} {'edges':>9} {'capped':>7} {'peak MB':>8} {'x normal':>8} {'s':>6}")
    for row in rows:
        base = next(r for r in rows if r["backend"] == row["backend"] and r["radius_factor"] == 1)
        print(f"{row['backend']:14} {row['radius']:>7} {row['edges']:>9} {row['capped_nodes']:>7} "
              f"{row['peak_mb']:>8.1f} {row['peak_mb'] / max(base['peak_mb'], 1e-9):>8.2f} {row['seconds']:>6.1f}")
    print(f"written: {out}")
    return rows
