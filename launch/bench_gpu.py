"""Radius-graph backends and training steps on one device, side by side, in one run.

    python launch/bench_gpu.py                          # CUDA: 8k .. 4M particles, 4 x 8k and 1 x 100k steps
    python launch/bench_gpu.py --device cpu --quick     # the same on small sizes (CI runs this)
    python launch/bench_gpu.py --device cpu --graphs-only --max-nodes 1000000   # CPU radius graphs

Radius graphs (~20 neighbours): torch-cluster and the cell list (torch and Triton pair searches),
with a check that the edge sets agree. Training steps (graph build + forward + backward + Adam):
EGNN and FastEGNN-<3,0.75>, 4 layers, H=64, fp32 and bf16, as edge-layers/s and as a ratio to a
plain EGNN in the published code's style. Edge reductions: index_add_ (int64, int32 indices)
against torch.segment_reduce. Writes bench/gpu_<device>.csv and .png and prints a table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from scaleq.bench.gpu import report, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="small sizes (seconds on a CPU)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per row (median reported; default 10, quick 1)")
    parser.add_argument("--max-nodes", type=int, default=None, help="skip radius-graph cases with more particles")
    parser.add_argument("--graphs-only", action="store_true", help="radius graphs only, no training steps")
    parser.add_argument("--out", type=Path, default=Path("bench"))
    args = parser.parse_args(argv)

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here (use --device cpu --quick)")
    device = torch.device(args.device)
    repeats = args.repeats or (1 if args.quick else 10)
    rows = run(device, args.quick, repeats, steps=not args.graphs_only, max_nodes=args.max_nodes)

    report(rows, device, args.out, quick=args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
