"""Per-graph sums and means that stay exact when each graph is split across ranks.

On one device these are scatter reductions over ``batch``. Under graph parallelism a rank holds
only the nodes it owns, and ``halo.sum_over_ranks`` (the object on ``batch.halo``, duck-typed
here: models never import torch.distributed) adds the ranks' partial sums; the result is the same
on every rank of the group and differentiable.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from scaleq.nn.scatter import scatter_count, scatter_sum


def graph_sum(src: Tensor, batch: Tensor, num_graphs: int, halo: Any = None) -> Tensor:
    """Sum over the nodes of each graph (all ranks' nodes with ``halo``).

    Shapes: src [N, *], batch [N] -> [B, *]
    """
    total = scatter_sum(src, batch, num_graphs)
    return total if halo is None else halo.sum_over_ranks(total)


def graph_size(batch: Tensor, num_graphs: int, dtype: Any, halo: Any = None) -> Tensor:
    """Nodes per graph, at least 1 (so means of empty graphs are 0). Shapes: batch [N] -> [B, 1]."""
    if halo is None:
        return scatter_count(batch, num_graphs, dtype)
    return halo.sum_over_ranks(scatter_sum(batch.new_ones(batch.shape[0], 1).to(dtype), batch, num_graphs)).clamp_(min=1)


def graph_mean(src: Tensor, batch: Tensor, num_graphs: int, halo: Any = None, size: Tensor | None = None) -> Tensor:
    """Mean over the nodes of each graph; ``size`` (from :func:`graph_size`) saves a reduction
    when several means share it. Shapes: src [N, *], batch [N] -> [B, *]; empty graphs give 0."""
    if size is None:
        size = graph_size(batch, num_graphs, src.dtype, halo)
    total = graph_sum(src, batch, num_graphs, halo)
    return total / size.to(total.dtype).view(num_graphs, *([1] * (src.dim() - 1)))
