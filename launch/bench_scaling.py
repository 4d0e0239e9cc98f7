"""Data-parallel scaling of EGNN training under Ray Train (scaleq.bench.scaling): graphs/s,
edges/s and per-worker memory, strong and weak. Writes bench/scaling.csv and bench/scaling.png.

    python launch/bench_scaling.py                                # 1, 2 workers; 1, 2 simulated nodes (CPU)
    python launch/bench_scaling.py --address auto --workers 1 2 4 8 --nodes 1 --use-gpu   # a real cluster

Simulated nodes are ray.cluster_utils.Cluster nodes on this machine (workers spread one per node);
with --address the script joins a real cluster instead and --nodes is ignored.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from scaleq.bench import scaling
from scaleq.launchers.ray import run_in_workers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 2], help="simulated nodes (workers spread)")
    parser.add_argument("--address", default=None, help="join this Ray cluster instead of simulating nodes")
    parser.add_argument("--use-gpu", action="store_true")
    parser.add_argument("--batch", type=int, default=32, help="graphs: global batch (strong), per worker (weak)")
    parser.add_argument("--graph-nodes", type=int, default=50, help="nodes per complete graph")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("bench"))
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="rq", dir="/tmp"))
    storage = tempfile.mkdtemp(prefix="scaling-", dir=os.environ["RAY_TMPDIR"])
    cfg = {"batch": args.batch, "graph_nodes": args.graph_nodes, "steps": args.steps, "use_gpu": args.use_gpu}
    settings = [(w, n) for w in args.workers for n in ([1] if args.address else args.nodes) if n <= w and w % n == 0]
    scaling.run(settings, lambda w, n: run_in_workers(scaling.time_steps, cfg, workers=w, nodes=n, address=args.address,
                                                      use_gpu=args.use_gpu, storage=storage, name=f"scaling-{w}w{n}n"),
                args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
