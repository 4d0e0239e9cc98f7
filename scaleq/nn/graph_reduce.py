"""Per-graph sums and means that stay exact when each graph is split across ranks.

On one device these are scatter reductions over ``batch``. Under graph parallelism a rank holds
only the nodes it owns, and ``halo.sum_over_ranks`` (the object on ``batch.halo``, duck-typed
here: models never import torch.distributed) adds the ranks' partial sums, in one all-reduce per
call; the result is the same on every rank of the group and differentiable.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from scaleq.nn.scatter import scatter_mean, scatter_sum


def graph_sum(src: Tensor, batch: Tensor, num_graphs: int, halo: Any = None) -> Tensor:
    """Sum over the nodes of each graph (every rank's nodes with ``halo``).

    Shapes: src [N, *], batch [N] -> [B, *]
    """
    total = scatter_sum(src, batch, num_graphs)
    return total if halo is None else halo.sum_over_ranks(total)


def graph_mean(src: Tensor, batch: Tensor, num_graphs: int, halo: Any = None) -> Tensor:
    """Mean over the nodes of each graph (every rank's nodes with ``halo``); empty graphs give 0.

    Shapes: src [N, *], batch [N] -> [B, *]
    """
    if halo is None:
        return scatter_mean(src, batch, num_graphs)
    flat = src.reshape(src.shape[0], -1)
    # the node count rides along with the sums: one reduction for both
    total = graph_sum(torch.cat([flat, flat.new_ones(src.shape[0], 1)], 1), batch, num_graphs, halo)
    mean = total[:, :-1] / total[:, -1:].clamp_min(1)
    return mean.view(num_graphs, *src.shape[1:])
