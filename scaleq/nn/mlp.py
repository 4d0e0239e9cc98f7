"""MLP builders used by every model."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


def mlp(
    in_dim: int, hidden: int, out_dim: int, *, layers: int = 2, act_last: bool = False, bias_last: bool = True
) -> nn.Sequential:
    """Linear-SiLU-...-Linear with ``layers`` linear maps (SiLU between them, and after the last
    one when ``act_last``): the phi_e / phi_h / phi_x blocks of EGNN and its descendants."""
    if layers < 1:
        raise ValueError(f"an MLP needs at least one layer, got {layers}")
    dims = [in_dim] + [hidden] * (layers - 1) + [out_dim]
    modules: list[nn.Module] = []
    for k in range(layers):
        last = k == layers - 1
        modules.append(nn.Linear(dims[k], dims[k + 1], bias=bias_last or not last))
        if not last or act_last:
            modules.append(nn.SiLU())
    return nn.Sequential(*modules)


def small_init_(linear: nn.Linear, gain: float = 0.001) -> nn.Linear:
    """Xavier-uniform with a small gain: EGNN's coordinate heads start near zero so deep stacks
    begin close to the identity map on coordinates."""
    nn.init.xavier_uniform_(linear.weight, gain=gain)
    return linear


def cat_features(parts: list[Tensor]) -> Tensor:
    """Concatenate along the last axis in the dtype of the first part: under bf16 autocast MLP
    outputs are bf16 while coordinates and distances stay fp32."""
    dtype = parts[0].dtype
    return torch.cat([p.to(dtype) for p in parts], dim=-1)


def split_columns(linear: nn.Linear, widths: Sequence[int]) -> list[Tensor]:
    """The weight of ``linear`` cut by input columns into blocks of ``widths``, in order.

    W [x_1, ..., x_k] + b = W_1 x_1 + ... + W_k x_k + b: a Linear over concatenated inputs can
    run block by block, each block where it is cheapest (per node instead of per edge, per
    graph instead of per node). The module is unchanged (its weight is sliced at run time), so
    state dicts and checkpoints stay as they were; the slices are views, autograd-tracked.

    Shapes: linear.weight [out, sum(widths)] -> [out, widths[k]] each
    """
    if sum(widths) != linear.in_features:
        raise ValueError(f"cannot split a Linear with {linear.in_features} inputs into blocks of {list(widths)}")
    blocks, start = [], 0
    for width in widths:
        blocks.append(linear.weight[:, start : start + width])
        start += width
    return blocks
