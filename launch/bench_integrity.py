"""What verifying costs (scaleq.bench.integrity): store reads with and without chunk checksums,
checkpoint save/load with and without the SHA-256 digest; alternating runs, medians and ratios.
Writes bench/bench_integrity.csv.

    python launch/bench_integrity.py                       # ~2 minutes on 2 cores
    python launch/bench_integrity.py --repeats 9 --hidden 256 --layers 8
"""

from __future__ import annotations

import argparse
from pathlib import Path

from scaleq.bench.integrity import run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="runs of each variant, alternating")
    parser.add_argument("--hidden", type=int, default=128, help="EGNN width of the checkpointed model")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--trajectories", type=int, default=8)
    parser.add_argument("--frames", type=int, default=41)
    parser.add_argument("--particles", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--samples", type=int, default=240, help="samples timed per store measurement")
    parser.add_argument("--out", type=Path, default=Path("bench"))
    args = parser.parse_args(argv)
    run(repeats=args.repeats, hidden=args.hidden, layers=args.layers, trajectories=args.trajectories,
        frames=args.frames, particles=args.particles, workers=args.workers, samples=args.samples, out=args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
