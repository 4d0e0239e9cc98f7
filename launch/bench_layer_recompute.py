"""Peak memory and step time of EGNN with and without gradient checkpointing, as graphs and depth
grow (scaleq.bench.layer_recompute). Writes bench/memory.csv and bench/memory.png.

    python launch/bench_layer_recompute.py                                  # CPU sizes (a few minutes on 2 cores)
    python launch/bench_layer_recompute.py --nodes 20000 100000 --layers 4 16 --device cuda
"""

from __future__ import annotations

import argparse
from pathlib import Path

from scaleq.bench.layer_recompute import run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, nargs="+", default=[2000, 8000])
    parser.add_argument("--layers", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--degree", type=float, default=16.0, help="mean neighbours per node")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("bench"))
    args = parser.parse_args(argv)
    run(args.nodes, args.layers, args.degree, args.hidden, args.steps, args.device, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
