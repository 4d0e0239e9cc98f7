"""The tables of docs/scaling.md: the scaling model (:mod:`scaleq.bench.scaling_model`) fed with
the measured per-step figures, next to the namespace hosts' measurements.

``launch/scaling_model.py`` prints them, or rewrites the part of docs/scaling.md between
:data:`BEGIN` and :data:`END`, so the page is always what one command makes of the committed CSV.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scaleq.bench import scaling_model as m
from scaleq.io import atomic_write_text

BEGIN, END = "<!-- scaling-model:begin -->", "<!-- scaling-model:end -->"
GPUS = (8, 64, 256)
FABRICS = ("nvlink4", "ib_hdr", "ib_ndr", "eth100")


@dataclass(frozen=True)
class Workload:
    """What one step moves and computes (EGNN 4 x 64, fp32, as in the benchmarks)."""

    grad_bytes: float = 134_084 * 4  # EGNN 4 x 64's parameters (the benchmark's grad_kb: 523.8)
    hidden: int = 64
    layers: int = 4
    dim: int = 3
    # Compute per edge and layer on one GPU, from docs/large-graphs.md (H200, fp32, plain torch, graph
    # built inside the step): one 100k-particle graph of 1.91M edges, 64.5 ms per training step.
    edge_layer_s: float = 64.5e-3 / (1.91e6 * 4)
    neighbours: float = 19.1  # that graph's 1.91M edges / 100k particles


# Measured-side assumption: a message between two namespace hosts (gloo over TCP through the bridge
# on 2 shared cores) costs about 0.2 ms besides its bytes.
NAMESPACE_LATENCY_US = 200.0


def read_measured(path: Path) -> list[dict[str, Any]]:
    """The rows of ``launch/bench_scaling.py --hosts``'s CSV, numbers as numbers."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{path}: no rows (expected the CSV of launch/bench_scaling.py --hosts)")
    missing = {"mode", "hosts", "rate_mbit", "particles", "step_s", "compute_s", "grad_kb", "wire_kb_per_rank",
               "halo_rows_per_rank", "halo_kb_per_layer", "efficiency"} - set(rows[0])
    if missing:
        raise ValueError(f"{path}: missing column(s) {sorted(missing)}")
    out = []
    for row in rows:
        out.append({k: (v if k == "mode" else (float(v) if v != "" else None)) for k, v in row.items()})
    return out


def namespace_check(measured: list[dict[str, Any]], neighbours: float = 18.0, layers: int = 4,
                    hidden: int = 64) -> list[dict[str, Any]]:
    """For every multi-host row: the model's bytes, halo rows, communication and efficiency (with
    the row's measured compute) next to what was measured."""
    out = []
    for row in measured:
        p = int(row["hosts"])
        if p == 1:
            continue
        base = next(r for r in measured if r["mode"] == row["mode"] and r["hosts"] == 1)
        link = m.Link(f"{row['rate_mbit']:.0f} Mbit/s", row["rate_mbit"] / 1000, NAMESPACE_LATENCY_US)
        grad = row["grad_kb"] * 1024
        graph = row["mode"] != "data"
        rows = m.halo_rows(row["particles"], neighbours, p, periodic=False) if graph else 0.0
        peers = m.neighbour_ranks(p) if graph else 0
        comm = m.allreduce_s(grad, p, link) + m.halo_s(rows, hidden, layers, peers, link)
        wire = m.ring_allreduce_bytes(grad, p) + 2 * layers * m.halo_bytes_per_layer(rows, hidden)
        step = row["compute_s"] + comm
        out.append({
            "mode": row["mode"], "hosts": p, "rate_mbit": int(row["rate_mbit"]),
            "wire_kb": (row["wire_kb_per_rank"], wire / 1024),
            "halo_rows": (row["halo_rows_per_rank"], rows),
            "comm_s": (row["step_s"] - row["compute_s"], comm),
            "efficiency": (row["efficiency"], m.efficiency(base["step_s"], step, p, row["mode"] != "graph-strong")),
        })
    return out


def data_parallel(work: Workload = Workload()) -> list[dict[str, Any]]:
    """Per GPU one 100k-particle graph (the measured H200 step): weak; strong with a global batch of
    256 such graphs. Ring as built (one DDP bucket: no overlap) and a tree all-reduce."""
    graph_s = 1.91e6 * work.layers * work.edge_layer_s
    out = []
    for p in GPUS:
        for fabric in FABRICS:
            if fabric == "nvlink4" and p > 8:
                continue
            link = m.LINKS[fabric]
            ring, tree = m.allreduce_s(work.grad_bytes, p, link), m.allreduce_s(work.grad_bytes, p, link, "tree")
            strong_compute = 256 / p * graph_s
            out.append({
                "gpus": p, "fabric": link.name, "ring_ms": 1e3 * ring, "tree_ms": 1e3 * tree,
                "weak_ring": m.efficiency(graph_s, graph_s + ring, p, weak=True),
                "weak_tree": m.efficiency(graph_s, graph_s + tree, p, weak=True),
                "strong_ring": m.efficiency(256 * graph_s, strong_compute + ring, p, weak=False),
            })
    return out


