"""Baselines with nothing to learn."""

from __future__ import annotations

from torch import Tensor, nn
from torch_geometric.data import Batch


class LinearDynamics(nn.Module):
    """The papers' "Linear" baseline: constant-velocity extrapolation x + v * horizon."""

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        """
        Shapes:
            batch.pos: [N, D], batch.vel: [N, D], batch.horizon: [B], batch.batch: [N] -> {"pos": [N, D]}
        """
        return {"pos": batch.pos + batch.vel * batch.horizon[batch.batch].unsqueeze(-1).to(batch.pos.dtype)}
