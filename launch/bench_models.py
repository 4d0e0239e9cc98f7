"""Forward+backward time and peak memory of EGNN, EGNN* and FastEGNN-<C, p>, side by side.

    python launch/bench_models.py                        # CPU: 2 graphs x 3000 particles, ~24 neighbours
    python launch/bench_models.py --device cuda --nodes 8000 --graphs 20 --neighbours 12   # Water-3D-sized

Prints the paper's "Relative Time" (time / EGNN's) with absolute ms and MB, and writes
bench/models_<device>.csv and bench/models_<device>.png.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from scaleq.bench.models import Workload, report, run_variants, table1_variants


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--graphs", type=int, default=2, help="graphs per batch")
    parser.add_argument("--nodes", type=int, default=3000, help="particles per graph")
    parser.add_argument("--neighbours", type=float, default=24.0, help="mean neighbours per particle (sets the radius)")
    parser.add_argument("--virtual-nodes", type=int, default=3, help="C of FastEGNN")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds over all variants (best reported)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--out", type=Path, default=Path("bench"))
    args = parser.parse_args(argv)

    work = Workload(
        graphs=args.graphs, nodes=args.nodes, neighbours=args.neighbours, hidden=args.hidden, layers=args.layers,
        repeats=args.repeats, device=args.device,
    )
    print(f"{args.graphs} graphs x {args.nodes} particles, radius {work.radius:.4f}, H={args.hidden}, "
          f"{args.layers} layers, {args.device}; memory per variant in a fresh process, times round-robin", flush=True)
    rows = run_variants(table1_variants(args.virtual_nodes), work)

    report(rows, work, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