def graph_parallel(particles: float, work: Workload = Workload()) -> list[dict[str, Any]]:
    """One graph of ``particles`` (periodic box: every cut face has a neighbour) over p GPUs.
    Strong: that graph; weak: its 8-GPU share per GPU (the graph grows with p).

    As built: a blocking halo exchange per layer and direction through an all-to-all over the whole
    group (p - 1 messages), a ring all-reduce after the backward. Neighbours: the exchange sent only
    to the neighbouring boxes (at most 26 messages) and a tree all-reduce, nothing overlapped.
    Improved: that, with the exchange hidden behind the edges whose sources are owned and the
    all-reduce hidden in the backward (bucketed)."""
    out = []
    for p in GPUS:
        for fabric in FABRICS:
            if fabric == "nvlink4" and p > 8:
                continue
            link = m.LINKS[fabric]
            row: dict[str, Any] = {"particles": particles, "gpus": p, "fabric": link.name}
            for scaling, total in (("strong", particles), ("weak", particles / 8 * p)):
                own = total / p
                single = own * p * work.neighbours * work.layers * work.edge_layer_s if scaling == "strong" else (
                    own * work.neighbours * work.layers * work.edge_layer_s)
                compute = own * work.neighbours * work.layers * work.edge_layer_s
                rows = m.halo_rows(total, work.neighbours, p, periodic=True)
                built = m.StepModel(
                    compute_s=compute, allreduce_s=m.allreduce_s(work.grad_bytes, p, link),
                    halo_s=m.halo_s(rows, work.hidden, work.layers, p - 1, link, work.dim))
                neighbours = m.StepModel(
                    compute_s=compute, allreduce_s=m.allreduce_s(work.grad_bytes, p, link, "tree"),
                    halo_s=m.halo_s(rows, work.hidden, work.layers, m.neighbour_ranks(p), link, work.dim))
                improved = m.StepModel(
                    compute_s=compute, allreduce_s=m.allreduce_s(work.grad_bytes, p, link, "tree"),
                    halo_s=m.halo_s(rows, work.hidden, work.layers, m.neighbour_ranks(p), link, work.dim),
                    interior_share=max(0.0, 1 - rows / own), overlap_allreduce=True)
                weak = scaling == "weak"
                row[f"{scaling}_own"] = own
                row[f"{scaling}_halo_share"] = rows / own
                row[f"{scaling}_compute_ms"] = 1e3 * compute
                row[f"{scaling}_built"] = m.efficiency(single, built.step_s, p, weak)
                row[f"{scaling}_neighbours"] = m.efficiency(single, neighbours.step_s, p, weak)
                row[f"{scaling}_improved"] = m.efficiency(single, improved.step_s, p, weak)
            out.append(row)
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def _count(x: float) -> str:
    return f"{x / 1e6:.2f}M" if x >= 1e6 else f"{x / 1e3:.1f}k" if x >= 1e3 else f"{x:.0f}"


def markdown(measured: list[dict[str, Any]] | None) -> str:
    """All tables, as markdown."""
    parts = []
    if measured:
        parts.append("**Namespace hosts: measured | predicted** (model with the row's measured compute, "
                     f"link = the token bucket's rate, {NAMESPACE_LATENCY_US:.0f} us per message)\n")
        parts.append("| mode | hosts | Mbit/s | wire KB / rank / step | halo rows / rank | step - compute (s) | "
                     "efficiency |\n|---|---|---|---|---|---|---|")
        for r in namespace_check(measured):
            cells = [f"{a:.0f} \\| {b:.0f}" for a, b in (r["wire_kb"], r["halo_rows"])]
            cells.append(f"{r['comm_s'][0]:.3f} \\| {r['comm_s'][1]:.3f}")
            cells.append(f"{r['efficiency'][0]:.2f} \\| {r['efficiency'][1]:.2f}")
            parts.append(f"| {r['mode']} | {r['hosts']} | {r['rate_mbit']} | " + " | ".join(cells) + " |")
        parts.append("")
    parts.append("**Data parallelism** (per GPU one 100k-particle graph, 64.5 ms of compute; strong: a global batch "
                 "of 256 such graphs)\n")
    parts.append("| GPUs | link | ring all-reduce ms | tree all-reduce ms | weak, ring (as built) | weak, tree | "
                 "strong, ring |\n|---|---|---|---|---|---|---|")
    for r in data_parallel():
        parts.append(f"| {r['gpus']} | {r['fabric']} | {r['ring_ms']:.3f} | {r['tree_ms']:.3f} | "
                     f"{_pct(r['weak_ring'])} | {_pct(r['weak_tree'])} | {_pct(r['strong_ring'])} |")
    for particles in (1e6, 1e7):
        parts.append(f"\n**Graph parallelism, a {_count(particles)}-particle graph** (strong: that graph over p GPUs; "
                     f"weak: {_count(particles / 8)} particles per GPU, the graph growing with p)\n")
        parts.append("| GPUs | link | strong: particles / GPU | halo / owned | compute ms | as built | neighbours | "
                     "improved | weak: halo / owned | compute ms | as built | neighbours | improved |\n"
                     "|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in graph_parallel(particles):
            parts.append(
                f"| {r['gpus']} | {r['fabric']} | {_count(r['strong_own'])} | {_pct(r['strong_halo_share'])} | "
                f"{r['strong_compute_ms']:.1f} | {_pct(r['strong_built'])} | {_pct(r['strong_neighbours'])} | "
                f"{_pct(r['strong_improved'])} | {_pct(r['weak_halo_share'])} | {r['weak_compute_ms']:.1f} | "
                f"{_pct(r['weak_built'])} | {_pct(r['weak_neighbours'])} | {_pct(r['weak_improved'])} |")
    return "\n".join(parts) + "\n"


def update_page(page: Path, tables: str) -> None:
    """Replace what lies between :data:`BEGIN` and :data:`END` in ``page`` by ``tables``."""
    text = page.read_text()
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise ValueError(f"{page}: expected one {BEGIN} line followed by one {END} line")
    head, rest = text.split(BEGIN)
    _, tail = rest.split(END)
    atomic_write_text(page, f"{head}{BEGIN}\n{tables}{END}{tail}")
