"""Train a model from a config.

    python launch/train.py                                   # the embedded default (5-body EGNN)
    python launch/train.py --config configs/egnn_nbody.yaml train.lr=1e-3 data.batch_size=50
    python launch/train.py --config C --resume               # continue runs/<name> from last.pt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from scaleq.config import ConfigError, load_config  # noqa: E402
from scaleq.data.store import StoreError  # noqa: E402
from scaleq.train.run import run  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=None, help="YAML config (default: configs/default.yaml)")
    parser.add_argument("--resume", action="store_true", help="continue <out_dir>/<name> from its last checkpoint")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=1e-3")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, args.overrides)
        summary = run(config, resume=args.resume)
    except (ConfigError, StoreError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(summary.describe())
    return 0


if __name__ == "__main__":
    sys.exit(main())
