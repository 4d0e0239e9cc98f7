"""Convert a molecular-dynamics trajectory (anything MDAnalysis reads) into stores split in time.

    python data_prep/md.py --topology adk.psf --trajectory adk_dims.dcd --out data/adk_dims
    python data_prep/md.py --topology adk4AKE.psf --trajectory 1ake_007-nowater-core-dt240ps.dcd --out data/adk
    python data_prep/md.py --topology top.gro --trajectory run.xtc --out data/run --selection "name CA" --stride 2

--out gets train.zarr, valid.zarr, test.zarr (consecutive time windows, fractions from --split).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scaleq.data.md import convert_md  # noqa: E402
from scaleq.data.store import StoreError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--topology", type=Path, required=True, help="topology file (PSF, GRO, PDB, TPR, ...)")
    parser.add_argument("--trajectory", type=Path, required=True, help="trajectory file (DCD, XTC, TRR, ...)")
    parser.add_argument("--out", type=Path, required=True, help="directory for train.zarr, valid.zarr, test.zarr")
    parser.add_argument("--selection", default="backbone", help="MDAnalysis atom selection (default: backbone)")
    parser.add_argument("--stride", type=int, default=1, help="keep every stride-th frame")
    parser.add_argument("--split", type=float, nargs=3, default=[0.6, 0.2, 0.2], metavar=("TRAIN", "VALID", "TEST"),
                        help="fractions of the frames, in time order (default 0.6 0.2 0.2)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing stores")
    parser.add_argument("--rows-per-chunk", type=int, default=None,
                        help="rows (atoms x frames) per chunk (default: whole frames, >= 64 KiB)")
    parser.add_argument("--chunks-per-shard", type=int, default=64, help="chunks grouped in one shard file")
    parser.add_argument("--compression", choices=["zstd", "blosc", "none"], default="zstd")
    args = parser.parse_args(argv)
    try:
        paths = convert_md(args.topology, args.trajectory, args.out, selection=args.selection, stride=args.stride,
                           split=tuple(args.split), overwrite=args.overwrite, rows_per_chunk=args.rows_per_chunk,
                           chunks_per_shard=args.chunks_per_shard, compression=args.compression, progress=True)
    except StoreError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
