"""Generate a charged-particle N-body dataset (train/valid/test stores).

    python data_prep/nbody.py --out data/nbody5                           # EGNN's 5-body protocol (seed 43)
    python data_prep/nbody.py --out data/nbody100 --system fastegnn       # FastEGNN's 100-body protocol
    python data_prep/nbody.py --out data/nbody5_dusego --system dusego    # DuSEGO's (positions N(0, 0.5^2))
    python data_prep/nbody.py --out data/mcomplex_3_3_1 --system mcomplex --complexes 3 --size 3 --systems 1

--system picks the simulator and its published protocol (scaleq/sources/nbody.py): 'egnn' (5 bodies,
10000/2000/2000 trajectories drawn, 3000 kept for training) or 'fastegnn' (GMN's system of 100
isolated balls in 3 Gaussians, 5000/2000/2000) or 'dusego' (EGNN's simulator with positions
N(0, 0.5^2), 6000 steps, 10000/2000/2000). The other options override that protocol. --engine
torch (default) integrates all trajectories of a split at once (a GPU when there is one);
--engine numpy is the reference, equal to rounding. 'mcomplex' is EGHN's M-complex system
(scaleq/sources/mcomplex.py): --complexes M rigid bodies of average size --size, --systems J system
types (1: the paper's single system, 5: multiple), 2000/2000/2000 trajectories.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scaleq.sources.cli import run_converter
from scaleq.sources.nbody import ENGINES, PROTOCOLS, SplitSpec, protocol_params, write_nbody_dataset


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="directory for train.zarr, valid.zarr, test.zarr")
    parser.add_argument("--system", choices=[*sorted(PROTOCOLS), "mcomplex"], default="egnn",
                        help="simulator and protocol (default: egnn)")
    parser.add_argument("--engine", choices=ENGINES, default="torch", help="integrator (default: torch)")
    parser.add_argument("--particles", type=int, default=None, help="bodies (egnn: 5, fastegnn: 100)")
    parser.add_argument("--gaussians", type=int, default=None, help="fastegnn: Gaussians of the initial positions (3)")
    parser.add_argument("--train", type=int, default=None, help="training trajectories (egnn: 3000, fastegnn: 5000)")
    parser.add_argument("--train-drawn", type=int, default=None, help="initial states drawn for training (egnn: 10000)")
    parser.add_argument("--valid", type=int, default=None, help="validation trajectories (2000)")
    parser.add_argument("--test", type=int, default=None, help="test trajectories (2000)")
    parser.add_argument("--steps", type=int, default=None, help="simulator steps (5000; a frame every 100)")
    parser.add_argument("--complexes", type=int, default=3, help="mcomplex: rigid bodies per system (M)")
    parser.add_argument("--size", type=int, default=3, help="mcomplex: average particles per body (N/M)")
    parser.add_argument("--systems", type=int, default=1, help="mcomplex: system types (J)")
    parser.add_argument("--seed", type=int, default=43)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)

    def convert() -> dict[str, Path]:
        if args.system == "mcomplex":
            from scaleq.sources.mcomplex import MComplexParams, write_mcomplex_dataset

            counts = {"train": args.train or 2000, "valid": args.valid or 2000, "test": args.test or 2000}
            mparams = MComplexParams(complexes=args.complexes, average_size=args.size, systems=args.systems,
                                     **({"num_steps": args.steps} if args.steps else {}))
            return write_mcomplex_dataset(args.out, mparams, counts, seed=args.seed, overwrite=args.overwrite,
                                          progress=True)
        params = protocol_params(args.system, particles=args.particles, steps=args.steps, gaussians=args.gaussians)
        train, valid, test = PROTOCOLS[args.system][1]
        count = args.train if args.train is not None else train.count
        drawn = args.train_drawn if args.train_drawn is not None else train.drawn
        splits = [SplitSpec("train", count, max(count, drawn) if drawn is not None else None),
                  SplitSpec("valid", args.valid if args.valid is not None else valid.count),
                  SplitSpec("test", args.test if args.test is not None else test.count)]
        return write_nbody_dataset(args.out, params, splits, seed=args.seed, overwrite=args.overwrite, progress=True,
                                   engine=args.engine)

    return run_converter(convert)


if __name__ == "__main__":
    sys.exit(main())
