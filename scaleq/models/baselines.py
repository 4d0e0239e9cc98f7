"""Baselines: the papers' learned Linear model and plain constant-velocity extrapolation."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch_geometric.data import Batch

LINEAR_START = 0.7  # the published Linear_dynamics starts its time parameter at 0.7


def _horizon_velocity(batch: Batch) -> Tensor:
    """v * horizon per node: the displacement constant-velocity motion covers by the target frame.
    Shapes: -> [N, D]"""
    return batch.vel * batch.horizon.index_select(0, batch.batch).unsqueeze(-1).to(batch.pos.dtype)


class LinearDynamics(nn.Module):
    """The papers' "Linear" baseline (EGNN's ``Linear_dynamics``): x + v * t with one learnable
    scalar t, trained like the other models.

    Here t is measured in units of the sample's horizon (``batch.horizon``: the time from input
    to target in the velocity's units), so the prediction is x + v * horizon * t. On the N-body
    data the horizon is 1.0 and t is the published parameter; it starts at 0.7 as there.
    :meth:`normal_equation` gives the least-squares t of a split in closed form.

    Args:
        time: initial t.
    """

    def __init__(self, *, time: float = LINEAR_START) -> None:
        super().__init__()
        self.time = nn.Parameter(torch.tensor([float(time)]))

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        """
        Shapes:
            batch.pos: [N, D], batch.vel: [N, D], batch.horizon: [B], batch.batch: [N] -> {"pos": [N, D]}
        """
        return {"pos": batch.pos + _horizon_velocity(batch) * self.time.to(batch.pos.dtype)}

    @staticmethod
    def normal_equation(batch: Batch) -> Tensor:
        """The two sums whose ratio is the least-squares t: [sum u . (y - x), sum u . u] with
        u = v * horizon, over every node and axis of the batch (float64; add them over batches,
        and over ranks, before dividing).

        Shapes:
            -> [2]
        """
        u = _horizon_velocity(batch).double()
        return torch.stack([(u * (batch.target.double() - batch.pos.double())).sum(), (u * u).sum()])

    @classmethod
    def from_normal_equation(cls, sums: Tensor) -> LinearDynamics:
        """The least-squares Linear model from summed :meth:`normal_equation` terms."""
        numerator, denominator = (float(v) for v in sums)
        if not denominator > 0:
            raise ValueError("the Linear baseline cannot be fitted: every velocity in the split is zero")
        return cls(time=numerator / denominator)


class ConstantVelocity(nn.Module):
    """Constant-velocity extrapolation x + v * horizon: nothing to learn."""

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        """
        Shapes:
            batch.pos: [N, D], batch.vel: [N, D], batch.horizon: [B], batch.batch: [N] -> {"pos": [N, D]}
        """
        return {"pos": batch.pos + _horizon_velocity(batch)}
