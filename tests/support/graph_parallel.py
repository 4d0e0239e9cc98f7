"""Helpers for the graph-parallel exactness tests: the same forward and backward on one process and
on R spawned gloo ranks that split every graph (the ranks import these, so they live in the package).

Each case names a model, a graph and a loss. :func:`run_case` runs it in fp64 on one process
(``engine=None``) or on this rank of a graph-parallel engine, and returns what the test compares:
per-node outputs with their global node ids, per-graph outputs, the loss and its parts, and the
parameter gradients (under graph parallelism after the engine's backward, i.e. after DDP's
average, which must give the single-process gradient).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch_geometric.data import Batch

from scaleq.config import LossConfig
from scaleq.distributed.spawn import rank_env
from scaleq.graph.builder import GraphBuilder
from scaleq.losses import training_loss
from scaleq.models import MODELS
from tests.support.stores import random_batch

# Three graphs: 16 and 9 nodes, and one of 2 (with 4 ranks, two own nothing of it).
GRAPH_SIZES = (16, 9, 2)
RADIUS = {"kind": "radius", "radius": 1.6}
CASES: dict[str, dict[str, Any]] = {
    "egnn": {"model": ("egnn", {}), "graph": RADIUS, "loss": {}},
    "egnn_complete_random_drop": {
        "model": ("egnn", {}), "graph": {"kind": "complete", "edge_drop": 0.4, "edge_drop_mode": "random"}, "loss": {},
    },
    "fastegnn_mmd": {
        "model": ("fastegnn", {"virtual_nodes": 3}), "graph": RADIUS,
        "loss": {"mmd_weight": 0.5, "mmd_samples_per_virtual": 2},
    },
    "fastegnn_mmd_shortest_drop": {
        "model": ("fastegnn", {"virtual_nodes": 2, "virtual_aggregation": "mean"}),
        "graph": {**RADIUS, "edge_drop": 0.3, "edge_drop_mode": "shortest"},
        "loss": {"mmd_weight": 1.0, "mmd_kernel": "squared"},
    },
    "dusego": {"model": ("dusego", {"sigma": "tanh", "sigma_pos": "tanh"}), "graph": RADIUS, "loss": {}},
    # recomputation in backward (checkpointed layers, chunked edges) repeats the halo exchange there
    "egnn_checkpointed_chunked": {"model": ("egnn", {"gradient_checkpointing": 1, "edge_chunk": 16}), "graph": RADIUS, "loss": {}},
    "dusego_odeint_adjoint": {
        "model": ("dusego", {"solver": "odeint_adjoint", "method": "rk4", "substeps": 2}), "graph": RADIUS, "loss": {},
    },
}
PER_NODE = ("pos", "h", "vel")  # outputs with one row per node; the others are per graph (replicated)


def example_batch(dtype: torch.dtype = torch.float64) -> Batch:
    """A fixed random batch (no edges yet) in ``dtype``."""
    batch = random_batch(len(GRAPH_SIZES), nodes=GRAPH_SIZES, node_features=2, seed=11)
    for key in ("pos", "vel", "h", "node_attr", "target", "horizon"):
        batch[key] = batch[key].to(dtype)
    return batch


def build_case_model(name: str) -> torch.nn.Module:
    model_name, options = CASES[name]["model"]
    torch.manual_seed(0)
    return MODELS[model_name](in_node_features=2, in_edge_features=2, hidden=8, layers=2, **options)


def run_case(name: str, engine: Any = None, dtype: torch.dtype = torch.float64) -> dict[str, Any]:
    """One forward and backward of case ``name`` in ``dtype``; on one process when ``engine`` is None."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # parameters drawn in this dtype, the same on every process
    try:
        return _run_case(name, engine, dtype)
    finally:
        torch.set_default_dtype(default)


def _run_case(name: str, engine: Any, dtype: torch.dtype) -> dict[str, Any]:
    case = CASES[name]
    model = build_case_model(name)
    module = engine.wrap(model, None) if engine is not None else model
    graph = GraphBuilder(**case["graph"])
    torch.manual_seed(1)  # the draws of 'random' dropping and of the MMD sample
    batch = example_batch(dtype)
    batch = engine.prepare_batch(batch, graph) if engine is not None else graph(batch)
    output = module(batch)
    loss, parts = training_loss(output, batch, LossConfig(**case["loss"]))
    if engine is not None:
        engine.backward(loss)
    else:
        loss.backward()
    halo = getattr(batch, "halo", None)
    ids = halo.global_id if halo is not None else torch.arange(batch.pos.shape[0])
    return {
        "ids": ids,
        "nodes": {k: v.detach() for k, v in output.items() if k in PER_NODE},
        "graphs": {k: v.detach() for k, v in output.items() if k not in PER_NODE},
        "loss": loss.detach(),
        "parts": {k: v.detach() for k, v in parts.items()},
        "grads": {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None},
        "halo_rows": 0 if halo is None else halo.num_halo,
    }


