"""Scaling of EGNN training. Two set-ups (scaleq.bench.scaling, scaleq.bench.host_scaling):

Ray workers (graphs/s, edges/s, per-worker memory, data parallel, strong and weak); writes
bench/scaling.csv and bench/scaling.png:

    python launch/bench_scaling.py                                # 1, 2 workers; 1, 2 simulated nodes (CPU)
    python launch/bench_scaling.py --address auto --workers 1 2 4 8 --nodes 1 --use-gpu   # a real cluster

Simulated nodes are ray.cluster_utils.Cluster nodes on this machine (workers spread one per node);
with --address the script joins a real cluster instead and --nodes is ignored.

Hosts with their own network (--hosts; needs root): 1, 2, 4 network namespaces on one bridge
(tests/distributed/hosts.py), links shaped by a token bucket to each --rates figure, one CPU rank
per host over gloo; data parallel and graph parallel (weak, and strong on one graph); per step the
compute, step time, bytes on the wire, all-reduce and halo bytes, efficiency against one host.
Writes bench/scaling_hosts.csv and bench/scaling_hosts.png:

    sudo .venv/bin/python launch/bench_scaling.py --hosts 1 2 4 --rates 1000 10000
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from scaleq.bench import scaling


def ray_workers(args: argparse.Namespace) -> None:
    from scaleq.launchers.ray import run_in_workers

    os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="rq", dir="/tmp"))
    storage = tempfile.mkdtemp(prefix="scaling-", dir=os.environ["RAY_TMPDIR"])
    cfg = {"batch": args.batch, "graph_nodes": args.graph_nodes, "steps": args.steps, "use_gpu": args.use_gpu}
    settings = [(w, n) for w in args.workers for n in ([1] if args.address else args.nodes) if n <= w and w % n == 0]
    if (1, 1) not in settings:  # the efficiency's baseline
        settings.insert(0, (1, 1))
    scaling.run(settings, lambda w, n: run_in_workers(scaling.time_steps, cfg, workers=w, nodes=n, address=args.address,
                                                      use_gpu=args.use_gpu, storage=storage, name=f"scaling-{w}w{n}n"),
                args.out)


def namespace_hosts(args: argparse.Namespace) -> None:
    from scaleq.bench import host_scaling

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: the tests' host fixture
    from tests.distributed.hosts import HostNet, unavailable

    reason = unavailable()
    if reason is not None:
        raise SystemExit(f"--hosts: {reason}")
    cfg = {"particles": args.particles, "strong_particles": args.strong_particles, "neighbours": args.neighbours,
           "hidden": 64, "layers": 4, "steps": args.steps}
    host_scaling.run(HostNet, args.hosts, args.rates, args.modes, cfg, args.out, passes=args.passes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 2], help="simulated nodes (workers spread)")
    parser.add_argument("--address", default=None, help="join this Ray cluster instead of simulating nodes")
    parser.add_argument("--use-gpu", action="store_true")
    parser.add_argument("--batch", type=int, default=32, help="graphs: global batch (strong), per worker (weak)")
    parser.add_argument("--graph-nodes", type=int, default=50, help="nodes per complete graph")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--hosts", type=int, nargs="+", default=None, help="namespace hosts instead of Ray workers")
    parser.add_argument("--rates", type=float, nargs="+", default=[1000, 10000], help="--hosts: link Mbit/s")
    parser.add_argument("--modes", nargs="+", default=["data", "graph", "graph-strong"], help="--hosts: what to run")
    parser.add_argument("--particles", type=int, default=2000, help="--hosts: particles per rank (weak modes)")
    parser.add_argument("--strong-particles", type=int, default=4000, help="--hosts: the one graph of graph-strong")
    parser.add_argument("--neighbours", type=float, default=18.0, help="--hosts: mean neighbours per particle")
    parser.add_argument("--passes", type=int, default=1, help="--hosts: sweeps; each setting keeps its fastest")
    parser.add_argument("--out", type=Path, default=Path("bench"))
    args = parser.parse_args(argv)
    if args.hosts:
        namespace_hosts(args)
    else:
        ray_workers(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
