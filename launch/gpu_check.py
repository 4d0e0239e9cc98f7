"""Check a CUDA machine end to end in one command, within a time budget, installing nothing.

    python launch/gpu_check.py                       # CUDA, about 8 minutes on an H100/H200
    python launch/gpu_check.py --budget-s 900        # more time for the largest graphs
    python launch/gpu_check.py --device cpu --quick  # the same parts on small sizes (the tests run this)
    make gpu-check                                   # the first form

Runs, in order, each in its own process, going on past failures: pytest -m gpu; bench_gpu; the
largest single graph for EGNN and FastEGNN (10M and 20M particles); the DeepSpeed launcher
(ZeRO-2, bf16, activation checkpointing) on a Water-3D-format store it writes and converts; a
torch-profiler summary of one training step per model. Prints one line per part, then a summary
(pass/fail/skipped, which parts need CUDA); writes bench/gpu_check.csv, the parts' CSVs and PNGs,
and each part's full output under bench/gpu_check_logs/. Exit code 1 if a part failed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scaleq.bench.gpu_check import PARTS, run_check, summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--quick", action="store_true", help="small sizes (about a minute on a CPU)")
    parser.add_argument("--budget-s", type=float, default=None, help="time for all parts (default 480, quick 240)")
    parser.add_argument("--parts", nargs="+", choices=[p.name for p in PARTS], default=None, help="run only these")
    parser.add_argument("--out", type=Path, default=Path("bench"))
    args = parser.parse_args(argv)

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here (use --device cpu --quick)")
    budget = args.budget_s or (240.0 if args.quick else 480.0)
    print(f"gpu-check: {args.device}{' (quick)' if args.quick else ''}, budget {budget:.0f} s")
    outcomes = run_check(args.device, quick=args.quick, budget_s=budget, out=args.out, parts=args.parts)
    print("\n" + summary(outcomes, args.device, budget))
    print(f"\nwrote {args.out / 'gpu_check.csv'}; each part's output in {args.out / 'gpu_check_logs'}")
    return 1 if any(o.status == "fail" for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
