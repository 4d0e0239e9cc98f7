"""A cap on the length of a coordinate update that keeps it equivariant."""

from __future__ import annotations

import torch
from torch import Tensor


def cap_length(update: Tensor, cap: float | None) -> Tensor:
    """Each row of ``update`` scaled down to length ``cap`` where it is longer (None: unchanged).

    The published code clamps each component to +-100, which depends on the axes (a rotated input
    is clamped differently). Scaling by min(1, cap / |u|) depends only on the length |u|, an
    invariant, so the capped update still rotates with the input. Where nothing is near the cap
    the layer is unchanged (and so are its gradients).

    Shapes:
        update: [N, D] -> [N, D]
    """
    if cap is None:
        return update
    length = torch.linalg.vector_norm(update, dim=-1, keepdim=True)  # [N, 1]
    return update * (cap / length.clamp_min(cap)).to(update.dtype)
