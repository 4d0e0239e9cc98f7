"""Data-parallel scaling of EGNN training: graphs/s, edges/s and per-worker memory under Ray Train.

    python launch/bench_scaling.py                                # 1, 2 workers; 1, 2 simulated nodes (CPU)
    python launch/bench_scaling.py --address auto --workers 1 2 4 8 --nodes 1 --use-gpu   # a real cluster

Each (workers, nodes) setting is one TorchTrainer run; its workers (DDP over gloo or nccl) time
--steps steps on synthetic complete graphs of --graph-nodes nodes, twice: strong scaling (the
global batch --batch is split over the workers) and weak scaling (every worker takes --batch).
Simulated nodes are ``ray.cluster_utils.Cluster`` nodes on this machine (workers spread one per
node); with --address the script joins a real cluster instead and --nodes is ignored. Writes
bench/scaling.csv and bench/scaling.png and prints a table; efficiency is throughput /
(workers x one worker's throughput) in the same mode.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scaleq.io import write_rows  # noqa: E402  (light: no torch at import)

FIELDS = ["mode", "workers", "nodes", "graphs_per_s", "edges_per_s", "worker_rss_mb", "efficiency"]


def worker(cfg: dict) -> None:
    """Runs in every Ray Train worker: time strong- and weak-scaling steps, report rank 0's numbers."""
    import resource
    import time

    import ray.train
    import torch
    from torch_geometric.data import Batch

    from scaleq.data.graph import GraphBuilder
    from scaleq.distributed import TorchEngine
    from scaleq.losses import position_mse
    from scaleq.models.egnn import EGNN
    from scaleq.testing.stores import random_batch

    engine = TorchEngine(device="cpu" if not cfg["use_gpu"] else "cuda")
    world = engine.world_size
    torch.manual_seed(0)
    model = EGNN(in_node_features=2, in_edge_features=2, hidden=64, layers=4)
    model = engine.wrap(model, torch.optim.Adam(model.parameters(), lr=1e-4))
    results = {}
    for mode, per_worker in (("strong", max(1, cfg["batch"] // world)), ("weak", cfg["batch"])):
        graphs = random_batch(1, nodes=(cfg["graph_nodes"],), node_features=2).to_data_list() * per_worker
        batch = GraphBuilder(kind="complete")(Batch.from_data_list(graphs)).to(engine.device)
        times = []
        for i in range(cfg["steps"] + 1):
            engine.barrier()
            start = time.perf_counter()
            loss = position_mse(model(batch)["pos"], batch.target)
            engine.backward(loss)
            engine.step()
            engine.barrier()
            if i:  # the first step warms up
                times.append(time.perf_counter() - start)
        step = sum(times) / len(times)
        edges = int(batch.edge_index.shape[1]) * world
        results[f"{mode}_graphs_per_s"] = per_worker * world / step
        results[f"{mode}_edges_per_s"] = edges / step
    results["worker_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # peak, rank 0
    # Ray Train V2 keeps the metrics of reports that carry a checkpoint: rank 0 attaches an empty one.
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = ray.train.Checkpoint.from_directory(folder) if engine.is_main else None
        ray.train.report(results, checkpoint=checkpoint)


def run_setting(workers: int, nodes: int, args: argparse.Namespace) -> dict:
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from scaleq.launchers.ray import runtime_env

    cluster = None
    if args.address:
        ray.init(address=args.address, runtime_env=runtime_env())
    else:
        from ray.cluster_utils import Cluster

        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": workers // nodes, "include_dashboard": False})
        for _ in range(nodes - 1):
            cluster.add_node(num_cpus=workers // nodes)
        ray.init(address=cluster.address, runtime_env=runtime_env(), log_to_driver=False)
    try:
        trainer = TorchTrainer(
            worker,
            train_loop_config={"batch": args.batch, "graph_nodes": args.graph_nodes, "steps": args.steps,
                               "use_gpu": args.use_gpu},
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=args.use_gpu,
                                         placement_strategy="STRICT_SPREAD" if nodes > 1 else "PACK"),
            run_config=RunConfig(name=f"scaling-{workers}w{nodes}n", storage_path=str(Path(args.storage).resolve())),
        )
        return dict(trainer.fit().metrics)
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 2], help="simulated nodes (workers spread)")
    parser.add_argument("--address", default=None, help="join this Ray cluster instead of simulating nodes")
    parser.add_argument("--use-gpu", action="store_true")
    parser.add_argument("--batch", type=int, default=32, help="graphs: global batch (strong), per worker (weak)")
    parser.add_argument("--graph-nodes", type=int, default=50, help="nodes per complete graph")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("bench"))
    args = parser.parse_args()
    os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="rq", dir="/tmp"))
    args.storage = tempfile.mkdtemp(prefix="scaling-", dir=os.environ["RAY_TMPDIR"])
    settings = [(w, n) for w in args.workers for n in ([1] if args.address else args.nodes) if n <= w and w % n == 0]
    rows = []
    for workers, nodes in settings:
        metrics = run_setting(workers, nodes, args)
        for mode in ("strong", "weak"):
            rows.append({"mode": mode, "workers": workers, "nodes": nodes,
                         "graphs_per_s": round(metrics[f"{mode}_graphs_per_s"], 2),
                         "edges_per_s": round(metrics[f"{mode}_edges_per_s"]),
                         "worker_rss_mb": round(metrics["worker_rss_mb"], 1)})
        print(f"  {workers} worker(s) on {nodes} node(s): {metrics}", flush=True)
    for row in rows:
        base = next(r for r in rows if r["mode"] == row["mode"] and r["workers"] == 1)
        row["efficiency"] = round(row["graphs_per_s"] / (row["workers"] * base["graphs_per_s"]), 3)
    write_rows(rows, args.out / "scaling.csv", FIELDS)
    print(f"\n{'mode':<7}{'workers':>8}{'nodes':>6}{'graphs/s':>10}{'edges/s':>11}{'RSS MB':>8}{'eff.':>6}")
    for r in rows:
        print(f"{r['mode']:<7}{r['workers']:>8}{r['nodes']:>6}{r['graphs_per_s']:>10.1f}{r['edges_per_s']:>11}"
              f"{r['worker_rss_mb']:>8.0f}{r['efficiency']:>6.2f}")
    plot(rows, args.out / "scaling.png")
    print(f"\nwrote {args.out / 'scaling.csv'} and {args.out / 'scaling.png'}")
    return 0


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, mode in zip(axes, ("strong", "weak")):
        for nodes in sorted({r["nodes"] for r in rows}):
            sel = sorted((r for r in rows if r["mode"] == mode and (r["nodes"] == nodes or r["workers"] == 1)),
                         key=lambda r: r["workers"])
            ax.plot([r["workers"] for r in sel], [r["graphs_per_s"] for r in sel], "-o", label=f"{nodes} node(s)")
        base = next(r["graphs_per_s"] for r in rows if r["mode"] == mode and r["workers"] == 1)
        workers = sorted({r["workers"] for r in rows})
        ax.plot(workers, [w * base for w in workers], ":", color="grey", label="ideal")
        ax.set_title(f"{mode} scaling")
        ax.set_xlabel("workers")
        ax.set_ylabel("graphs / s")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
