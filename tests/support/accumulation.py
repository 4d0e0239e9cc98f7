"""Helpers for gradient accumulation tests: epochs of micro-batches through an engine, and the same
optimizer steps taken by plain PyTorch on whole windows.

Micro-batch m of an epoch, on rank r of W, is one graph: number (o + m) W + r of a seeded list,
where o counts the micro-batches of the earlier epochs. Every graph has the same node count, so
the mean loss over a window's graphs (all ranks, all its micro-batches) is the mean of the
micro-batch losses: what an accumulated, all-reduced step must follow.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch_geometric.data import Batch

from scaleq.distributed.engine import Engine
from scaleq.distributed.spawn import rank_env
from scaleq.graph.builder import GraphBuilder
from scaleq.losses import position_mse
from tests.support.distributed import NODES, tiny_model
from tests.support.stores import random_batch

Params = dict[str, torch.Tensor]


def graphs(indices: list[int]) -> Batch:
    """The seeded graphs ``indices`` (NODES nodes each, complete graph) as one batch."""
    count = max(indices) + 1
    data = random_batch(count, nodes=(NODES,) * count, node_features=2, seed=11).to_data_list()
    return GraphBuilder(kind="complete")(Batch.from_data_list([data[i] for i in indices]))


def windows(epochs: list[int], accumulation: int, world_size: int) -> list[list[int]]:
    """The graphs of every optimizer step: windows of ``accumulation`` micro-batches from each
    epoch's first, the epoch's last one shorter when ``accumulation`` does not divide it."""
    steps, offset = [], 0
    for batches in epochs:
        for start in range(0, batches, accumulation):
            micro = range(start, min(start + accumulation, batches))
            steps.append([(offset + m) * world_size + r for m in micro for r in range(world_size)])
        offset += batches
    return steps


def plain_steps(model: nn.Module, optimizer: torch.optim.Optimizer, steps: list[list[int]]) -> list[Params]:
    """Plain PyTorch, one process: one optimizer step on the mean loss of each window's graphs;
    the parameters after every step."""
    after = []
    for indices in steps:
        batch = graphs(indices)
        position_mse(model(batch)["pos"], batch.target).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        after.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    return after


def engine_epochs(
    engine: Engine, wrapped: nn.Module, epochs: list[int], on_micro_batch: Callable[[bool], None] | None = None
) -> list[Params]:
    """Train ``epochs`` (micro-batches per epoch) through ``engine`` as the loop does; the
    parameters after every optimizer step. ``on_micro_batch(stepped)`` runs after each step()."""
    after, offset = [], 0
    for batches in epochs:
        engine.start_epoch(batches)
        for m in range(batches):
            batch = graphs([(offset + m) * engine.world_size + engine.rank])
            with engine.micro_batch():
                engine.backward(position_mse(wrapped(batch)["pos"], batch.target))
            stepped = engine.step()
            if on_micro_batch is not None:
                on_micro_batch(stepped)
            if stepped:
                after.append({k: v.detach().clone() for k, v in engine.module.state_dict().items()})
        offset += batches
    return after


def spawned_epochs(
    rank: int, world_size: int, port: int, kind: str, options: dict[str, Any], epochs: list[int], out: str
) -> None:
    """Rank ``rank`` of a spawned group: :func:`engine_epochs` through a ``kind`` engine (torch:
    SGD(lr=0.1); deepspeed: the optimizer of its generated config). Rank 0 writes to ``out`` the
    parameters after every step, whether each micro-batch stepped, and (torch) how many gradient
    all-reduces DDP had run after each micro-batch, counted by a communication hook."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
    from torch.nn.parallel import DistributedDataParallel

    from scaleq.distributed import make_engine

    rank_env(rank, world_size, port)
    engine = make_engine(kind, device="cpu", **options)
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1) if kind == "torch" else None
    wrapped = engine.wrap(model, optimizer)
    all_reduces = [0]

    # bucket and result unannotated: DDP checks the annotations against dist.GradBucket and
    # Future[Tensor] themselves, and this module's postponed (string) annotations would not match
    def counting_hook(state: Any, bucket):  # noqa: ANN001
        all_reduces[0] += 1
        return allreduce_hook(state, bucket)  # DDP's own averaging all-reduce, counted

    if isinstance(wrapped, DistributedDataParallel):
        wrapped.register_comm_hook(None, counting_hook)
    record: dict[str, list[Any]] = {"stepped": [], "all_reduces": []}

    def note(stepped: bool) -> None:
        record["stepped"].append(stepped)
        record["all_reduces"].append(all_reduces[0])

    after = engine_epochs(engine, wrapped, epochs, note)
    if engine.is_main:
        torch.save({"after_steps": after, **record}, Path(out))
    engine.barrier()
    engine.close()
