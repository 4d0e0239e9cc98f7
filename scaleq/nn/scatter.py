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
