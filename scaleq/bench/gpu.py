"""The GPU benchmark: radius-graph backends and full training steps, side by side in one process.

Part 1, radius graphs: uniform particles in unit cubes (one per graph) with about 20 neighbours
each, for every backend (torch-cluster, the cell list's torch and Triton pair searches); each
backend's edge set is compared with torch-cluster's ('exact', or how many pairs differ and whether
they all lie within rounding of r).

Part 2, training steps: graph build + forward + backward + optimizer step, per
:class:`StepVariant` (name, model name, model kwargs, precision, edge drop), as edge-layers per
second (edges the model sees x layers / step time) and as a ratio to :class:`ReferenceEGNN` on the
same workload and precision: a plain EGNN in the published code's style (cat + Linear + index_add).
Adding a model path (e.g. other model kwargs) is one more StepVariant.

Times come from the benchmarks' one timer (:mod:`scaleq.bench.timing`: CUDA events on a GPU,
perf_counter on the CPU) after warm-up runs (compilation, caches). Each row is the median of the
timed runs; peak memory is CUDA's max allocated during that variant (empty on CPU).
"""

from __future__ import annotations

import functools
import math
import platform
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from scaleq.bench.memory import PeakMemory, peak_memory
from scaleq.bench.models import Workload, random_particles
from scaleq.bench.reference_egnn import ReferenceEGNN
from scaleq.bench.timing import time_ms
from scaleq.config import LossConfig
from scaleq.graph.builder import GraphBuilder, radius_graph
from scaleq.graph.cell_list import cell_list_radius_graph
from scaleq.io import save_figure, write_rows
from scaleq.losses import training_loss
from scaleq.models import MODELS
from scaleq.triton_status import triton_status

NEIGHBOURS = 20.0
LAYERS, HIDDEN = 4, 64
CAP = 128  # max_num_neighbors: far above the ~20 of uniform points, so nothing is cut


@dataclass(frozen=True)
class GraphCase:
    label: str
    graphs: int
    nodes: int  # per graph


@dataclass(frozen=True)
class StepVariant:
    label: str
    model: str  # a key of scaleq.models.MODELS, or 'reference'
    kwargs: dict[str, Any] = field(default_factory=dict)
    precision: str = "fp32"  # 'fp32' or 'bf16' (autocast)
    edge_drop: float = 0.0


def graph_cases(quick: bool) -> list[GraphCase]:
    if quick:
        return [GraphCase("300", 1, 300), GraphCase("1k", 1, 1000), GraphCase("4 x 250", 4, 250)]
    return [GraphCase("8k", 1, 8000), GraphCase("100k", 1, 100_000), GraphCase("1M", 1, 1_000_000),
            GraphCase("4M", 1, 4_000_000), GraphCase("16 x 8k", 16, 8000)]


def step_workloads(quick: bool) -> list[GraphCase]:
    if quick:
        return [GraphCase("2 x 100", 2, 100), GraphCase("1 x 300", 1, 300)]
    return [GraphCase("4 x 8k", 4, 8000), GraphCase("1 x 100k", 1, 100_000)]


def step_variants() -> list[StepVariant]:
    """The reference first in each precision: ratios are taken against it. The message-passing
    block's paths (``edge_chunk``, ``kernel``) are one line each."""
    fast = {"virtual_nodes": 3}
    out = []
    for precision in ("fp32", "bf16"):
        out += [
            StepVariant("reference EGNN", "reference", {}, precision),
            StepVariant("EGNN", "egnn", {}, precision),
            StepVariant("EGNN chunked", "egnn", {"edge_chunk": 65536}, precision),
            StepVariant("EGNN chunked (auto)", "egnn", {"edge_chunk": "auto"}, precision),
            StepVariant("EGNN triton", "egnn", {"kernel": "triton"}, precision),
            StepVariant("FastEGNN-<3,0.75>", "fastegnn", fast, precision, edge_drop=0.75),
            StepVariant("FastEGNN-<3,0.75> chunked", "fastegnn", {**fast, "edge_chunk": 65536}, precision, edge_drop=0.75),
            StepVariant("FastEGNN-<3,0.75> triton", "fastegnn", {**fast, "kernel": "triton"}, precision, edge_drop=0.75),
        ]
    return out


def uniform_cloud(case: GraphCase, device: torch.device, seed: int = 0) -> tuple[Tensor, Tensor, float]:
    """``case.graphs`` unit cubes of ``case.nodes`` uniform points each; r gives ~20 neighbours."""
    g = torch.Generator().manual_seed(seed)
    pos = torch.rand(case.graphs * case.nodes, 3, generator=g).to(device)
    batch = torch.repeat_interleave(torch.arange(case.graphs), case.nodes).to(device)
    return pos, batch, (3 * NEIGHBOURS / (4 * math.pi * case.nodes)) ** (1 / 3)


