"""Generate a small periodic fluid (soft spheres in a cubic periodic box): train/valid/test stores.

    python data_prep/periodic_fluid.py --out data/fluid32                   # 32 particles, box side 4
    python data_prep/periodic_fluid.py --out data/fluid64 --particles 64 --box 5

The box is written to each store's ``bounds`` (positions stay continuous), so a run with
``graph.periodic: true`` builds minimum-image radius graphs in it (scaleq/sources/periodic_fluid.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scaleq.sources.cli import run_converter
from scaleq.sources.periodic_fluid import FluidParams, write_fluid_dataset


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="directory for train.zarr, valid.zarr, test.zarr")
    parser.add_argument("--particles", type=int, default=32)
    parser.add_argument("--box", type=float, default=4.0, help="side of the cubic periodic box")
    parser.add_argument("--frames", type=int, default=50, help="stored frames per trajectory")
    parser.add_argument("--train", type=int, default=500, help="training trajectories")
    parser.add_argument("--valid", type=int, default=100, help="validation trajectories")
    parser.add_argument("--test", type=int, default=100, help="test trajectories")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)

    def convert() -> dict[str, Path]:
        params = FluidParams(num_particles=args.particles, box=args.box, frames=args.frames)
        splits = [("train", args.train), ("valid", args.valid), ("test", args.test)]
        return write_fluid_dataset(args.out, params, splits, seed=args.seed, overwrite=args.overwrite)

    return run_converter(convert)


if __name__ == "__main__":
    sys.exit(main())
