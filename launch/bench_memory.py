"""Peak memory and step time of EGNN with and without gradient checkpointing, as graphs and depth grow.

    python launch/bench_memory.py                                  # CPU sizes (a few minutes on 2 cores)
    python launch/bench_memory.py --nodes 20000 100000 --layers 4 16 --device cuda

Every variant runs in a fresh subprocess (so peak memory is its own): one radius graph of N
uniform random points with about --degree neighbours per node, L layers, one warm-up step and
--steps timed steps. Memory: on CUDA torch.cuda.max_memory_allocated; on the CPU the rise of the
process's peak RSS over its RSS before the first step (ru_maxrss). Writes bench/memory.csv and
bench/memory.png and prints a table with the with/without ratios.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scaleq.eval.child import run_child  # noqa: E402
from scaleq.eval.report import write_rows  # noqa: E402  (light: no torch at import)

FIELDS = ["nodes", "edges", "layers", "checkpointing", "peak_mb", "step_s"]


def measure(nodes: int, layers: int, every: int, degree: float, hidden: int, steps: int, device: str) -> dict:
    """One variant, in this process."""
    import torch

    from scaleq.data.graph import GraphBuilder
    from scaleq.losses import position_mse
    from scaleq.models.egnn import EGNN
    from scaleq.testing.stores import random_batch

    torch.manual_seed(0)
    dev = torch.device(device)
    batch = random_batch(1, nodes=(nodes,), node_features=2, seed=0)
    batch.pos = torch.rand(nodes, 3)  # unit cube; radius for ~degree neighbours: 4/3 pi r^3 N = degree
    radius = (3 * degree / (4 * math.pi * nodes)) ** (1 / 3)
    graph = GraphBuilder(kind="radius", radius=radius, max_num_neighbors=4 * int(degree) + 8)
    batch = graph(batch.to(dev))
    model = EGNN(in_node_features=2, in_edge_features=2, hidden=hidden, layers=layers, gradient_checkpointing=every)
    model = model.to(dev)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step() -> None:
        loss = position_mse(model(batch)["pos"], batch.target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    rss_before = _rss_mb()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        times.append(time.perf_counter() - start)
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated(dev) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss_before
    return {"nodes": nodes, "edges": int(batch.edge_index.shape[1]), "layers": layers, "checkpointing": every,
            "peak_mb": round(peak, 1), "step_s": round(min(times), 4)}


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, nargs="+", default=[2000, 8000])
    parser.add_argument("--layers", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--degree", type=float, default=16.0, help="mean neighbours per node")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("bench"))
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one variant, print JSON
    args = parser.parse_args()
    if args.one:
        n, layers, every = (int(v) for v in args.one.split(","))
        print(json.dumps(measure(n, layers, every, args.degree, args.hidden, args.steps, args.device)))
        return 0
    rows = []
    for n in args.nodes:
        for layers in args.layers:
            for every in (0, 1):
                cmd = [sys.executable, __file__, "--one", f"{n},{layers},{every}", "--degree", str(args.degree),
                       "--hidden", str(args.hidden), "--steps", str(args.steps), "--device", args.device]
                child = run_child(cmd)
                if not child.ok:
                    print(f"  N={n} L={layers} checkpointing={every} failed: {child.error}", flush=True)
                    return 1
                rows.append(json.loads(child.stdout.strip().splitlines()[-1]))
                print(f"  N={n} L={layers} checkpointing={every}: {rows[-1]['peak_mb']} MB, {rows[-1]['step_s']} s",
                      flush=True)
    write_rows(rows, args.out / "memory.csv", FIELDS)
    print(f"\n{'N':>7} {'E':>9} {'L':>3} | {'MB plain':>9} {'MB ckpt':>8} {'ratio':>6} | {'s plain':>8} {'s ckpt':>7} {'ratio':>6}")
    for plain, ckpt in zip(rows[::2], rows[1::2]):
        print(f"{plain['nodes']:>7} {plain['edges']:>9} {plain['layers']:>3} | {plain['peak_mb']:>9.1f} "
              f"{ckpt['peak_mb']:>8.1f} {ckpt['peak_mb'] / max(plain['peak_mb'], 1e-9):>6.2f} | "
              f"{plain['step_s']:>8.3f} {ckpt['step_s']:>7.3f} {ckpt['step_s'] / plain['step_s']:>6.2f}")
    plot(rows, args.out / "memory.png")
    print(f"\nwrote {args.out / 'memory.csv'} and {args.out / 'memory.png'}")
    return 0


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for layers in sorted({r["layers"] for r in rows}):
        for every, style in ((0, "-o"), (1, "--s")):
            sel = [r for r in rows if r["layers"] == layers and r["checkpointing"] == every]
            label = f"L={layers} {'checkpointed' if every else 'plain'}"
            axes[0].plot([r["edges"] for r in sel], [r["peak_mb"] for r in sel], style, label=label)
            axes[1].plot([r["edges"] for r in sel], [r["step_s"] for r in sel], style, label=label)
    for ax, ylabel in zip(axes, ("peak memory of the step (MB)", "step time (s)")):
        ax.set_xscale("log")
        ax.set_xlabel("edges E")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
