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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from scaleq.config import ConfigError, load_config  # noqa: E402
from scaleq.data.store import StoreError  # noqa: E402
from scaleq.eval.depth_sweep import diagnostics_run  # noqa: E402
from scaleq.eval.diagnostics import plot_per_layer  # noqa: E402
from scaleq.io import write_rows  # noqa: E402
from scaleq.models import check_buildable  # noqa: E402

QUICK = ["data.path=data/nbody5_quick", "data.generate.train=500", "data.generate.valid=200", "data.generate.test=200",
         "data.generate.steps=6000", "train.eval_every=5", "train.progress=false"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=Path("configs/dusego_nbody.yaml"))
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.0, 1.0])
    parser.add_argument("--epochs", type=int, default=20, help="training epochs before the second look (0: init only)")
    parser.add_argument("--graphs", type=int, default=100, help="test graphs the diagnostics are computed on")
    parser.add_argument("--quick", action="store_true", help="the small dataset of bench_depth.py --quick")
    parser.add_argument("--out", type=Path, default=Path("bench/diagnostics"))
    parser.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. model.dt=0.25")
    args = parser.parse_args(argv)
    try:
        config = check_buildable(load_config(args.config, (QUICK if args.quick else []) + args.overrides))
        args.out.mkdir(parents=True, exist_ok=True)
        energies, gradients = diagnostics_run(config, args.layers, args.alphas, args.epochs, args.graphs, args.out)
    except (ConfigError, StoreError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    write_rows(energies, args.out / "dirichlet_energy.csv")
    write_rows(gradients, args.out / "gradient_norms.csv")
    plot_per_layer(energies, [("energy_h", "Dirichlet energy E(H^n)"), ("energy_x", "Dirichlet energy E(X^n)")],
                   args.out / "dirichlet_energy.png", f"{args.layers} layers")
    plot_per_layer(gradients, [("grad_params", "|dL/dtheta_n|"), ("grad_h", "|dL/dH^n|"), ("grad_x", "|dL/dX^n|")],
                   args.out / "gradient_norms.png", f"{args.layers} layers")
    last = {(r["model"], r["stage"]): r for r in energies}
    print(f"{'model':<24s}{'stage':<9s}{'E(H^L)':>12s}{'E(X^L)':>12s}{'test MSE':>11s}")
    for (model, stage), row in last.items():
        print(f"{model:<24s}{stage:<9s}{row['energy_h']:12.4g}{row['energy_x']:12.4g}{row['test_mse']:11.5f}")
    print(f"wrote {args.out}/dirichlet_energy.csv/.png and {args.out}/gradient_norms.csv/.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
