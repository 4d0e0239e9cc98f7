"""How large a single graph one training step can take, per path of the message-passing block.

A trial is one training step (forward, loss, backward) of EGNN or FastEGNN-<3, 0.75> (3 virtual
nodes, 75% of the real edges dropped) on ONE radius graph of N uniform random particles in a unit
cube with about ``neighbours`` neighbours each, along one path:

    reference  EGNN as it was before the shared block (scaleq.bench.reference_egnn; EGNN only)
    torch      the block, all edges at once (edge_chunk 0)
    chunked    the block, chunks of ``edge_chunk`` edges recomputed in backward
    triton     the fused Triton kernels (forward, and a backward that recomputes in registers)

Memory, two ways: ``saved_mb``, the bytes of the distinct storages autograd keeps for the
backward (counted with saved-tensor hooks during the forward: exact, independent of the allocator);
``peak_mb``, the step's peak over what was in use before it (:func:`scaleq.bench.memory.peak_memory`:
the allocator's peak on CUDA, the resident set's on the CPU). Every size runs in
a fresh process, so one trial's peak never hides another's and an out-of-memory kill ends only it.
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from scaleq.bench.child import run_child
from scaleq.bench.memory import peak_memory
from scaleq.io import write_rows

PATHS = ("reference", "torch", "chunked", "triton")
MODELS = ("egnn", "fastegnn")


@dataclass(frozen=True, kw_only=True)
class Trial:
    model: str  # 'egnn' or 'fastegnn' (FastEGNN-<3, 0.75>)
    path: str  # one of PATHS
    nodes: int
    neighbours: float = 20.0
    hidden: int = 64
    layers: int = 4
    edge_chunk: int = 32768
    gradient_checkpointing: int = 0  # checkpoint every k layers (not for the reference path)
    device: str = "cpu"
    seed: int = 0

    def model_options(self) -> dict[str, Any]:
        chunk = self.edge_chunk if self.path in ("chunked", "triton") else 0
        return {"edge_chunk": chunk, "kernel": "triton" if self.path == "triton" else "torch",
                "gradient_checkpointing": self.gradient_checkpointing}


def build_step(trial: Trial) -> tuple[Any, int]:
    """The trial's forward pass to the loss (a closure returning the loss; ``.backward()`` on it
    completes a training step) and the number of edges of its graph."""
    import torch

    from scaleq.bench.models import Workload, random_particles
    from scaleq.bench.reference_egnn import ReferenceEGNN
    from scaleq.config import LossConfig
    from scaleq.graph.builder import GraphBuilder
    from scaleq.losses import training_loss
    from scaleq.models import EGNN, FastEGNN

    device = torch.device(trial.device)
    torch.manual_seed(trial.seed)
    work = Workload(graphs=1, nodes=trial.nodes, neighbours=trial.neighbours, seed=trial.seed)
    drop = 0.75 if trial.model == "fastegnn" else 0.0
    graph = GraphBuilder(kind="radius", radius=work.radius, max_num_neighbors=4 * int(trial.neighbours) + 16, edge_drop=drop)
    batch = graph(random_particles(work).to(device))
    common = {"in_node_features": 2, "in_edge_features": 2, "hidden": trial.hidden, "layers": trial.layers}
    if trial.path == "reference":
        if trial.model != "egnn":
            raise ValueError("the reference path exists for EGNN only")
        model, loss_config = ReferenceEGNN(**common), LossConfig()
    elif trial.model == "egnn":
        model, loss_config = EGNN(**common, **trial.model_options()), LossConfig()
    else:
        model, loss_config = FastEGNN(**common, virtual_nodes=3, **trial.model_options()), LossConfig(mmd_weight=0.01)
    model = model.to(device)

    def forward() -> Any:
        model.zero_grad(set_to_none=True)
        return training_loss(model(batch), batch, loss_config)[0]

    return forward, int(batch.edge_index.shape[1])


def _step(forward: Any, saved: dict[int, int] | None = None) -> None:
    """One training step; with ``saved``, record {storage address: bytes} of what the forward keeps."""
    import torch

    if saved is None:
        loss = forward()
    else:
        def pack(t: Any) -> Any:
            storage = t.untyped_storage()
            saved[storage.data_ptr()] = storage.nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = forward()
    loss.backward()
    if loss.device.type == "cuda":
        torch.cuda.synchronize()


def measure(trial: Trial, steps: int = 1) -> dict[str, Any]:
    """Peak memory of the first step and the best time of ``steps`` more (this process)."""

    import torch  # here: the parent process of the benchmark only starts children

    from scaleq.bench.timing import call_ms

    forward, edges = build_step(trial)
    saved: dict[int, int] = {}
    with peak_memory(trial.device) as memory:
        _step(forward, saved)
    peak = memory.growth
    times = []
    for _ in range(steps):
        times.append(call_ms(lambda: _step(forward), torch.device(trial.device)) / 1000)
    return {**asdict(trial), "edges": edges, "saved_mb": round(sum(saved.values()) / 2**20, 1),
            "peak_mb": round(peak / 2**20, 1), "step_s": round(min(times), 4) if times else math.nan}


def measure_in_fresh_process(trial: Trial, steps: int = 1, timeout_s: float = 3600) -> dict[str, Any]:
    """:func:`measure` in a new interpreter. A failed child (out of memory, killed, timed out, an
    error) gives the trial's fields with empty numbers and ``error``: its exit cause and the last
    lines of its stderr, which are printed as well."""
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    code = "import sys, json; from scaleq.bench.large_graph import _measure_json; print(_measure_json(sys.argv[1]))"
    payload = json.dumps({"trial": asdict(trial), "steps": steps})
    child = run_child([sys.executable, "-c", code, payload], env=env, timeout_s=timeout_s)
    if child.ok:
        return {**json.loads(child.stdout.strip().splitlines()[-1]), "error": None}
    print(f"  {trial.model} {trial.path} N={trial.nodes:,d} failed: {child.error}", flush=True)
    return {**asdict(trial), "edges": None, "saved_mb": None, "peak_mb": None, "step_s": None,
            "error": child.cause}


def _measure_json(payload: str) -> str:
    data = json.loads(payload)
    return json.dumps(measure(Trial(**data["trial"]), steps=data["steps"]))


def largest_graph(trial: Trial, budget_mb: float, max_nodes: int, growth: float = 2.0,
                  timeout_s: float = 3600) -> list[dict[str, Any]]:
    """Rows for N = trial.nodes, growth N, ... up to ``max_nodes``, stopping after the first size
    that fails or needs more than ``budget_mb``; each row says whether it ``fits`` (and why not:
    ``error``)."""
    rows = []
    nodes = trial.nodes
    while nodes <= max_nodes:
        row = measure_in_fresh_process(replace(trial, nodes=nodes), steps=0, timeout_s=timeout_s)  # the peak only
        fits = not row["error"] and row["peak_mb"] <= budget_mb
        rows.append({**row, "budget_mb": budget_mb, "fits": fits})
        print(f"  {trial.model:8s} {trial.path:9s} N={nodes:>9,d}: "
              + (f"{row['edges']:>11,d} edges, {row['peak_mb']:>9.1f} MB peak, {row['saved_mb']:>9.1f} MB saved"
                 if not row["error"] else f"failed ({row['error']})"), flush=True)
        if not fits:
            break
        nodes = int(nodes * growth)
    return rows


def side_by_side_times(trials: list[Trial], repeats: int = 3) -> list[float]:
    """Best step time of each trial, timed round-robin in this process (one warm-up round), so
    that every path sees the same load from the rest of the machine."""
    import torch

    from scaleq.bench.timing import call_ms

    steps = [build_step(t)[0] for t in trials]
    for forward in steps:
        _step(forward)
    best = [math.inf] * len(steps)
    for _ in range(repeats):
        for k, (forward, trial) in enumerate(zip(steps, trials)):
            best[k] = min(best[k], call_ms(lambda f=forward: _step(f), torch.device(trial.device)) / 1000)
    return best


# -- the whole benchmark (launch/bench_large_graph.py) ---------------------------------------------


def run(trials: list[Trial], budget_mb: float, max_nodes: int, compare_nodes: int, out: Path,
        timeout_s: float = 3600) -> list[dict[str, Any]]:
    """The largest graph within ``budget_mb`` per trial, then (``compare_nodes`` > 0) one step of
    each at that size side by side; writes ``<out>/large_graph.csv`` (and ``large_graph_times.csv``)
    and prints both tables."""
    device = trials[0].device if trials else "cpu"
    rows = []
    for trial in trials:
        rows += largest_graph(trial, budget_mb, max_nodes, timeout_s=timeout_s)
    write_rows(rows, out / "large_graph.csv")
    print(f"\nlargest graph within {budget_mb:.0f} MB ({device}):")
    print(f"{'model':9s} {'path':10s} {'nodes':>10s} {'edges':>12s} {'peak MB':>9s} {'saved MB':>9s}")
    for trial in trials:
        fitting = [r for r in rows if r["model"] == trial.model and r["path"] == trial.path and r["fits"]]
        best = fitting[-1] if fitting else None
        print(f"{trial.model:9s} {trial.path:10s} " + (f"{best['nodes']:>10,d} {best['edges']:>12,d} {best['peak_mb']:>9.1f} {best['saved_mb']:>9.1f}"
                                                       if best else f"{'none':>10s}"))
    if compare_nodes:
        compared = [replace(t, nodes=compare_nodes) for t in trials]
        seconds = side_by_side_times(compared)
        times = []
        for trial, s in zip(compared, seconds):
            peak = measure_in_fresh_process(trial, steps=0)
            if peak["error"]:
                peak.update(edges=0, peak_mb=float("nan"), saved_mb=float("nan"))
            times.append({**peak, "step_s": round(s, 3)})
        write_rows(times, out / "large_graph_times.csv")
        print(f"\none step at N={compare_nodes} (times side by side in one process; peaks in fresh processes):")
        print(f"{'model':9s} {'path':10s} {'edges':>9s} {'step s':>8s} {'peak MB':>9s} {'saved MB':>9s}")
        for row in times:
            print(f"{row['model']:9s} {row['path']:10s} {row['edges']:>9,d} {row['step_s']:>8.3f} {row['peak_mb']:>9.1f} "
                  f"{row['saved_mb']:>9.1f}")
    print(f"\nwrote {out / 'large_graph.csv'}" + (f" and {out / 'large_graph_times.csv'}" if compare_nodes else ""))
    return rows
