"""Peak memory of a capped radius graph (cap 64): a normal radius and one 10x too large, both CPU
backends, each in a fresh process (scaleq.bench.graph_memory). Writes bench/graph_memory.csv.

    python launch/bench_graph_memory.py                    # ~2 minutes on 2 cores
    python launch/bench_graph_memory.py --particles 4000 --graphs 4
"""

from __future__ import annotations

import argparse
from pathlib import Path

from scaleq.bench.graph_memory import run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--particles", type=int, default=8000, help="per graph")
    parser.add_argument("--graphs", type=int, default=2, help="graphs in the batch")
    parser.add_argument("--neighbours", type=float, default=20.0, help="mean neighbours at the normal radius")
    parser.add_argument("--out", type=Path, default=Path("bench/graph_memory.csv"))
    args = parser.parse_args(argv)
    run(args.particles, args.graphs, args.neighbours, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