def compare_edges(edges: Tensor, reference: Tensor, pos: Tensor, radius: float) -> str:
    """'exact' when both edge sets are equal; else how many pairs differ, and whether every one of
    them lies within rounding of r (|d^2 - r^2| <= 1e-5 r^2: FMA and summation order differ)."""
    n = pos.shape[0]
    a = torch.sort(edges[1] * n + edges[0]).values
    b = torch.sort(reference[1] * n + reference[0]).values
    if torch.equal(a, b):
        return "exact"
    diff = torch.cat([a[~torch.isin(a, b)], b[~torch.isin(b, a)]])
    source, target = diff % n, torch.div(diff, n, rounding_mode="floor")
    d2 = (pos[target] - pos[source]).double().pow(2).sum(-1)
    boundary = bool(((d2 - radius**2).abs() <= 1e-5 * radius**2).all())
    return f"{'boundary' if boundary else 'MISMATCH'} ({diff.numel()} pairs)"


def radius_backends(device: torch.device) -> dict[str, Callable[[Tensor, float, Tensor, int], Tensor]]:
    """Name -> search returning edge_index; the Triton path only where it is compiled (CUDA)."""
    out: dict[str, Callable[[Tensor, float, Tensor, int], Tensor]] = {
        "torch_cluster": lambda p, r, b, g: radius_graph(p, r, b, CAP, backend="torch_cluster", num_graphs=g).edge_index,
        "cell_list (torch)": lambda p, r, b, g: cell_list_radius_graph(
            p, r, b, num_graphs=g, max_num_neighbors=CAP, pair_search="torch").edge_index,
    }
    if device.type == "cuda" and triton_status().installed:
        out["cell_list (triton)"] = lambda p, r, b, g: cell_list_radius_graph(
            p, r, b, num_graphs=g, max_num_neighbors=CAP, pair_search="triton").edge_index
    return out


def bench_radius_graphs(device: torch.device, quick: bool, repeats: int, max_nodes: int | None = None) -> list[dict[str, Any]]:
    rows = []
    for case in graph_cases(quick):
        if max_nodes is not None and case.graphs * case.nodes > max_nodes:
            continue
        pos, batch, radius = uniform_cloud(case, device)
        reference = None
        for name, search in radius_backends(device).items():
            with peak_memory(device) as memory:
                edges = search(pos, radius, batch, case.graphs)  # also the warm-up run
                reference = edges if reference is None else reference
                args = (pos, radius, batch, case.graphs)
                ms = time_ms(lambda s=search, a=args: s(*a), device, repeats, warmup=0)
            rows.append({
                "part": "radius_graph", "case": case.label, "variant": name, "nodes": pos.shape[0],
                "edges": edges.shape[1], "ms": ms, "peak_mb": _peak_mb(memory),
                "agree": compare_edges(edges, reference, pos, radius),
            })
            del edges
    return rows


def _peak_mb(memory: PeakMemory) -> float | None:
    # the allocator's peak; a CPU process's resident peak says little about one variant
    return memory.peak_mb if memory.device.type == "cuda" else None


def _build_model(variant: StepVariant) -> nn.Module:
    common = {"in_node_features": 2, "in_edge_features": 2, "hidden": HIDDEN, "layers": LAYERS}
    if variant.model == "reference":
        return ReferenceEGNN(**common, **variant.kwargs)
    return MODELS[variant.model](**common, **variant.kwargs)


def bench_steps(device: torch.device, quick: bool, repeats: int) -> list[dict[str, Any]]:
    rows = []
    for case in step_workloads(quick):
        work = Workload(graphs=case.graphs, nodes=case.nodes, neighbours=NEIGHBOURS)
        raw = random_particles(work).to(device)
        reference_rate: dict[str, float] = {}
        for variant in step_variants():
            if variant.kwargs.get("kernel") == "triton" and not (device.type == "cuda" and triton_status().installed):
                continue  # the fused kernel is CUDA's (on a CPU only Triton's interpreter runs it)
            torch.manual_seed(0)
            model = _build_model(variant).to(device)
            builder = GraphBuilder(kind="radius", radius=work.radius, max_num_neighbors=CAP, edge_drop=variant.edge_drop)
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)
            loss_config = LossConfig(mmd_weight=0.01) if variant.model == "fastegnn" else LossConfig()

            def step(model: nn.Module = model, builder: GraphBuilder = builder, optimizer: torch.optim.Optimizer = optimizer,
                     loss_config: LossConfig = loss_config, precision: str = variant.precision, raw: Any = raw) -> None:  # noqa: ANN401
                batch = builder(raw)  # the graph is built inside the step, as in training
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                    output = model(batch)
                loss, _ = training_loss(output, batch, loss_config)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

            with peak_memory(device) as memory:
                ms = time_ms(step, device, repeats, warmup=1 if quick else 3)
            edges = int(raw.edge_index.shape[1])
            rate = edges * LAYERS / (ms / 1000)
            reference_rate.setdefault(variant.precision, rate)
            rows.append({
                "part": "train_step", "case": case.label, "variant": variant.label, "model": variant.model,
                "precision": variant.precision, "nodes": raw.num_nodes, "edges": edges, "ms": ms,
                "edge_layers_per_s": rate, "ratio_to_reference": rate / reference_rate[variant.precision],
                "peak_mb": _peak_mb(memory),
            })
            del model, optimizer
    return rows


