"""Scatter reductions over an index (edges -> nodes, nodes -> graphs) with index_add."""

from __future__ import annotations

import torch
from torch import Tensor


def scatter_sum(src: Tensor, index: Tensor, size: int) -> Tensor:
    """Shapes: src [M, *], index [M] -> [size, *]."""
    out = src.new_zeros((size, *src.shape[1:]))
    return out.index_add_(0, index, src)


def scatter_count(index: Tensor, size: int, dtype: torch.dtype) -> Tensor:
    """How many entries point at each slot, at least 1 (so means of empty slots are 0).
    Shapes: index [M] -> [size, 1]."""
    ones = torch.ones(index.shape[0], 1, dtype=dtype, device=index.device)
    return scatter_sum(ones, index, size).clamp_(min=1)


def scatter_mean(src: Tensor, index: Tensor, size: int) -> Tensor:
    """Shapes: src [M, *], index [M] -> [size, *]; empty slots give 0."""
    total = scatter_sum(src, index, size)
    count = scatter_count(index, size, src.dtype).view(size, *([1] * (src.dim() - 1)))
    return total / count


def rank_within_groups(key: Tensor, group: Tensor, num_groups: int) -> Tensor:
    """Rank of each entry among the entries of its group, by ascending ``key`` (ties: by position).
    Two stable sorts, no per-group loop. Shapes: key [M], group [M] -> [M] int64 (0 = smallest)."""
    order = torch.argsort(key, stable=True)
    order = order[torch.argsort(group[order], stable=True)]  # by group, then by key
    counts = torch.bincount(group, minlength=num_groups)
    first = torch.cumsum(counts, 0) - counts  # first sorted slot of each group
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device) - first[group[order]]
    return rank
