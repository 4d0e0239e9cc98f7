"""The largest single radius graph one training step fits in a memory budget, per block path.

    python launch/bench_large_graph.py                                   # CPU, 1 GB budget
    python launch/bench_large_graph.py --device cuda --budget-mb 75000 --start-nodes 100000 \\
        --max-nodes 20000000 --paths reference torch chunked triton

For EGNN and FastEGNN-<3, 0.75> (4 x 64, ~20 neighbours per particle) and each path (reference:
EGNN before the shared block; torch; chunked; triton), N doubles from --start-nodes until a step
needs more than --budget-mb (peak) or fails; every size runs in a fresh process (scaleq.eval.large_graph).
Then the step time of each path at --compare-nodes, side by side in one process, and each path's
peak there. Writes bench/large_graph.csv and bench/large_graph_times.csv and prints tables.

    python launch/bench_large_graph.py --graph-parallel 1 2 4 --compare-nodes 20000      # CPU, gloo
    python launch/bench_large_graph.py --graph-parallel 1 2 4 8 --compare-nodes 1000000 --device cuda

--graph-parallel R...: strong scaling instead: ONE graph of --compare-nodes particles split over R
ranks (fresh processes, gloo or nccl; scaleq.eval.graph_parallel_bench): step time, efficiency,
halo traffic per layer and memory per rank, to bench/graph_parallel.csv/.png. On a CPU with fewer
cores than R the ranks share cores (then only the memory and halo columns mean something).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scaleq.eval.large_graph import (  # noqa: E402
    MODELS,
    PATHS,
    Trial,
    largest_graph,
    measure_in_fresh_process,
    side_by_side_times,
)
from scaleq.eval.report import write_rows  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=["reference", "torch", "chunked"])
    parser.add_argument("--budget-mb", type=float, default=1024)
    parser.add_argument("--start-nodes", type=int, default=4000)
    parser.add_argument("--max-nodes", type=int, default=1 << 18)
    parser.add_argument("--compare-nodes", type=int, default=8000, help="N of the side-by-side timing (0: skip)")
    parser.add_argument("--edge-chunk", type=int, default=32768)
    parser.add_argument("--neighbours", type=float, default=20.0)
    parser.add_argument("--checkpointing", type=int, default=0, help="gradient checkpointing every k layers (0: off)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--timeout-s", type=float, default=3600, help="time limit of each size's process")
    parser.add_argument("--out", type=Path, default=Path("bench"))
    parser.add_argument("--graph-parallel", type=int, nargs="+", default=None, metavar="R",
                        help="strong scaling of one graph over R ranks instead (EGNN, --compare-nodes particles)")
    parser.add_argument("--steps", type=int, default=3, help="--graph-parallel: timed steps after a warm-up step")
    args = parser.parse_args()
    if args.graph_parallel:
        return graph_parallel_mode(args)

    base = Trial(model="egnn", path="torch", nodes=args.start_nodes, neighbours=args.neighbours,
                 edge_chunk=args.edge_chunk, gradient_checkpointing=args.checkpointing, device=args.device)
    trials = [replace(base, model=m, path=p) for m in args.models for p in args.paths
              if not (p == "reference" and m != "egnn")]
    rows = []
    for trial in trials:
        rows += largest_graph(trial, args.budget_mb, args.max_nodes, timeout_s=args.timeout_s)
    write_rows(rows, args.out / "large_graph.csv")
    print(f"\nlargest graph within {args.budget_mb:.0f} MB ({args.device}):")
    print(f"{'model':9s} {'path':10s} {'nodes':>10s} {'edges':>12s} {'peak MB':>9s} {'saved MB':>9s}")
    for trial in trials:
        fitting = [r for r in rows if r["model"] == trial.model and r["path"] == trial.path and r["fits"]]
        best = fitting[-1] if fitting else None
        print(f"{trial.model:9s} {trial.path:10s} " + (f"{best['nodes']:>10,d} {best['edges']:>12,d} {best['peak_mb']:>9.1f} {best['saved_mb']:>9.1f}"
                                                       if best else f"{'none':>10s}"))
    if args.compare_nodes:
        compared = [replace(t, nodes=args.compare_nodes) for t in trials]
        seconds = side_by_side_times(compared)
        times = []
        for trial, s in zip(compared, seconds):
            peak = measure_in_fresh_process(trial, steps=0)
            if peak["error"]:
                peak.update(edges=0, peak_mb=float("nan"), saved_mb=float("nan"))
            times.append({**peak, "step_s": round(s, 3)})
        write_rows(times, args.out / "large_graph_times.csv")
        print(f"\none step at N={args.compare_nodes} (times side by side in one process; peaks in fresh processes):")
        print(f"{'model':9s} {'path':10s} {'edges':>9s} {'step s':>8s} {'peak MB':>9s} {'saved MB':>9s}")
        for row in times:
            print(f"{row['model']:9s} {row['path']:10s} {row['edges']:>9,d} {row['step_s']:>8.3f} {row['peak_mb']:>9.1f} "
                  f"{row['saved_mb']:>9.1f}")
    print(f"\nwrote {args.out / 'large_graph.csv'}" + (f" and {args.out / 'large_graph_times.csv'}" if args.compare_nodes else ""))
    return 0


def graph_parallel_mode(args: argparse.Namespace) -> int:
    import tempfile

    from scaleq.eval.graph_parallel_bench import FIELDS, plot, print_table, run_strong_scaling

    cfg = {"particles": args.compare_nodes, "neighbours": args.neighbours, "hidden": 64, "layers": 4,
           "steps": args.steps, "device": args.device}
    print(f"one graph of {args.compare_nodes} particles, EGNN 4 x 64, ranks {args.graph_parallel} on {args.device}")
    with tempfile.TemporaryDirectory(prefix="gp-bench-") as folder:
        rows = run_strong_scaling(cfg, args.graph_parallel, Path(folder))
    write_rows(rows, args.out / "graph_parallel.csv", FIELDS)
    plot(rows, args.out / "graph_parallel.png")
    print_table(rows)
    print(f"wrote {args.out / 'graph_parallel.csv'} and {args.out / 'graph_parallel.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
