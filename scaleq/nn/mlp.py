"""MLP builders used by every model."""

from __future__ import annotations

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
