"""Forward+backward time and peak memory of EGNN, EGNN* and FastEGNN-<C, p>, side by side.

    python launch/bench_models.py                        # CPU: 2 graphs x 3000 particles, ~24 neighbours
    python launch/bench_models.py --device cuda --nodes 8000 --graphs 20 --neighbours 12   # Water-3D-sized

Prints the paper's "Relative Time" (time / EGNN's) with absolute ms and MB, and writes
bench/models_<device>.csv and bench/models_<device>.png.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scaleq.bench.models import Workload, run_variants, table1_variants  # noqa: E402
from scaleq.io import write_rows  # noqa: E402

COLUMNS = ("label", "model", "edge_drop", "virtual_nodes", "nodes", "edges", "ms", "relative_time", "peak_mb")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--graphs", type=int, default=2, help="graphs per batch")
    parser.add_argument("--nodes", type=int, default=3000, help="particles per graph")
    parser.add_argument("--neighbours", type=float, default=24.0, help="mean neighbours per particle (sets the radius)")
    parser.add_argument("--virtual-nodes", type=int, default=3, help="C of FastEGNN")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds over all variants (best reported)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--out", type=Path, default=Path("bench"))
    args = parser.parse_args(argv)

    work = Workload(
        graphs=args.graphs, nodes=args.nodes, neighbours=args.neighbours, hidden=args.hidden, layers=args.layers,
        repeats=args.repeats, device=args.device,
    )
    print(f"{args.graphs} graphs x {args.nodes} particles, radius {work.radius:.4f}, H={args.hidden}, "
          f"{args.layers} layers, {args.device}; memory per variant in a fresh process, times round-robin", flush=True)
    rows = run_variants(table1_variants(args.virtual_nodes), work)

    print(f"{'variant':<20}{'edges':>10}{'rel. time':>11}{'ms':>10}{'peak MB':>10}")
    for r in rows:
        print(f"{r['label']:<20}{r['edges']:>10}{r['relative_time']:>11.2f}{r['ms']:>10.1f}{r['peak_mb']:>10.1f}")

    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"models_{args.device}"
    write_rows(rows, Path(f"{stem}.csv"), COLUMNS)
    plot(rows, Path(f"{stem}.png"), f"{args.graphs} x {args.nodes} particles, {args.device}")
    print(f"wrote {stem}.csv and {stem}.png")
    return 0


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [str(r["label"]) for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, name in ((axes[0], "relative_time", "time / EGNN"), (axes[1], "peak_mb", "peak memory (MB)")):
        bars = ax.bar(labels, [float(r[key]) for r in rows], color=["#888"] * 2 + ["#2a7"] * (len(rows) - 2))
        ax.bar_label(bars, fmt="%.2f" if key == "relative_time" else "%.0f", fontsize=8)
        ax.set_ylabel(name)
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    fig.suptitle(f"forward + backward, {title}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
