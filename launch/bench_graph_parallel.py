"""Strong scaling of graph parallelism: one graph of N particles at R = 1, 2, 4 ranks.

    python launch/bench_graph_parallel.py                                  # CPU, gloo, 20k particles
    python launch/bench_graph_parallel.py --particles 1000000 --device cuda --ranks 1 2 4 8   # GPUs, nccl

Each R runs in R fresh processes (one thread each on the CPU) that split the graph by space and
exchange halos every layer (scaleq.eval.graph_parallel_bench says what is timed and measured).
Writes bench/graph_parallel.csv and bench/graph_parallel.png and prints the table. On a CPU with
fewer cores than R the ranks share cores: the step times then say nothing about scaling, only
the memory and halo columns do.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scaleq.eval.graph_parallel_bench import FIELDS, plot, run_strong_scaling  # noqa: E402
from scaleq.eval.report import write_rows  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--particles", type=int, default=20_000)
    parser.add_argument("--degree", type=float, default=24.0, help="mean neighbours within the radius")
    parser.add_argument("--max-num-neighbors", type=int, default=128)
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--out", type=Path, default=Path("bench"))
    args = parser.parse_args()
    cfg = {"particles": args.particles, "degree": args.degree, "max_num_neighbors": args.max_num_neighbors,
           "hidden": args.hidden, "layers": args.layers, "steps": args.steps, "device": args.device}
    print(f"one graph of {args.particles} particles (mean degree {args.degree}), EGNN H={args.hidden} "
          f"L={args.layers}, ranks {args.ranks} on {args.device} ({os.cpu_count()} CPU cores here)", flush=True)
    with tempfile.TemporaryDirectory(prefix="gp-bench-") as folder:
        rows = run_strong_scaling(cfg, args.ranks, Path(folder))
    write_rows(rows, args.out / "graph_parallel.csv", FIELDS)
    plot(rows, args.out / "graph_parallel.png")
    header = ("R", "edges", "step s", "speed-up", "eff.", "halo rows/rank", "halo MB/layer", "peak MB/rank", "growth MB/rank")
    print("".join(f"{h:>15}" for h in header))
    for r in rows:
        print("".join(f"{r[k]:>15}" for k in FIELDS if k != "particles"))
    print(f"wrote {args.out / 'graph_parallel.csv'} and {args.out / 'graph_parallel.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
