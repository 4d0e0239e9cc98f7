"""Depth sweep: EGNN against DuSEGO-EGNN at 4/8/12/16 layers (the DuSEGO paper's Table 2), and
peak training memory against depth with and without gradient checkpointing (scaleq.experiments.depth_sweep).

    python launch/depth_sweep.py                                  # full protocol of the config
    python launch/depth_sweep.py --quick                          # minutes on a CPU
    python launch/depth_sweep.py --deltas 10 15 20 --depths 4 8 12 16 --epochs 1000
    python launch/depth_sweep.py --config configs/dusego_nbody.yaml model.dt=0.25 model.alpha=0.5

Writes <out>/depth_accuracy.csv, <out>/depth_memory.csv, <out>/depth_sweep.png and one run
directory per trained model under <out>/runs/, and prints both tables.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scaleq.config import ConfigError, load_config
from scaleq.experiments.depth_sweep import QUICK_OVERRIDES, run_sweep, with_changes
from scaleq.models import check_buildable
from scaleq.store.format import StoreError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=Path("configs/dusego_nbody.yaml"))
    parser.add_argument("--depths", type=int, nargs="+", default=[4, 8, 12, 16])
    parser.add_argument("--deltas", type=int, nargs="+", default=None, help="target frame offsets (default: the config's)")
    parser.add_argument("--epochs", type=int, default=None, help="override train.epochs")
    parser.add_argument("--memory-graphs", type=int, default=500, help="graphs in the batch whose memory is measured")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--quick", action="store_true", help="small data, 20 epochs: a CPU check of the whole pipeline")
    parser.add_argument("--out", type=Path, default=Path("bench/depth"))
    parser.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. model.dt=0.25")
    args = parser.parse_args(argv)
    try:
        config = check_buildable(load_config(args.config, (QUICK_OVERRIDES if args.quick else []) + args.overrides))
        if args.epochs is not None:
            config = with_changes(config, train={"epochs": args.epochs})
        run_sweep(config, args.depths, args.deltas or [config.data.delta], args.out, memory_graphs=args.memory_graphs,
                  accuracy=not args.skip_accuracy, memory=not args.skip_memory)
    except (ConfigError, StoreError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
