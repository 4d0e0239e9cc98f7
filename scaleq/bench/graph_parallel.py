"""Strong scaling of graph parallelism: ONE graph of N particles split over R ranks.

Every setting starts R fresh processes (gloo on the CPU, nccl on GPUs) that form one
graph-parallel group through the real engine (``TorchEngine(graph_parallel=R)``) and time full
training steps of EGNN on the same radius graph: the partition and graph build
(``engine.prepare_batch``), forward with the per-layer halo exchange, loss, backward (halo
gradients back to their owners, DDP's gradient sum) and the optimizer step. Each rank reports
its median step time, its share (owned nodes, edges, halo rows), the bytes autograd keeps for the
backward in its first step (``saved_mb``, allocator-independent) and the memory of that step
over what it held before (imports and the model excluded): on CUDA the peak allocated bytes, on
the CPU the peak resident set (:func:`scaleq.bench.memory.peak_memory`); ``peak_mb`` is the
process's whole peak during the steps. The graph is ``scaleq.bench.models``'s random particle cloud.

Halo traffic per layer: the message-passing block extends the source term W_j h [N, H] and the
positions [N, D] once per layer, so each rank receives N_halo (H + D) values per layer in the
forward pass and sends as many gradients back in the backward pass.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from scaleq.bench.memory import peak_memory
from scaleq.bench.models import Workload, random_particles
from scaleq.graph.builder import GraphBuilder
from scaleq.io import write_rows

FIELDS = [
    "ranks", "particles", "edges", "step_s", "speedup", "efficiency", "halo_rows_per_rank",
    "halo_mb_per_layer", "saved_mb_per_rank", "peak_mb_per_rank", "growth_mb_per_rank",
]


def bench_rank(rank: int, world_size: int, port: int, cfg: dict[str, Any], out: str) -> None:
    """One rank of a ``world_size``-rank graph-parallel group: time ``cfg["steps"]`` steps after
    one warm-up step; writes ``<out>/rank<rank>.json``."""
    from scaleq.config import LossConfig
    from scaleq.distributed import TorchEngine
    from scaleq.distributed.spawn import rank_env
    from scaleq.losses import training_loss
    from scaleq.models.egnn import EGNN

    rank_env(rank, world_size, port)
    engine = TorchEngine(device=cfg["device"], graph_parallel=world_size)
    torch.manual_seed(0)
    model = EGNN(in_node_features=2, in_edge_features=2, hidden=cfg["hidden"], layers=cfg["layers"])
    wrapped = engine.wrap(model, torch.optim.Adam(model.parameters(), lr=1e-4))
    work = Workload(graphs=1, nodes=cfg["particles"], neighbours=cfg["neighbours"])
    whole = random_particles(work)
    graph = GraphBuilder(kind="radius", radius=work.radius, max_num_neighbors=4 * int(cfg["neighbours"]) + 16)
    cuda = engine.device.type == "cuda"
    times, batch, growth = [], None, 0.0
    saved: dict[int, int] = {}  # storage address -> bytes autograd keeps in the first step

    def keep(t: torch.Tensor) -> torch.Tensor:
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with peak_memory(engine.device) as memory:
        for step in range(cfg["steps"] + 1):
            engine.barrier()
            start = time.perf_counter()
            batch = engine.prepare_batch(whole.clone(), graph)
            if step:
                loss, _ = training_loss(wrapped(batch), batch, LossConfig())
            else:
                with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
                    loss, _ = training_loss(wrapped(batch), batch, LossConfig())
            engine.backward(loss)
            engine.step()
            if cuda:
                torch.cuda.synchronize(engine.device)
            engine.barrier()
            if step:  # the first step warms up and is the one whose memory is measured
                times.append(time.perf_counter() - start)
            else:
                growth = max(0, memory.so_far() - memory.base) / 2**20
    assert batch is not None
    halo = getattr(batch, "halo", None)
    peak = memory.peak_mb
    report = {
        "step_s": statistics.median(times), "owned": int(batch.pos.shape[0]), "edges": int(batch.edge_index.shape[1]),
        "halo_rows": 0 if halo is None else halo.num_halo, "peak_mb": peak, "growth_mb": growth,
        "saved_mb": sum(saved.values()) / 2**20,
    }
    Path(out, f"rank{rank}.json").write_text(json.dumps(report))
    engine.close()


def summarise(ranks: int, reports: list[dict[str, Any]], cfg: dict[str, Any], base: tuple[int, float]) -> dict[str, Any]:
    """One table row from the ranks' reports (a step takes as long as its slowest rank); speed-up
    and efficiency against ``base`` = (ranks, step time) of the first setting.

    efficiency = base step time x base ranks / (step time x ranks): 1 is perfect strong scaling."""
    step = max(r["step_s"] for r in reports)
    halo_rows = [r["halo_rows"] for r in reports]
    values_per_row = cfg["hidden"] + 3  # W_j h and the position, per layer
    speedup = base[1] / step
    return {
        "ranks": ranks, "particles": cfg["particles"], "edges": sum(r["edges"] for r in reports),
        "step_s": round(step, 4), "speedup": round(speedup, 3), "efficiency": round(speedup * base[0] / ranks, 3),
        "halo_rows_per_rank": round(sum(halo_rows) / ranks, 1),
        "halo_mb_per_layer": round(sum(halo_rows) * values_per_row * 4 / 2**20, 3),  # fp32, all ranks, forward
        "saved_mb_per_rank": round(max(r["saved_mb"] for r in reports), 1),
        "peak_mb_per_rank": round(max(r["peak_mb"] for r in reports), 1),
        "growth_mb_per_rank": round(max(r["growth_mb"] for r in reports), 1),
    }


def run_strong_scaling(cfg: dict[str, Any], ranks: list[int], folder: Path) -> list[dict[str, Any]]:
    """Every R in ``ranks`` in fresh processes; one summary row each (speed-up against the first R)."""
    from scaleq.distributed.process_group import free_port
    from scaleq.distributed.spawn import spawn

    rows: list[dict[str, Any]] = []
    base: tuple[int, float] | None = None
    for r in ranks:
        out = folder / f"r{r}"
        out.mkdir(parents=True, exist_ok=True)
        spawn(bench_rank, r, free_port(), cfg, str(out), timeout=cfg.get("timeout", 1800))
        reports = [json.loads((out / f"rank{i}.json").read_text()) for i in range(r)]
        base = base or (r, max(report["step_s"] for report in reports))
        rows.append(summarise(r, reports, cfg, base))
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    header = ("R", "edges", "step s", "speed-up", "eff.", "halo rows/rank", "halo MB/layer", "saved MB/rank",
              "peak MB/rank", "step MB/rank")
    print("".join(f"{h:>15}" for h in header))
    for r in rows:
        print("".join(f"{r[k]:>15}" for k in FIELDS if k != "particles"))


def plot(rows: list[dict[str, Any]], png: Path) -> None:
    """Step time and memory per rank against R."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ranks = [r["ranks"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    left.plot(ranks, [r["step_s"] for r in rows], marker="o", label="measured")
    left.plot(ranks, [rows[0]["step_s"] * ranks[0] / k for k in ranks], ls="--", label="ideal 1/R")
    left.set(xlabel="ranks R", ylabel="step time (s)", xticks=ranks)
    left.legend()
    right.plot(ranks, [r["growth_mb_per_rank"] for r in rows], marker="o")
    right.set(xlabel="ranks R", ylabel="memory per rank (MB)", xticks=ranks)
    fig.suptitle(f"one graph of {rows[0]['particles']} particles, EGNN")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)
    plt.close(fig)


def run(cfg: dict[str, Any], ranks: list[int], out: Path) -> list[dict[str, Any]]:
    """:func:`run_strong_scaling` over ``ranks``; writes ``<out>/graph_parallel.csv`` and ``.png``
    and prints the table."""
    import tempfile

    print(f"one graph of {cfg['particles']} particles, EGNN {cfg['layers']} x {cfg['hidden']}, ranks {ranks} "
          f"on {cfg['device']}")
    with tempfile.TemporaryDirectory(prefix="gp-bench-") as folder:
        rows = run_strong_scaling(cfg, ranks, Path(folder))
    write_rows(rows, out / "graph_parallel.csv", FIELDS)
    plot(rows, out / "graph_parallel.png")
    print_table(rows)
    print(f"wrote {out / 'graph_parallel.csv'} and {out / 'graph_parallel.png'}")
    return rows
