"""The scaling model's tables (scaleq.bench.scaling_report): data and graph parallelism at 8, 64 and
256 GPUs over NVLink, InfiniBand HDR/NDR and 100 GbE, and the namespace hosts' measurements next
to the model's figures for them.

    python launch/scaling_model.py                                   # print, with docs/scaling_hosts.csv
    python launch/scaling_model.py --update docs/scaling.md          # rewrite the page's generated tables
    python launch/scaling_model.py --measured bench/scaling_hosts.csv   # a fresh benchmark's CSV
"""

from __future__ import annotations

import argparse
from pathlib import Path

from scaleq.bench.scaling_report import markdown, read_measured, update_page


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--measured", type=Path, default=Path("docs/scaling_hosts.csv"),
                        help="CSV of launch/bench_scaling.py --hosts")
    parser.add_argument("--update", type=Path, default=None, help="rewrite this page's generated tables")
    args = parser.parse_args(argv)
    tables = markdown(read_measured(args.measured))
    if args.update:
        update_page(args.update, tables)
        print(f"updated {args.update}")
    else:
        print(tables)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
