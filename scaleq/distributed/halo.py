"""Graph parallelism, part 2: the per-layer halo exchange and the group's sums, as autograd Functions.

:func:`split_batch` turns the whole batch every rank of a graph-parallel group holds into this
rank's share (see :mod:`scaleq.distributed.partition`) and attaches a :class:`GraphHalo` as
``batch.halo``. Models only duck-type it (the message-passing block calls ``extend``):

- ``halo.extend(t)``: [N_own, F] -> [N_own + N_halo, F], the owned rows followed by the halo rows
  received from their owners (one ``all_to_all_single`` with send/receive lists made once per
  batch). Backward sends the halo rows' gradients back to their owners, which sum them into the
  rows they sent.
- ``halo.sum_over_ranks(t)``: all-reduce (sum) over the group; backward all-reduces the gradient.

Each halo also counts what its batch's collectives cost (``seconds`` inside them, forward and
backward; ``received_bytes`` of the exchanges: rows forward, their gradients backward), so a
benchmark can tell the halo traffic from the arithmetic without timing the collectives itself.

Gradient convention: the group's loss is the SUM of the ranks' losses, each rank's loss holding its
own nodes' terms and 1/R of every replicated term (see :func:`scaleq.losses.training_loss`). The
backward of a sum over ranks is then the sum of the ranks' gradients, and the group's parameter
gradients add up to the single-device gradient; the engine scales for the data-parallel average.
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.autograd import Function
from torch_geometric.data import Batch

from scaleq.distributed.partition import GraphPart, coordinate_bisection, shard_batch
from scaleq.graph.builder import GraphBuilder


class GraphHalo:
    """The exchange plan of one partitioned batch on one rank of a graph-parallel group.

    Attributes (besides ``extend`` and ``sum_over_ranks``):
        rank, num_ranks: this rank's place in the group and the group's size R.
        send_index: owned rows to send, grouped by destination rank [S].
        send_splits, recv_splits: rows sent to / received from each rank (lists of R ints).
        num_halo: N_halo, rows received per exchange.
        global_id: global id of each owned node [N_own]; global_batch: graph of every node of the
            whole batch [N] (losses use them to draw the single-device run's random samples).
        seconds, received_bytes: what this batch's exchanges and group sums cost so far (module
            docstring); the plan's own two small exchanges (:func:`build_halo`) are not counted.
    """

    def __init__(
        self, *, group: Any, rank: int, num_ranks: int, send_index: Tensor, send_splits: list[int],
        recv_splits: list[int], global_id: Tensor, global_batch: Tensor,
    ) -> None:
        self.group, self.rank, self.num_ranks = group, rank, num_ranks
        self.send_index, self.send_splits, self.recv_splits = send_index, send_splits, recv_splits
        self.num_halo = sum(recv_splits)
        self.global_id, self.global_batch = global_id, global_batch
        self.seconds, self.received_bytes = 0.0, 0

    def extend(self, t: Tensor) -> Tensor:
        """Owned rows, then the halo rows from their owners.

        Shapes:
            t: [N_own, *F] -> [N_own + N_halo, *F]
        """
        return torch.cat([t, _HaloExchange.apply(t, self)])

    def sum_over_ranks(self, t: Tensor) -> Tensor:
        """Sum of ``t`` over the group's ranks (differentiable). Shapes: any -> same."""
        return _AllReduceSum.apply(t, self)

    def count(self, started: float, received: Tensor | None = None) -> None:
        """Add a collective that began at ``started`` (perf_counter) and what it received."""
        self.seconds += time.perf_counter() - started
        if received is not None:
            self.received_bytes += received.numel() * received.element_size()


class _HaloExchange(Function):
    """Forward: the owners' rows of this rank's halo. Backward: their gradients back to the owners."""

    @staticmethod
    def forward(ctx: Any, t: Tensor, halo: GraphHalo) -> Tensor:  # type: ignore[override]
        ctx.halo, ctx.num_rows = halo, t.shape[0]
        send = t.detach()[halo.send_index].contiguous()
        received = t.new_empty((halo.num_halo, *t.shape[1:]))
        started = time.perf_counter()
        dist.all_to_all_single(received, send, halo.recv_splits, halo.send_splits, group=halo.group)
        halo.count(started, received)
        return received

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        halo: GraphHalo = ctx.halo
        returned = grad.new_empty((halo.send_index.numel(), *grad.shape[1:]))
        started = time.perf_counter()
        dist.all_to_all_single(returned, grad.contiguous(), halo.send_splits, halo.recv_splits, group=halo.group)
        halo.count(started, returned)
        # a row sent to several ranks collects the gradient of every copy
        total = grad.new_zeros((ctx.num_rows, *grad.shape[1:])).index_add_(0, halo.send_index, returned)
        return total, None


class _AllReduceSum(Function):
    @staticmethod
    def forward(ctx: Any, t: Tensor, halo: GraphHalo) -> Tensor:  # type: ignore[override]
        ctx.halo = halo
        out = t.detach().clone(memory_format=torch.contiguous_format)
        started = time.perf_counter()
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=halo.group)
        halo.count(started)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        grad = grad.clone(memory_format=torch.contiguous_format)
        started = time.perf_counter()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.halo.group)
        ctx.halo.count(started)
        return grad, None


def build_halo(part: GraphPart, global_batch: Tensor, group: Any) -> GraphHalo:
    """Tell every owner which of its rows this rank needs (two small all-to-alls, once per batch)
    and learn which of ours the others need.

    Shapes:
        part.halo: [N_halo] global ids, grouped by owner; global_batch: [N] -> GraphHalo
    """
    rank, num_ranks = dist.get_rank(group), dist.get_world_size(group)
    wanted = part.halo_counts.to(torch.long)  # [R] rows this rank receives from each owner
    asked = torch.empty_like(wanted)
    dist.all_to_all_single(asked, wanted, group=group)  # [R] rows each rank asks of this one
    recv_splits, send_splits = wanted.tolist(), asked.tolist()
    requests = part.halo.new_empty(sum(send_splits))
    dist.all_to_all_single(requests, part.halo.contiguous(), send_splits, recv_splits, group=group)
    send_index = torch.searchsorted(part.owned, requests)  # global id -> owned row (owned is ascending)
    return GraphHalo(
        group=group, rank=rank, num_ranks=num_ranks, send_index=send_index, send_splits=send_splits,
        recv_splits=recv_splits, global_id=part.owned, global_batch=global_batch,
    )


def split_batch(batch: Batch, graph: GraphBuilder, group: Any, *, training: bool = True) -> Batch:
    """This rank's share of ``batch`` (the whole batch, the same on every rank of ``group``), with
    its edges built exactly as one device builds them and ``batch.halo`` attached.

    Shapes:
        batch: N nodes of B graphs -> N_own nodes, E_own edges (targets owned), halo: N_halo rows
    """
    if graph.local != "none":
        raise ValueError(
            f"graph.local is {graph.local!r}: the local graph (EGHN) is not supported under graph parallelism; "
            "set engine.graph_parallel to 1"
        )
    rank, num_ranks = dist.get_rank(group), dist.get_world_size(group)
    owner = coordinate_bisection(batch.pos, batch.batch, int(batch.num_graphs), num_ranks)
    out, part = shard_batch(batch, graph, owner, rank, num_ranks, training=training)
    out.halo = build_halo(part, batch.batch, group)
    return out
