"""Data-loading benchmark: samples/s and peak memory reading Water-3D-shaped frames
(scaleq.bench.data_loading). Writes bench/bench_data.csv and bench/bench_data.png.

    python launch/bench_data_loading.py                                   # ~1-2 minutes on 2 cores
    python launch/bench_data_loading.py --trajectories 8 64 --frames 101 --samples 800
"""

from __future__ import annotations

import argparse
from pathlib import Path

from scaleq.bench.data_loading import run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trajectories", type=int, nargs="+", default=[8, 32], help="store sizes to compare")
    parser.add_argument("--frames", type=int, default=41, help="frames per trajectory (Water-3D: 1001)")
    parser.add_argument("--particles", type=int, default=8000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--samples", type=int, default=480, help="samples timed per measurement")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--cache-mb", type=int, default=16, help="chunk cache per process (below the store sizes)")
    parser.add_argument("--out", type=Path, default=Path("bench"))
    args = parser.parse_args(argv)
    run(args.trajectories, args.frames, args.particles, args.workers, args.samples, args.batch_size, args.cache_mb,
        args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