def graph_parallel_cases(
    rank: int, world_size: int, port: int, names: list[str], out: str, kind: str = "torch", dtype: str = "float64"
) -> None:
    """Rank ``rank`` of a ``world_size``-rank graph-parallel group of engine ``kind`` ("torch":
    DDP, "deepspeed": ZeRO stage 0, which leaves the averaged gradients in ``.grad``; it reduces
    no fp64 gradients): every case in ``names`` in ``dtype``; each rank writes
    ``<out>/<case>-<rank>.pt``."""
    from scaleq.distributed import make_engine

    rank_env(rank, world_size, port)
    options: dict[str, Any] = {"micro_batch_size": 1} if kind == "deepspeed" else {}
    engine = make_engine(kind, device="cpu", graph_parallel=world_size, **options)
    try:
        for name in names:
            torch.save(run_case(name, engine, getattr(torch, dtype)), Path(out) / f"{name}-{rank}.pt")
    finally:
        engine.close()


def assemble(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The ranks' per-node outputs put back in global node order; the rest from rank 0."""
    total = sum(p["ids"].numel() for p in parts)
    nodes = {}
    for key, first in parts[0]["nodes"].items():
        whole = first.new_full((total, *first.shape[1:]), float("nan"))
        for p in parts:
            whole[p["ids"]] = p["nodes"][key]
        nodes[key] = whole
    return {**parts[0], "nodes": nodes, "ids": torch.cat([p["ids"] for p in parts]).sort().values}


def train_rank(rank: int, world_size: int, port: int, raw: dict[str, Any]) -> None:
    """Rank ``rank`` of a torchrun-style launch of the training run ``raw`` (a config dict)."""
    from scaleq.config import config_from_dict
    from scaleq.run import run

    rank_env(rank, world_size, port)
    run(config_from_dict(raw, "<test config>"))


# -- periodic boxes: the periodic symmetries of scaleq.testing.equivariance under graph parallelism --

PERIODIC_GRAPH = {"kind": "radius", "radius": 1.5, "periodic": True}
# name -> (model, options, outputs as the periodic check reads them)
PERIODIC_CASES: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "egnn_periodic": ("egnn", {}, {"pos": "node_position"}),
    "fastegnn_periodic": ("fastegnn", {"virtual_nodes": 3},
                          {"pos": "node_position", "virtual_pos": "position", "virtual_h": "invariant"}),
    "dusego_periodic": ("dusego", {"sigma": "tanh", "gamma2": 0.5},
                        {"pos": "node_position", "h": "node_invariant", "vel": "node_vector"}),
}
COORDINATE_HEADS = ("phi_x", "phi_xv", "phi_zv")  # last Linear starts at gain 0.001 in these models


def periodic_model(name: str, dtype: torch.dtype) -> torch.nn.Module:
    """Case ``name``'s model in ``dtype``, its coordinate heads scaled up so the check sees real updates."""
    model_name, options, _ = PERIODIC_CASES[name]
    torch.manual_seed(0)
    model = MODELS[model_name](in_node_features=2, in_edge_features=2, hidden=8, layers=2, **options)
    for module_name, module in model.named_modules():
        if module_name.rsplit(".", 1)[-1] in COORDINATE_HEADS:
            torch.nn.init.normal_(module[-1].weight, std=0.3)
    return model.to(dtype).eval()


def periodic_outputs(name: str, engine: Any = None, dtype: torch.dtype = torch.float64) -> list[dict[str, Any]]:
    """Case ``name``'s outputs for the periodic batch and then for each of its periodic transforms
    (scaleq.testing.equivariance.periodic_transforms), on one process when ``engine`` is None, else
    this rank's share (ids, per-node and per-graph outputs, halo rows) of each."""
    from scaleq.testing.equivariance import periodic_batch, periodic_transforms

    model = periodic_model(name, dtype)
    graph = GraphBuilder(**PERIODIC_GRAPH)
    batch = periodic_batch(dtype)
    states = [batch, *(g.apply_to_batch(batch) for g in periodic_transforms(batch))]
    results = []
    with torch.no_grad():
        for state in states:
            prepared = engine.prepare_batch(state.clone(), graph) if engine is not None else graph(state.clone())
            output = model(prepared)
            halo = getattr(prepared, "halo", None)
            results.append({
                "ids": halo.global_id if halo is not None else torch.arange(prepared.pos.shape[0]),
                "nodes": {k: v for k, v in output.items() if k in PER_NODE},
                "graphs": {k: v for k, v in output.items() if k not in PER_NODE},
                "halo_rows": 0 if halo is None else halo.num_halo,
            })
    return results


def graph_parallel_periodic(rank: int, world_size: int, port: int, names: list[str], out: str) -> None:
    """Rank ``rank`` of a ``world_size``-rank graph-parallel group: :func:`periodic_outputs` of every
    case in ``names``, in fp64 and fp32; writes ``<out>/<case>-<dtype>-<rank>.pt``."""
    from scaleq.distributed import make_engine

    rank_env(rank, world_size, port)
    engine = make_engine("torch", device="cpu", graph_parallel=world_size)
    try:
        for name in names:
            for dtype in ("float64", "float32"):
                result = periodic_outputs(name, engine, getattr(torch, dtype))
                torch.save(result, Path(out) / f"{name}-{dtype}-{rank}.pt")
    finally:
        engine.close()
