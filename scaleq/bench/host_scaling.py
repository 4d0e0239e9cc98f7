"""Scaling across hosts with their own network: data and graph parallelism, one CPU rank per host.

The hosts are network namespaces on one bridge (any objects with ``hostname``, ``popen`` and
``shape``, e.g. the tests' ``HostNet``), each link shaped to ``rate_mbit`` by a token bucket. Every
setting starts one fresh process per host (gloo, the interface chosen by the engine), EGNN on
random particle clouds with radius graphs (``scaleq.bench.models``), three modes:

- ``data``: data parallelism, weak: every rank its own graph of ``particles`` particles; DDP's
  gradient all-reduce is the traffic.
- ``graph``: graph parallelism, weak: ONE graph of ``particles`` x hosts particles cut over all
  hosts (one group spanning them); the halo exchange (per layer) and the gradient all-reduce.
- ``graph-strong``: graph parallelism, strong: one graph of ``strong_particles`` on every host count.

Each timed iteration runs two steps after one barrier each. The COMPUTE step is forward, loss and
backward under DDP's ``no_sync`` (no gradient all-reduce) minus the seconds spent inside the
halo's collectives (which the batch's halo counts itself, ``GraphHalo.seconds``); the STEP is a
whole training step (graph build or partition, forward, backward with the all-reduce, optimizer)
between two barriers, so it lasts as long as the slowest rank. Each rank reports the fastest of
its timed iterations (on shared cores other jobs only ever add time); the row takes the slowest
rank. ``wire`` counts what this host's
``eth0`` sent during the step (/proc/net/dev: payload plus TCP/IP and Ethernet headers); the halo
figures count what the halo exchanges received (``GraphHalo.received_bytes``: forward the rows,
backward their gradients).
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

from scaleq.bench.scaling_model import ring_allreduce_bytes
from scaleq.io import save_figure, write_rows

MODES = ("data", "graph", "graph-strong")
FIELDS = [
    "mode", "hosts", "rate_mbit", "particles", "edges_per_rank", "step_s", "compute_s", "comm_s", "prepare_s",
    "grad_kb", "ring_kb_per_rank", "wire_kb_per_rank", "halo_rows_per_rank", "halo_kb_per_layer", "efficiency",
    "compute_share",
]
MASTER_PORT = 29600


class Host(Protocol):
    hostname: str

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen: ...

    def shape(self, rate_mbit: float) -> None: ...


class Net(Protocol):
    hosts: list[Any]

    def __enter__(self) -> Net: ...

    def __exit__(self, *exc: object) -> None: ...


def interface_bytes(interface: str = "eth0", table: str = "/proc/net/dev") -> tuple[int, int]:
    """(received, sent) bytes of ``interface`` in this process's network namespace."""
    return parse_net_dev(Path(table).read_text(), interface)


def parse_net_dev(text: str, interface: str) -> tuple[int, int]:
    """(received, sent) bytes of ``interface`` from the text of /proc/net/dev."""
    for line in text.splitlines()[2:]:
        name, _, counters = line.partition(":")
        if name.strip() == interface:
            fields = counters.split()
            if len(fields) < 16:
                raise ValueError(f"/proc/net/dev: the line of {interface} has {len(fields)} counters, expected 16")
            return int(fields[0]), int(fields[8])
    raise ValueError(f"/proc/net/dev has no interface {interface!r}")


