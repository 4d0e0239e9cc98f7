"""Convert a molecular-dynamics trajectory (anything MDAnalysis reads) into stores split in time.

    python data_prep/md.py --topology adk.psf --trajectory adk_dims.dcd --out data/adk_dims
    python data_prep/md.py --topology adk4AKE.psf --trajectory 1ake_007-nowater-core-dt240ps.dcd --out data/adk
    python data_prep/md.py --topology top.gro --trajectory run.xtc --out data/run --selection "name CA" --stride 2

--out gets train.zarr, valid.zarr, test.zarr (consecutive time windows, fractions from --split).
Trajectories with a periodic box are made whole and continuous (unwrap, NoJump); frames where an
atom moves more than --max-displacement or a bond is longer than --max-bond-length are refused.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scaleq.sources.cli import add_store_arguments, run_converter, store_options
from scaleq.sources.md import MAX_BOND_LENGTH, MAX_DISPLACEMENT, convert_md


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--topology", type=Path, required=True, help="topology file (PSF, GRO, PDB, TPR, ...)")
    parser.add_argument("--trajectory", type=Path, required=True, help="trajectory file (DCD, XTC, TRR, ...)")
    parser.add_argument("--selection", default="backbone", help="MDAnalysis atom selection (default: backbone)")
    parser.add_argument("--stride", type=int, default=1, help="keep every stride-th frame")
    parser.add_argument("--split", type=float, nargs=3, default=[0.6, 0.2, 0.2], metavar=("TRAIN", "VALID", "TEST"),
                        help="fractions of the frames, in time order (default 0.6 0.2 0.2)")
    parser.add_argument("--max-displacement", type=float, default=MAX_DISPLACEMENT, metavar="A",
                        help=f"largest move of an atom between stored frames, Angstrom (default {MAX_DISPLACEMENT:g})")
    parser.add_argument("--max-bond-length", type=float, default=MAX_BOND_LENGTH, metavar="A",
                        help=f"longest bond in any stored frame, Angstrom (default {MAX_BOND_LENGTH:g})")
    add_store_arguments(parser, rows="atoms x frames")
    args = parser.parse_args(argv)
    return run_converter(lambda: convert_md(
        args.topology, args.trajectory, args.out, selection=args.selection, stride=args.stride,
        split=tuple(args.split), progress=True, max_displacement=args.max_displacement,
        max_bond_length=args.max_bond_length, **store_options(args),
    ))


if __name__ == "__main__":
    sys.exit(main())
