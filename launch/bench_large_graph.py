"""The largest single radius graph one training step fits in a memory budget, per block path.

    python launch/bench_large_graph.py                                   # CPU, 1 GB budget
    python launch/bench_large_graph.py --device cuda --budget-mb 75000 --start-nodes 100000 \\
        --max-nodes 20000000 --paths reference torch chunked triton

For EGNN and FastEGNN-<3, 0.75> (4 x 64, ~20 neighbours per particle) and each path (reference:
EGNN before the shared block; torch; chunked; triton), N doubles from --start-nodes until a step
needs more than --budget-mb (peak) or fails; every size runs in a fresh process (scaleq.bench.large_graph).
Then the step time of each path at --compare-nodes, side by side in one process, and each path's
peak there. Writes bench/large_graph.csv and bench/large_graph_times.csv and prints tables.

    python launch/bench_large_graph.py --graph-parallel 1 2 4 --compare-nodes 20000      # CPU, gloo
    python launch/bench_large_graph.py --graph-parallel 1 2 4 8 --compare-nodes 1000000 --device cuda

--graph-parallel R...: strong scaling instead: ONE graph of --compare-nodes particles split over R
ranks (fresh processes, gloo or nccl; scaleq.bench.graph_parallel): step time, efficiency,
halo traffic per layer and memory per rank, to bench/graph_parallel.csv/.png. On a CPU with fewer
cores than R the ranks share cores (then only the memory and halo columns mean something).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from scaleq.bench import graph_parallel, large_graph
from scaleq.bench.large_graph import MODELS, PATHS, Trial


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=["reference", "torch", "chunked"])
    parser.add_argument("--budget-mb", type=float, default=1024)
    parser.add_argument("--start-nodes", type=int, default=4000)
    parser.add_argument("--max-nodes", type=int, default=1 << 18)
    parser.add_argument("--compare-nodes", type=int, default=8000, help="N of the side-by-side timing (0: skip)")
    parser.add_argument("--edge-chunk", type=int, default=32768)
    parser.add_argument("--neighbours", type=float, default=20.0)
    parser.add_argument("--checkpointing", type=int, default=0, help="gradient checkpointing every k layers (0: off)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--timeout-s", type=float, default=3600, help="time limit of each size's process")
    parser.add_argument("--out", type=Path, default=Path("bench"))
    parser.add_argument("--graph-parallel", type=int, nargs="+", default=None, metavar="R",
                        help="strong scaling of one graph over R ranks instead (EGNN, --compare-nodes particles)")
    parser.add_argument("--steps", type=int, default=3, help="--graph-parallel: timed steps after a warm-up step")
    args = parser.parse_args(argv)
    if args.graph_parallel:
        cfg = {"particles": args.compare_nodes, "neighbours": args.neighbours, "hidden": 64, "layers": 4,
               "steps": args.steps, "device": args.device}
        graph_parallel.run(cfg, args.graph_parallel, args.out)
        return 0
    base = Trial(model="egnn", path="torch", nodes=args.start_nodes, neighbours=args.neighbours,
                 edge_chunk=args.edge_chunk, gradient_checkpointing=args.checkpointing, device=args.device)
    trials = [replace(base, model=m, path=p) for m in args.models for p in args.paths
              if not (p == "reference" and m != "egnn")]
    large_graph.run(trials, args.budget_mb, args.max_nodes, args.compare_nodes, args.out, args.timeout_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