def rank_main(cfg_path: str) -> None:
    """One rank (started on its host by :func:`run_setting`): times the steps, writes its report
    to ``cfg["out"]/rank<R>.json``."""
    import torch

    from scaleq.bench.models import Workload, random_particles
    from scaleq.config import LossConfig
    from scaleq.distributed import TorchEngine
    from scaleq.graph.builder import GraphBuilder
    from scaleq.losses import training_loss
    from scaleq.models.egnn import EGNN

    cfg = json.loads(Path(cfg_path).read_text())
    torch.set_num_threads(1)
    engine = TorchEngine(device="cpu", graph_parallel=cfg["graph_parallel"])
    torch.manual_seed(0)
    model = EGNN(in_node_features=2, in_edge_features=2, hidden=cfg["hidden"], layers=cfg["layers"])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    wrapped = engine.wrap(model, optimizer)
    seed = engine.rank if cfg["graph_parallel"] == 1 else 0  # data parallel: each rank its own graph
    work = Workload(graphs=1, nodes=cfg["graph_nodes"], neighbours=cfg["neighbours"], seed=seed)
    whole = random_particles(work)
    graph = GraphBuilder(kind="radius", radius=work.radius, max_num_neighbors=4 * int(cfg["neighbours"]) + 16)
    no_sync: Callable[[], AbstractContextManager[Any]] = getattr(wrapped, "no_sync", contextlib.nullcontext)
    steps, computes, prepares, wires, halo, batch = [], [], [], [], [], None
    for i in range(cfg["steps"] + 1):  # the first iteration warms up
        engine.barrier()
        start = time.perf_counter()
        with no_sync():
            batch = engine.prepare_batch(whole.clone(), graph)
            engine.backward(training_loss(wrapped(batch), batch, LossConfig())[0])
        compute = time.perf_counter() - start - _halo(batch)[0]
        optimizer.zero_grad(set_to_none=True)

        engine.barrier()
        sent = interface_bytes()[1] if cfg["hosts"] > 1 else 0  # one host runs without a link
        start = time.perf_counter()
        batch = engine.prepare_batch(whole.clone(), graph)
        prepared = time.perf_counter() - start
        engine.backward(training_loss(wrapped(batch), batch, LossConfig())[0])
        engine.step()
        engine.barrier()
        if i:
            steps.append(time.perf_counter() - start)
            computes.append(compute)
            prepares.append(prepared)
            wires.append((interface_bytes()[1] if cfg["hosts"] > 1 else 0) - sent)
            halo.append(_halo(batch)[1])
    assert batch is not None
    report = {
        # the least-disturbed iteration: other jobs share the cores, and what they cost only adds
        "step_s": min(steps), "compute_s": min(computes), "prepare_s": min(prepares), "wire_bytes": statistics.median(wires),
        "halo_bytes": statistics.median(halo), "edges": int(batch.edge_index.shape[1]),
        "halo_rows": getattr(getattr(batch, "halo", None), "num_halo", 0),
        "grad_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
        "steps": steps, "computes": computes,  # every timed iteration, for a look at the spread
    }
    Path(cfg["out"], f"rank{engine.rank}.json").write_text(json.dumps(report))
    engine.close()


def _halo(batch: Any) -> tuple[float, int]:
    """(seconds, received bytes) of the batch's halo collectives; nothing without graph parallelism."""
    halo = getattr(batch, "halo", None)
    return (0.0, 0) if halo is None else (halo.seconds, halo.received_bytes)