def _index_add(rows: Tensor, target: Tensor, nodes: int) -> Tensor:
    return rows.new_zeros(nodes, rows.shape[-1]).index_add_(0, target, rows)


def bench_reductions(device: torch.device, quick: bool, repeats: int) -> list[dict[str, Any]]:
    """Summing per-edge rows [E, H] into their receivers [N, H], receiver-sorted edges: index_add_
    with int64 and int32 indices, and torch.segment_reduce over the CSR segment lengths (the
    message-passing block uses segment_reduce on CUDA and index_add_ elsewhere,
    scaleq.nn.segments; these rows check that choice on the device at hand)."""
    rows = []
    for case in step_workloads(quick):
        nodes = case.graphs * case.nodes
        edges = int(nodes * NEIGHBOURS)
        generator = torch.Generator().manual_seed(0)
        target = torch.sort(torch.randint(0, nodes, (edges,), generator=generator)).values.to(device)
        lengths = torch.bincount(target, minlength=nodes)
        rows_in = torch.randn(edges, HIDDEN, generator=generator).to(device)
        variants: dict[str, Callable[[], Tensor]] = {
            "index_add_ int64": functools.partial(_index_add, rows_in, target, nodes),
            "index_add_ int32": functools.partial(_index_add, rows_in, target.int(), nodes),
            "segment_reduce": functools.partial(torch.segment_reduce, rows_in, "sum", lengths=lengths, unsafe=True),
        }
        expected = variants["index_add_ int64"]()
        for label, fn in variants.items():
            agree = "yes" if torch.allclose(fn(), expected, rtol=1e-4, atol=1e-4) else "NO"
            # three untimed calls: a process's first calls of an op pay one-time costs (thread pool,
            # allocator, dispatch caches) that were 500x the op itself in a --quick table
            ms = time_ms(fn, device, repeats, warmup=3)
            rows.append({"part": "edge_reduce", "case": case.label, "variant": label, "precision": "fp32",
                         "nodes": nodes, "edges": edges, "ms": ms, "agree": agree})
    return rows


def environment(device: torch.device) -> dict[str, str]:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    triton = triton_status().version or "none"
    return {"device": name, "torch": torch.__version__, "cuda": str(torch.version.cuda), "triton": triton}


def device_slug(device: torch.device) -> str:
    if device.type != "cuda":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")


def run(device: torch.device, quick: bool, repeats: int, *, steps: bool = True, max_nodes: int | None = None) -> list[dict[str, Any]]:
    """Every row of the benchmark (radius graphs up to ``max_nodes`` particles, then training steps
    unless ``steps`` is False), each with the device name and the torch / CUDA / Triton versions."""
    env = environment(device)
    rows = bench_radius_graphs(device, quick, repeats, max_nodes)
    if steps:
        rows += bench_reductions(device, quick, repeats) + bench_steps(device, quick, repeats)
    return [{**row, **env} for row in rows]


COLUMNS = ("part", "case", "variant", "model", "precision", "nodes", "edges", "ms", "edge_layers_per_s",
           "ratio_to_reference", "peak_mb", "agree", "device", "torch", "cuda", "triton")


