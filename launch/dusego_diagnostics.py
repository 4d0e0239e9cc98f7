"""Per-layer diagnostics of EGNN and DuSEGO-EGNN: Dirichlet energy of features and coordinates
(the DuSEGO paper's Eq. 4 and Fig. 4) and gradient norms, at initialisation and after training.

    python launch/dusego_diagnostics.py                          # 16 layers, alpha 0 and 1, 20 epochs
    python launch/dusego_diagnostics.py --layers 32 --epochs 0   # at initialisation only
    python launch/dusego_diagnostics.py --quick                  # small data, a minute or two on a CPU

Writes <out>/dirichlet_energy.csv + .png and <out>/gradient_norms.csv + .png.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scaleq.config import ConfigError, load_config
from scaleq.experiments.depth_sweep import QUICK_OVERRIDES, diagnostics_report
from scaleq.models import check_buildable
from scaleq.store.format import StoreError

QUICK = [o for o in QUICK_OVERRIDES if not o.startswith("train.epochs=")]  # --epochs sets the schedule


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=Path("configs/dusego_nbody.yaml"))
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.0, 1.0])
    parser.add_argument("--epochs", type=int, default=20, help="training epochs before the second look (0: init only)")
    parser.add_argument("--graphs", type=int, default=100, help="test graphs the diagnostics are computed on")
    parser.add_argument("--quick", action="store_true", help="the small dataset of depth_sweep.py --quick")
    parser.add_argument("--out", type=Path, default=Path("bench/diagnostics"))
    parser.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. model.dt=0.25")
    args = parser.parse_args(argv)
    try:
        config = check_buildable(load_config(args.config, (QUICK if args.quick else []) + args.overrides))
        diagnostics_report(config, args.layers, args.alphas, args.epochs, args.graphs, args.out)
    except (ConfigError, StoreError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
