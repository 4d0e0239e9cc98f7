"""Peak memory of a capped radius graph: a normal radius and one 10x too large, both CPU backends.

Water-3D-sized graphs (8000 particles in the unit box, a batch of graphs) with max_num_neighbors
64; the normal radius gives ~20 neighbours per particle, ten times that radius reaches most of
the box (thousands). Each case runs in a fresh process; its peak resident memory above what the
process held before the search is the figure (scaleq.eval.memory). With the cap bounding what a
search holds, the 10x radius should cost time, not memory.

    python launch/bench_graph_memory.py                    # ~2 minutes on 2 cores
    python launch/bench_graph_memory.py --particles 4000 --graphs 4
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from scaleq.data.graph import radius_graph  # noqa: E402
from scaleq.eval.memory import peak_resident_bytes, reset_peak_resident, resident_bytes  # noqa: E402
from scaleq.eval.report import write_rows  # noqa: E402

CAP = 64


def measure(backend: str, radius: float, particles: int, graphs: int, queue: multiprocessing.Queue) -> None:
    torch.set_num_threads(1)
    pos = torch.rand(graphs * particles, 3, generator=torch.Generator().manual_seed(0))
    batch = torch.repeat_interleave(torch.arange(graphs), particles)
    before = resident_bytes()
    reset_peak_resident()
    start = time.perf_counter()
    edges = radius_graph(pos, radius, batch, CAP, backend=backend, num_graphs=graphs)
    seconds = time.perf_counter() - start
    queue.put({"peak_mb": (peak_resident_bytes() - before) / 2**20, "seconds": seconds,
               "edges": edges.edge_index.shape[1], "capped_nodes": edges.num_capped})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--particles", type=int, default=8000, help="per graph")
    parser.add_argument("--graphs", type=int, default=2, help="graphs in the batch")
    parser.add_argument("--neighbours", type=float, default=20.0, help="mean neighbours at the normal radius")
    parser.add_argument("--out", type=Path, default=Path("bench/graph_memory.csv"))
    args = parser.parse_args()
    normal = (args.neighbours * 3 / (4 * math.pi * args.particles)) ** (1 / 3)  # uniform density in the unit box
    context = multiprocessing.get_context("fork")
    rows = []
    for backend in ("torch_cluster", "cell_list"):
        for factor in (1, 10):
            queue = context.Queue()
            child = context.Process(target=measure, args=(backend, normal * factor, args.particles, args.graphs, queue))
            child.start()
            result = queue.get()
            child.join()
            rows.append({"backend": backend, "radius": round(normal * factor, 4), "radius_factor": factor,
                         "nodes": args.particles * args.graphs, "max_num_neighbors": CAP, **result})
    write_rows(rows, args.out)
    print(f"{'backend':14} {'radius':>7} {'edges':>9} {'capped':>7} {'peak MB':>8} {'x normal':>8} {'s':>6}")
    for row in rows:
        base = next(r for r in rows if r["backend"] == row["backend"] and r["radius_factor"] == 1)
        print(f"{row['backend']:14} {row['radius']:>7} {row['edges']:>9} {row['capped_nodes']:>7} "
              f"{row['peak_mb']:>8.1f} {row['peak_mb'] / max(base['peak_mb'], 1e-9):>8.2f} {row['seconds']:>6.1f}")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
