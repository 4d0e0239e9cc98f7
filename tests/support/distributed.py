"""Helpers for multi-rank tests: one optimizer step on a split batch, in real spawned ranks.

The functions live in the package (not in a test module) so that spawned processes can import
them. Every graph has the same node count and every rank the same number of graphs, so the mean
of the per-rank mean losses is exactly the whole-batch mean loss.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch_geometric.data import Batch

from scaleq.distributed.spawn import rank_env
from scaleq.graph.builder import GraphBuilder
from scaleq.losses import position_mse
from scaleq.models.egnn import EGNN
from tests.support.stores import random_batch

NUM_GRAPHS, NODES = 8, 5


def _graphs() -> list:
    return random_batch(NUM_GRAPHS, nodes=(NODES,) * NUM_GRAPHS, node_features=2, seed=3).to_data_list()


def whole_batch() -> Batch:
    """8 graphs of 5 nodes with a complete graph and edge attributes."""
    return GraphBuilder(kind="complete")(Batch.from_data_list(_graphs()))


def rank_shard(rank: int, world_size: int) -> Batch:
    """This rank's contiguous, equal share of :func:`whole_batch`'s graphs."""
    graphs = _graphs()
    per_rank = len(graphs) // world_size
    return GraphBuilder(kind="complete")(Batch.from_data_list(graphs[rank * per_rank : (rank + 1) * per_rank]))


def tiny_model(seed: int = 0) -> EGNN:
    torch.manual_seed(seed)
    return EGNN(in_node_features=2, in_edge_features=2, hidden=16, layers=2)


def one_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: Batch) -> dict[str, torch.Tensor]:
    """One plain single-process step on ``batch``; the new parameters."""
    loss = position_mse(model(batch)["pos"], batch.target)
    loss.backward()
    optimizer.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def engine_step(rank: int, world_size: int, port: int, kind: str, options: dict[str, Any], out: str) -> None:
    """Rank ``rank``: one engine step on its shard; rank 0 writes the parameters to ``out``.

    kind "torch" steps SGD(lr=0.1) (sensitive to the gradient's scale, unlike Adam's first step);
    kind "deepspeed" uses the optimizer of the generated DeepSpeed config.
    """
    from scaleq.distributed import make_engine
    from scaleq.distributed.process_group import host_group

    rank_env(rank, world_size, port)
    engine = make_engine(kind, device="cpu", **options)
    assert (engine.rank, engine.world_size) == (rank, world_size)
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1) if kind == "torch" else None
    wrapped = engine.wrap(model, optimizer)
    batch = rank_shard(rank, world_size)
    loss = position_mse(wrapped(batch)["pos"], batch.target)
    engine.backward(loss)
    engine.step()
    total = engine.all_reduce_sum(torch.tensor([float(rank + 1)]))
    votes = [engine.any_rank(rank == 1), engine.any_rank(False)]  # one rank says yes, then none does
    # the host group CUDA ranks get (their default group is NCCL): a gloo group that works here too
    cuda_host_group = host_group(torch.device("cuda"), world_size)
    together = torch.tensor([rank + 1])
    torch.distributed.all_reduce(together, group=cuda_host_group)
    state = {k: v.detach().clone() for k, v in engine.module.state_dict().items()}
    if engine.is_main:
        torch.save({"params": state, "sum_of_ranks": float(total), "votes": votes,
                    "host_group": (engine.host_group, int(together))}, Path(out))
    engine.barrier()
    engine.close()
