"""Convert DeepMind "Learning to Simulate" tfrecords (Water-3D, and the 2-D sets) into stores.

    python data_prep/water3d.py --src /path/to/Water-3D --out data/water3d
    python data_prep/water3d.py --src /path/to/WaterDrop --out data/waterdrop --compression blosc --overwrite

--src holds {train,valid,test}.tfrecord and metadata.json; --out gets train.zarr, valid.zarr, test.zarr.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scaleq.data.store import StoreError  # noqa: E402
from scaleq.data.tfrecord import TFRecordError  # noqa: E402
from scaleq.data.water3d import convert_water3d  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", type=Path, required=True, help="directory with {train,valid,test}.tfrecord + metadata.json")
    parser.add_argument("--out", type=Path, required=True, help="directory for train.zarr, valid.zarr, test.zarr")
    parser.add_argument("--overwrite", action="store_true", help="replace existing stores")
    parser.add_argument("--rows-per-chunk", type=int, default=None,
                        help="rows (particles x frames) per chunk (default: whole frames, >= 64 KiB)")
    parser.add_argument("--chunks-per-shard", type=int, default=64, help="chunks grouped in one shard file")
    parser.add_argument("--compression", choices=["zstd", "blosc", "none"], default="zstd")
    args = parser.parse_args(argv)
    try:
        paths = convert_water3d(args.src, args.out, overwrite=args.overwrite, rows_per_chunk=args.rows_per_chunk,
                                chunks_per_shard=args.chunks_per_shard, compression=args.compression, progress=True)
    except (StoreError, TFRecordError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
