"""Generate a charged-particle N-body dataset (train/valid/test stores).

    python data_prep/nbody.py --out data/nbody5                       # EGNN's 5-body protocol (seed 43)
    python data_prep/nbody.py --out data/nbody100 --particles 100 --train 5000 --valid 2000 --test 2000
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scaleq.data.cli import run_converter  # noqa: E402
from scaleq.data.nbody import NBodyParams, SplitSpec, write_nbody_dataset  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="directory for train.zarr, valid.zarr, test.zarr")
    parser.add_argument("--particles", type=int, default=5)
    parser.add_argument("--train", type=int, default=3000)
    parser.add_argument("--train-drawn", type=int, default=10000, help="initial states drawn for training (EGNN: 10000)")
    parser.add_argument("--valid", type=int, default=2000)
    parser.add_argument("--test", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=5000, help="simulator steps (a frame every 100)")
    parser.add_argument("--seed", type=int, default=43)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    splits = [SplitSpec("train", args.train, max(args.train, args.train_drawn)), SplitSpec("valid", args.valid),
              SplitSpec("test", args.test)]
    return run_converter(lambda: write_nbody_dataset(
        args.out, NBodyParams(num_particles=args.particles, num_steps=args.steps), splits, seed=args.seed,
        overwrite=args.overwrite, progress=True,
    ))


if __name__ == "__main__":
    sys.exit(main())
