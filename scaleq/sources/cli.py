"""Command-line pieces shared by the data_prep scripts: storage options and error reporting."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scaleq.extras import MissingExtra


def add_store_arguments(parser: argparse.ArgumentParser, rows: str = "nodes x frames", out_required: bool = True) -> None:
    """--out, --overwrite and the chunk/shard/compression options of :class:`StoreWriter`."""
    parser.add_argument("--out", type=Path, required=out_required, help="directory for train.zarr, valid.zarr, test.zarr")
    parser.add_argument("--overwrite", action="store_true", help="replace existing stores")
    parser.add_argument("--rows-per-chunk", type=int, default=None,
                        help=f"rows ({rows}) per chunk (default: whole frames, >= 64 KiB)")
    parser.add_argument("--chunks-per-shard", type=int, default=64, help="chunks grouped in one shard file")
    parser.add_argument("--compression", choices=["zstd", "blosc", "none"], default="zstd")


def store_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments that :func:`add_store_arguments` collected, for a converter."""
    return {
        "overwrite": args.overwrite,
        "rows_per_chunk": args.rows_per_chunk,
        "chunks_per_shard": args.chunks_per_shard,
        "compression": args.compression,
    }


def run_converter(convert: Callable[[], dict[str, Path]]) -> int:
    """Run a converter; print the stores it wrote, or one line for bad input (exit status 2).

    Every error the converters raise for bad input (StoreError, TFRecordError, invalid options)
    is a ValueError; anything else is a bug and keeps its traceback.
    """
    try:
        paths = convert()
    except (ValueError, MissingExtra) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0
