"""Depth sweep: EGNN against DuSEGO-EGNN at 4/8/12/16 layers (the DuSEGO paper's Table 2), and
peak training memory against depth with and without gradient checkpointing.

    python launch/bench_depth.py                                  # full protocol of the config
    python launch/bench_depth.py --quick                          # minutes on a CPU
    python launch/bench_depth.py --deltas 10 15 20 --depths 4 8 12 16 --epochs 1000
    python launch/bench_depth.py --config configs/dusego_nbody.yaml model.dt=0.25 model.alpha=0.5

Writes <out>/depth_accuracy.csv, <out>/depth_memory.csv, <out>/depth_sweep.png and one run
directory per trained model under <out>/runs/, and prints both tables.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

import torch  # noqa: E402

from scaleq.config import ConfigError, load_config  # noqa: E402
from scaleq.data.store import StoreError  # noqa: E402
from scaleq.eval.depth_sweep import (  # noqa: E402
    accuracy_sweep,
    accuracy_table,
    memory_sweep,
    memory_table,
    plot_sweep,
    with_changes,
)
from scaleq.io import write_rows  # noqa: E402
from scaleq.models import check_buildable  # noqa: E402

# --quick: a small dataset of its own and a short schedule, a few minutes on 2 CPU cores
QUICK = ["data.path=data/nbody5_quick", "data.generate.train=500", "data.generate.valid=200", "data.generate.test=200",
         "data.generate.steps=6000", "train.epochs=20", "train.eval_every=5", "train.progress=false"]


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
        config = check_buildable(load_config(args.config, (QUICK if args.quick else []) + args.overrides))
        if args.epochs is not None:
            config = with_changes(config, train={"epochs": args.epochs})
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    deltas = args.deltas or [config.data.delta]
    accuracy, memory = [], []
    try:
        if not args.skip_accuracy:
            print(f"training {2 * len(args.depths) * len(deltas)} models ({config.train.epochs} epochs each) ...")
            accuracy = accuracy_sweep(config, args.depths, deltas, args.out)
            write_rows(accuracy, args.out / "depth_accuracy.csv")
        if not args.skip_memory:
            device = torch.device("cuda" if torch.cuda.is_available() and config.train.device != "cpu" else "cpu")
            print(f"measuring peak memory on {device} ...")
            memory = memory_sweep(config, args.depths, args.memory_graphs, device)
            write_rows(memory, args.out / "depth_memory.csv")
    except StoreError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if accuracy:
        print(accuracy_table(accuracy))
    if memory:
        print(memory_table(memory))
    if accuracy or memory:
        plot_sweep(accuracy, memory, args.out / "depth_sweep.png")
        print(f"wrote {args.out}/depth_*.csv and {args.out}/depth_sweep.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
