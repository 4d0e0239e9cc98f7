"""Convert DeepMind "Learning to Simulate" tfrecords (Water-3D, and the 2-D sets) into stores.

    python data_prep/water3d.py --src /path/to/Water-3D --out data/water3d
    python data_prep/water3d.py --src /path/to/WaterDrop --out data/waterdrop --compression blosc --overwrite

--src holds {train,valid,test}.tfrecord and metadata.json; --out gets train.zarr, valid.zarr, test.zarr.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scaleq.sources.cli import add_store_arguments, run_converter, store_options
from scaleq.sources.water3d import convert_water3d


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", type=Path, required=True, help="directory with {train,valid,test}.tfrecord + metadata.json")
    add_store_arguments(parser, rows="particles x frames")
    args = parser.parse_args(argv)
    return run_converter(lambda: convert_water3d(args.src, args.out, progress=True, **store_options(args)))


if __name__ == "__main__":
    sys.exit(main())
