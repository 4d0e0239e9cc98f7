"""A plain EGNN in the published code's style (E_GCL_vel): per-edge concatenation, the whole edge
MLP on every edge, index_add sums. The benchmarks' reference: what people run today, against
which the message-passing block's paths are compared. Not used for training."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

# scaleq's EGNN parameter names -> the published code's, for copying weights across
EGNN_NAMES = {"embed": "embedding", "phi_e": "edge_mlp", "phi_x": "coord_mlp", "phi_h": "node_mlp",
              "phi_v": "coord_mlp_vel"}


class ReferenceEGCL(nn.Module):
    """One EGNN layer written as the published code writes it (E_GCL_vel): concatenation, Linear
    layers, index_add sums; coordinates aggregated by mean. No project helpers on purpose."""

    def __init__(self, hidden: int, edge_dim: int) -> None:
        super().__init__()
        self.edge_mlp = nn.Sequential(nn.Linear(2 * hidden + 1 + edge_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU())
        self.node_mlp = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        last = nn.Linear(hidden, 1, bias=False)
        nn.init.xavier_uniform_(last.weight, gain=0.001)
        self.coord_mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), last)
        self.coord_mlp_vel = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 1))

    def forward(self, h: Tensor, x: Tensor, v: Tensor, edge_index: Tensor, edge_attr: Tensor) -> tuple[Tensor, Tensor]:
        """
        Shapes:
            h: [N, H], x: [N, D], v: [N, D], edge_index: [2, E] (j -> i), edge_attr: [E, Fe] -> ([N, H], [N, D])
        """
        col, row = edge_index  # row: receiver i, col: sender j (the published names)
        coord_diff = x[row] - x[col]
        radial = (coord_diff**2).sum(1, keepdim=True)
        edge_feat = self.edge_mlp(torch.cat([h[row], h[col], radial, edge_attr], dim=1))
        trans = coord_diff * self.coord_mlp(edge_feat)
        count = torch.zeros(x.shape[0], 1, device=x.device, dtype=trans.dtype).index_add_(
            0, row, torch.ones_like(trans[:, :1]))
        agg = torch.zeros(x.shape[0], x.shape[1], device=x.device, dtype=trans.dtype).index_add_(0, row, trans)
        x = x + agg / count.clamp(min=1) + self.coord_mlp_vel(h) * v
        agg_h = torch.zeros(h.shape[0], edge_feat.shape[1], device=h.device, dtype=edge_feat.dtype).index_add_(0, row, edge_feat)
        h = h + self.node_mlp(torch.cat([h, agg_h.to(h.dtype)], dim=1))
        return h, x


class ReferenceEGNN(nn.Module):
    def __init__(self, *, in_node_features: int, in_edge_features: int, hidden: int = 64, layers: int = 4) -> None:
        super().__init__()
        self.embedding = nn.Linear(in_node_features, hidden)
        self.layers = nn.ModuleList(ReferenceEGCL(hidden, in_edge_features) for _ in range(layers))

    def forward(self, batch: Any) -> dict[str, Tensor]:  # noqa: ANN401 (a PyG Batch)
        """
        Shapes:
            batch.h: [N, F], batch.pos: [N, D], batch.vel: [N, D], batch.edge_index: [2, E] -> {"pos": [N, D]}
        """
        h, x = self.embedding(batch.h), batch.pos
        for layer in self.layers:
            h, x = layer(h, x, batch.vel, batch.edge_index, batch.edge_attr)
        return {"pos": x}

    def load_egnn_state(self, state: dict[str, Tensor]) -> None:
        """Take the weights of a :class:`scaleq.models.egnn.EGNN` of the same widths."""
        renamed = {}
        for key, value in state.items():
            for ours, published in EGNN_NAMES.items():
                key = key.replace(ours, published)
            renamed[key] = value
        self.load_state_dict(renamed)
