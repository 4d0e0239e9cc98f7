"""Training losses. The reported metric is always the plain position MSE (mean over nodes and axes)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.data import Batch

from scaleq.config import LossConfig


def squared_error_sum(pred: Tensor, target: Tensor) -> Tensor:
    """Sum of squared coordinate errors, in fp32 at least. Shapes: [N, D], [N, D] -> []."""
    diff = pred.float() - target.float() if pred.dtype != target.dtype else pred - target
    return diff.pow(2).sum()


def position_mse(pred: Tensor, target: Tensor) -> Tensor:
    """Mean over nodes and axes, as the papers report. Shapes: [N, D], [N, D] -> []."""
    return squared_error_sum(pred, target) / target.numel()


def connectivity_loss(pooled_adjacency: Tensor) -> Tensor:
    """EGHN's connectivity loss: || rownorm(S^T A_local S) - I ||_F per graph, averaged over graphs.

    Rows are scaled to unit L2 norm (as the published code; the paper only says "row-wise
    normalisation"); the loss is smallest when every cluster's local edges stay inside it.

    Shapes:
        pooled_adjacency: [B, K, K] -> []
    """
    rows = F.normalize(pooled_adjacency.to(torch.promote_types(pooled_adjacency.dtype, torch.float32)), p=2, dim=-1)
    eye = torch.eye(rows.shape[-1], dtype=rows.dtype, device=rows.device)
    return torch.linalg.matrix_norm(rows - eye, ord="fro").mean()


def training_loss(output: dict[str, Tensor], batch: Batch, config: LossConfig) -> tuple[Tensor, dict[str, Tensor]]:
    """Total loss and its named parts (each detached for logging).

    Shapes:
        output["pos"]: [N, D], batch.target: [N, D], output["pooled_adjacency"]: [B, K, K]
        (with connectivity_weight > 0) -> loss []
    """
    mse = position_mse(output["pos"], batch.target)
    loss, parts = mse, {"mse": mse.detach()}
    if config.connectivity_weight > 0:
        if "pooled_adjacency" not in output:
            raise ValueError("loss.connectivity_weight > 0 needs a model that returns 'pooled_adjacency' (e.g. eghn)")
        connectivity = connectivity_loss(output["pooled_adjacency"])
        loss = loss + config.connectivity_weight * connectivity
        parts["connectivity"] = connectivity.detach()
    return loss, parts