def report(rows: list[dict[str, Any]], device: torch.device, out: Path, *, quick: bool = False) -> Path:
    """Print the tables, write ``<out>/gpu_<device>.csv`` and ``.png``; the path stem."""
    env = rows[0]
    print(f"{env['device']}, torch {env['torch']}, CUDA {env['cuda']}, Triton {env['triton']}")
    if quick:
        print("--quick: sizes small enough for a CPU in seconds; the times and ratios below check that every "
              "part runs, they are not measurements to read or compare (run without --quick for those)")
    graphs = [r for r in rows if r["part"] == "radius_graph"]
    print_table(["radius graph", "backend", "edges", "ms", "peak MB", "agree"],
                [[r["case"], r["variant"], r["edges"], f"{r['ms']:.2f}", _mb(r["peak_mb"]), r["agree"]] for r in graphs])
    reductions = [r for r in rows if r["part"] == "edge_reduce"]
    if reductions:
        print_table(["reduce", "variant", "edges", "ms", "agree"],
                    [[r["case"], r["variant"], r["edges"], f"{r['ms']:.2f}", r["agree"]] for r in reductions])
    steps = [r for r in rows if r["part"] == "train_step"]
    if steps:
        print_table(["step", "variant", "prec", "edges", "ms", "M edge-layers/s", "x ref", "peak MB"],
                    [[r["case"], r["variant"], r["precision"], r["edges"], f"{r['ms']:.1f}",
                      f"{r['edge_layers_per_s'] / 1e6:.2f}", f"{r['ratio_to_reference']:.2f}", _mb(r["peak_mb"])]
                     for r in steps])

    stem = out / f"gpu_{device_slug(device)}"
    write_rows(rows, Path(f"{stem}.csv"), COLUMNS)
    plot(rows, Path(f"{stem}.png"), str(env["device"]))
    print(f"\nwrote {stem}.csv and {stem}.png")
    return stem


def print_table(header: list[str], rows: list[list[Any]]) -> None:
    """A table whose columns are as wide as their longest cell, two spaces apart (text left,
    numbers right), so no two cells run together whatever the variant names."""
    cells = [[str(c) for c in header], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    numeric = [all(_is_number(row[i]) for row in cells[1:]) and len(cells) > 1 for i in range(len(header))]
    print()
    for row in cells:
        print("  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(row, widths, numeric)).rstrip())


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", ""))
    except ValueError:
        return text in ("-", "")
    return True


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """One panel per workload, so every label reads: radius graphs (grouped by size, one bar per
    backend), each training-step workload (one row per variant, fp32 and bf16 side by side, each bar
    labelled with its ratio to the reference EGNN), and the edge reductions."""
    import matplotlib.pyplot as plt

    graphs = [r for r in rows if r["part"] == "radius_graph"]
    steps = [r for r in rows if r["part"] == "train_step"]
    reductions = [r for r in rows if r["part"] == "edge_reduce"]
    step_cases = list(dict.fromkeys(r["case"] for r in steps))
    panels = (["graphs"] if graphs else []) + step_cases + (["reduce"] if reductions else [])
    columns = 2 if len(panels) > 1 else 1
    grid_rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(grid_rows, columns, figsize=(8.5 * columns, 4.2 * grid_rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        if panel == "graphs":
            _grouped_bars(ax, graphs, "case", "variant", "ms")
            ax.set_yscale("log")
            ax.set_ylabel("ms (log)")
            ax.set_title("radius graph, ~20 neighbours, by particles")
        elif panel == "reduce":
            _grouped_bars(ax, reductions, "case", "variant", "ms")
            ax.set_ylabel("ms")
            ax.set_title("summing [E, 64] edge rows into nodes, by workload")
        else:
            _step_panel(ax, [r for r in steps if r["case"] == panel])
            ax.set_title(f"training step, {panel} particles (4 x 64)")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


def _grouped_bars(ax: Any, rows: list[dict[str, Any]], group: str, series: str, value: str) -> None:  # noqa: ANN401
    groups = list(dict.fromkeys(r[group] for r in rows))
    names = list(dict.fromkeys(r[series] for r in rows))
    width = 0.8 / len(names)
    for k, name in enumerate(names):
        values = {r[group]: r[value] for r in rows if r[series] == name}
        ax.bar([i + k * width for i in range(len(groups))], [values.get(g, 0.0) for g in groups], width, label=name)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(groups))], groups)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)  # beside the bars, never on them


def _step_panel(ax: Any, rows: list[dict[str, Any]]) -> None:  # noqa: ANN401
    """Horizontal bars: one row per variant, one bar per precision, labelled x<ratio to the reference>."""
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    precisions = list(dict.fromkeys(r["precision"] for r in rows))
    height = 0.8 / len(precisions)
    for k, precision in enumerate(precisions):
        by_variant = {r["variant"]: r for r in rows if r["precision"] == precision}
        ys = [i + k * height for i, v in enumerate(variants) if v in by_variant]
        chosen = [by_variant[v] for v in variants if v in by_variant]
        bars = ax.barh(ys, [r["edge_layers_per_s"] / 1e6 for r in chosen], height, label=precision)
        ax.bar_label(bars, labels=[f"x{r['ratio_to_reference']:.2f}" for r in chosen], fontsize=8, padding=2)
    ax.set_yticks([i + 0.4 - height / 2 for i in range(len(variants))], variants, fontsize=9)
    ax.invert_yaxis()
    ax.margins(x=0.15)
    ax.set_xlabel("M edge-layers/s (x: over the reference EGNN, same precision)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