def run_setting(hosts: Sequence[Host], cfg: dict[str, Any], folder: Path, port: int,
                timeout: float = 600) -> list[dict[str, Any]]:
    """One rank on each of ``hosts`` (rank i on host i + 1, MASTER_ADDR the first host's name);
    their reports, or an error with the log of the rank that failed."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cfg.json").write_text(json.dumps({**cfg, "out": str(folder)}))
    root = str(Path(__file__).resolve().parents[2])
    argv = [sys.executable, "-c", "import sys; from scaleq.bench.host_scaling import rank_main; rank_main(sys.argv[1])",
            str(folder / "cfg.json")]
    procs, logs = [], []
    for rank, host in enumerate(hosts):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(len(hosts)), "LOCAL_RANK": "0",
               "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": hosts[0].hostname, "MASTER_PORT": str(port),
               "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
        log = open(folder / f"{host.hostname}.log", "w")  # noqa: SIM115 - closed below
        logs.append(log)
        procs.append(host.popen(argv, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT))
    try:
        deadline = time.monotonic() + timeout
        for proc in procs:
            proc.wait(timeout=max(deadline - time.monotonic(), 1))
    finally:
        for log in logs:
            log.close()
    for host, proc in zip(hosts, procs):
        if proc.returncode != 0:
            tail = (folder / f"{host.hostname}.log").read_text()[-3000:]
            raise RuntimeError(f"the rank on {host.hostname} exited with {proc.returncode}:\n{tail}")
    return [json.loads((folder / f"rank{r}.json").read_text()) for r in range(len(hosts))]


def summarise(mode: str, hosts: int, rate: float | None, particles: int, reports: list[dict[str, Any]],
              layers: int) -> dict[str, Any]:
    """One table row (efficiency and compute share are added by :func:`add_efficiency`)."""
    step, compute = max(r["step_s"] for r in reports), max(r["compute_s"] for r in reports)
    grad = reports[0]["grad_bytes"]
    return {
        "mode": mode, "hosts": hosts, "rate_mbit": "" if rate is None else int(rate), "particles": particles,
        "edges_per_rank": round(statistics.mean(r["edges"] for r in reports)),
        "step_s": round(step, 4), "compute_s": round(compute, 4), "comm_s": round(step - compute, 4),
        "prepare_s": round(max(r["prepare_s"] for r in reports), 4),
        "grad_kb": round(grad / 1024, 1), "ring_kb_per_rank": round(ring_allreduce_bytes(grad, hosts) / 1024, 1),
        "wire_kb_per_rank": round(statistics.mean(r["wire_bytes"] for r in reports) / 1024, 1),
        "halo_rows_per_rank": round(statistics.mean(r["halo_rows"] for r in reports), 1),
        "halo_kb_per_layer": round(statistics.mean(r["halo_bytes"] for r in reports) / layers / 1024, 1),
    }


def add_efficiency(rows: list[dict[str, Any]]) -> None:
    """Efficiency against one host of the same mode: weak t1 / tp, strong t1 / (p tp); and the
    share of the step that was compute."""
    for row in rows:
        base = next(r for r in rows if r["mode"] == row["mode"] and r["hosts"] == 1)
        ratio = base["step_s"] / row["step_s"]
        row["efficiency"] = round(ratio / row["hosts"] if row["mode"] == "graph-strong" else ratio, 3)
        row["compute_share"] = round(row["compute_s"] / row["step_s"], 3)


def run(make_net: Callable[[int], Net], host_counts: Sequence[int], rates: Sequence[float], modes: Sequence[str],
        cfg: dict[str, Any], out: Path, passes: int = 1) -> list[dict[str, Any]]:
    """Every mode on every host count (1 host: no link to shape; more: every rate), the whole sweep
    ``passes`` times, keeping each setting's fastest pass (the load of other jobs comes and goes
    over tens of seconds, longer than one setting); writes ``<out>/scaling_hosts.csv`` and ``.png``
    and prints the table."""
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        raise ValueError(f"unknown mode(s) {unknown}: expected some of {list(MODES)}")
    if 1 not in host_counts:
        raise ValueError("the host counts must include 1: efficiency is measured against one host")
    best: dict[tuple[str, int, float | None], dict[str, Any]] = {}
    port = MASTER_PORT
    with tempfile.TemporaryDirectory(prefix="scaling-hosts-") as folder:
        for sweep in range(passes):
            for n in host_counts:
                with make_net(n) as net:
                    for rate in [None] if n == 1 else rates:
                        for host in net.hosts if rate is not None else []:
                            host.shape(rate)
                        for mode in modes:
                            particles = cfg["strong_particles"] if mode == "graph-strong" else (
                                cfg["particles"] * (n if mode == "graph" else 1))
                            setting = {**cfg, "hosts": n, "graph_nodes": particles,
                                       "graph_parallel": 1 if mode == "data" else n}
                            port += 1
                            reports = run_setting(net.hosts, setting, Path(folder, f"{mode}-{n}-{rate}-{sweep}"), port)
                            row = summarise(mode, n, rate, particles, reports, cfg["layers"])
                            print(f"  pass {sweep + 1}: {mode:<13} {n} host(s) {rate or '-':>6} Mbit/s: step "
                                  f"{row['step_s']:.3f} s, compute {row['compute_s']:.3f} s, wire "
                                  f"{row['wire_kb_per_rank']} KB", flush=True)
                            key = (mode, n, rate)
                            if key not in best or row["step_s"] < best[key]["step_s"]:
                                best[key] = row
    rows = [best[(mode, n, rate)] for n in host_counts for rate in ([None] if n == 1 else rates) for mode in modes]
    add_efficiency(rows)
    write_rows(rows, out / "scaling_hosts.csv", FIELDS)
    plot(rows, out / "scaling_hosts.png")
    print_table(rows)
    print(f"\nwrote {out / 'scaling_hosts.csv'} and {out / 'scaling_hosts.png'}")
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    print("\n" + markdown_table(rows))


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The table of docs/benchmarks.md."""
    head = ["mode", "hosts", "Mbit/s", "particles", "edges / rank", "step s", "compute s", "step - compute s",
            "grad KB", "ring KB / rank", "wire KB / rank", "halo rows / rank", "halo KB / layer", "eff."]
    keys = ["mode", "hosts", "rate_mbit", "particles", "edges_per_rank", "step_s", "compute_s", "comm_s",
            "grad_kb", "ring_kb_per_rank", "wire_kb_per_rank", "halo_rows_per_rank", "halo_kb_per_layer", "efficiency"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(r[k]) if r[k] != "" else "-" for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], png: Path) -> None:
    """Efficiency and the step's non-compute seconds against hosts, one line per mode and rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for mode in dict.fromkeys(r["mode"] for r in rows):
        base = next(r for r in rows if r["mode"] == mode and r["hosts"] == 1)
        for rate in dict.fromkeys(r["rate_mbit"] for r in rows if r["mode"] == mode and r["hosts"] > 1):
            sel = [base] + [r for r in rows if r["mode"] == mode and r["rate_mbit"] == rate and r["hosts"] > 1]
            label = f"{mode}, {rate} Mbit/s"
            left.plot([r["hosts"] for r in sel], [r["efficiency"] for r in sel], "-o", label=label)
            right.plot([r["hosts"] for r in sel], [r["comm_s"] for r in sel], "-o", label=label)
    hosts = sorted({r["hosts"] for r in rows})
    left.set(xlabel="hosts (1 CPU rank each)", ylabel="efficiency against 1 host", xticks=hosts, ylim=(0, 1.1))
    right.set(xlabel="hosts (1 CPU rank each)", ylabel="step - compute (s)", xticks=hosts)
    left.legend(fontsize=7)
    fig.suptitle("EGNN across namespace hosts (2 shared CPU cores: 4 hosts oversubscribe them)")
    save_figure(fig, png)

