"""Convert DeepMind "Learning to Simulate" tfrecords (Water-3D, and the 2-D sets) into stores.

    python data_prep/water3d.py --src /path/to/Water-3D --out data/water3d
    python data_prep/water3d.py --src /path/to/WaterDrop --out data/waterdrop --compression blosc --overwrite
    python data_prep/water3d.py --write-sample data/water3d_sample_src      # a small source to try, no download

--src holds {train,valid,test}.tfrecord and metadata.json; --out gets train.zarr, valid.zarr, test.zarr.
--write-sample DIR writes a small source in that format (4 trajectories of 300 random-walk particles,
31 frames; a format sample, not water), to be converted like the real one (docs/datasets.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scaleq.sources.cli import add_store_arguments, run_converter, store_options


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", type=Path, default=None, help="directory with {train,valid,test}.tfrecord + metadata.json")
    parser.add_argument("--write-sample", type=Path, default=None, metavar="DIR",
                        help="write a small Water-3D-format source into DIR and exit (then convert it with --src DIR)")
    add_store_arguments(parser, rows="particles x frames", out_required=False)
    args = parser.parse_args(argv)
    if args.write_sample is not None:
        from scaleq.sources.water3d_writer import write_sample_source

        print(f"wrote a Water-3D-format sample source: {write_sample_source(args.write_sample)}")
        return 0
    if args.src is None or args.out is None:
        parser.error("--src and --out are required (or --write-sample DIR)")
    from scaleq.sources.water3d import convert_water3d

    return run_converter(lambda: convert_water3d(args.src, args.out, progress=True, **store_options(args)))


if __name__ == "__main__":
    sys.exit(main())
