"""Plot a trained hierarchical model's clusters (EGHN): one sample coloured by cluster, to PNG.

    python launch/plot_clusters.py --run runs/eghn_protein                  # first test sample
    python launch/plot_clusters.py --run runs/eghn_nbody --split valid --index 3 --out clusters.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scaleq.config import ConfigError
from scaleq.eval.clusters import cluster_plot_from_run
from scaleq.run_directory import BEST, CHECKPOINTS, CONFIG
from scaleq.store.format import StoreError
from scaleq.train.checkpoint import CheckpointError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help=f"run directory (holds {CONFIG} and {CHECKPOINTS}/)")
    parser.add_argument("--split", default="test", choices=["train", "valid", "test"])
    parser.add_argument("--index", type=int, default=0, help="sample of the split")
    parser.add_argument("--checkpoint", default=BEST, help=f"file in <run>/{CHECKPOINTS}/")
    parser.add_argument("--out", type=Path, default=None, help="PNG (default: <run>/clusters_<split>_<index>.png)")
    args = parser.parse_args(argv)
    try:
        path = cluster_plot_from_run(args.run, args.out, split=args.split, index=args.index, checkpoint=args.checkpoint)
    except (ConfigError, StoreError, CheckpointError, ValueError, IndexError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
