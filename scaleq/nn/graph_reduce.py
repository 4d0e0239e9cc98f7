"""Per-graph sums and means that stay exact when each graph is split across ranks.

On one device these are scatter reductions over ``batch``. Under graph parallelism a rank holds
only the nodes it owns, and ``halo.sum_over_ranks`` (the object on ``batch.halo``, duck-typed
here: models never import torch.distributed) adds the ranks' partial sums, in one all-reduce per
call; the result is the same on every rank of the group and differentiable.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
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


def graph_means_of_sums(sums: Sequence[Tensor], batch: Tensor, num_graphs: int, halo: Any = None) -> list[Tensor]:
    """Per-graph means from per-graph sums over this rank's nodes (every rank's with ``halo``, in
    one reduction for all of them); empty graphs give 0.

    Shapes: sums [B, *] each (one dtype), batch [N] -> [B, *] each
    """
    ones = torch.ones(batch.shape[0], 1, dtype=sums[0].dtype, device=batch.device)
    count = scatter_sum(ones, batch, num_graphs)  # [B, 1] this rank's nodes (added over ranks below)
    flat = torch.cat([s.reshape(num_graphs, -1) for s in sums] + [count], 1)
    if halo is not None:
        flat = halo.sum_over_ranks(flat)
    means, start = [], 0
    for s in sums:
        width = math.prod(s.shape[1:])
        means.append((flat[:, start : start + width] / flat[:, -1:].clamp_min(1)).view(s.shape))
        start += width
    return means
