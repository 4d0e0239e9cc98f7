"""Training losses. The reported metric is always the plain position MSE (mean over nodes and axes)."""

from __future__ import annotations

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


def training_loss(output: dict[str, Tensor], batch: Batch, config: LossConfig) -> tuple[Tensor, dict[str, Tensor]]:
    """Total loss and its named parts (each detached for logging).

    Shapes:
        output["pos"]: [N, D], batch.target: [N, D] -> loss []
    """
    mse = position_mse(output["pos"], batch.target)
    return mse, {"mse": mse.detach()}
