"""Radius-graph backends and training steps on one device, side by side, in one run.

    python launch/bench_gpu.py                          # CUDA: 8k .. 4M particles, 4 x 8k and 1 x 100k steps
    python launch/bench_gpu.py --device cpu --quick     # the same on small sizes (CI runs this)
    python launch/bench_gpu.py --device cpu --graphs-only --max-nodes 1000000   # CPU radius graphs

Radius graphs (~20 neighbours): torch-cluster and the cell list (torch and Triton pair searches),
with a check that the edge sets agree. Training steps (graph build + forward + backward + Adam):
EGNN and FastEGNN-<3,0.75>, 4 layers, H=64, fp32 and bf16, as edge-layers/s and as a ratio to a
plain EGNN in the published code's style. Edge reductions: index_add_ (int64, int32 indices)
against torch.segment_reduce. Writes bench/gpu_<device>.csv and .png and prints a table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scaleq.eval.gpu_bench import device_slug, plot, run  # noqa: E402
from scaleq.eval.report import write_rows  # noqa: E402

COLUMNS = ("part", "case", "variant", "model", "precision", "nodes", "edges", "ms", "edge_layers_per_s",
           "ratio_to_reference", "peak_mb", "agree", "device", "torch", "cuda", "triton")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="small sizes (seconds on a CPU)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per row (median reported; default 10, quick 1)")
    parser.add_argument("--max-nodes", type=int, default=None, help="skip radius-graph cases with more particles")
    parser.add_argument("--graphs-only", action="store_true", help="radius graphs only, no training steps")
    parser.add_argument("--out", type=Path, default=Path("bench"))
    args = parser.parse_args(argv)

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here (use --device cpu --quick)")
    device = torch.device(args.device)
    repeats = args.repeats or (1 if args.quick else 10)
    rows = run(device, args.quick, repeats, steps=not args.graphs_only, max_nodes=args.max_nodes)

    env = rows[0]
    print(f"{env['device']}, torch {env['torch']}, CUDA {env['cuda']}, Triton {env['triton']}")
    print(f"\n{'radius graph':<14}{'backend':<22}{'edges':>12}{'ms':>11}{'peak MB':>10}  agree")
    for r in (r for r in rows if r["part"] == "radius_graph"):
        print(f"{r['case']:<14}{r['variant']:<22}{r['edges']:>12}{r['ms']:>11.2f}{_mb(r['peak_mb']):>10}  {r['agree']}")
    reductions = [r for r in rows if r["part"] == "edge_reduce"]
    if reductions:
        print(f"\n{'reduce':<10}{'variant':<20}{'edges':>10}{'ms':>10}  agree")
    for r in reductions:
        print(f"{r['case']:<10}{r['variant']:<20}{r['edges']:>10}{r['ms']:>10.2f}  {r['agree']}")
    steps = [r for r in rows if r["part"] == "train_step"]
    if steps:
        print(f"\n{'step':<10}{'variant':<20}{'prec':<6}{'edges':>10}{'ms':>10}{'M edge-layers/s':>17}{'x ref':>7}{'peak MB':>10}")
    for r in steps:
        print(f"{r['case']:<10}{r['variant']:<20}{r['precision']:<6}{r['edges']:>10}{r['ms']:>10.1f}"
              f"{r['edge_layers_per_s'] / 1e6:>17.2f}{r['ratio_to_reference']:>7.2f}{_mb(r['peak_mb']):>10}")

    stem = args.out / f"gpu_{device_slug(device)}"
    write_rows(rows, Path(f"{stem}.csv"), COLUMNS)
    plot(rows, Path(f"{stem}.png"), str(env["device"]))
    print(f"\nwrote {stem}.csv and {stem}.png")
    return 0


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


if __name__ == "__main__":
    raise SystemExit(main())
