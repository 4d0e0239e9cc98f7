"""EGNN as it was before the shared message-passing block: per-edge concatenation, the whole
phi_e on every edge, index_add sums. Kept only as the benchmarks' reference (same parameter
names as :class:`scaleq.models.egnn.EGNN`, so it loads that model's state dict)."""

from __future__ import annotations

from torch import Tensor, nn
from torch_geometric.data import Batch

from scaleq.nn.mlp import cat_features, mlp, small_init_
from scaleq.nn.scatter import scatter_mean, scatter_sum


class ReferenceEGNNLayer(nn.Module):
    def __init__(self, hidden: int, edge_dim: int) -> None:
        super().__init__()
        self.phi_e = mlp(2 * hidden + 1 + edge_dim, hidden, hidden, act_last=True)
        self.phi_x = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), small_init_(nn.Linear(hidden, 1, bias=False)))
        self.phi_h = mlp(2 * hidden, hidden, hidden)
        self.phi_v = mlp(hidden, hidden, 1)

    def forward(self, h: Tensor, pos: Tensor, vel: Tensor, edge_index: Tensor, edge_attr: Tensor) -> tuple[Tensor, Tensor]:
        """
        Shapes:
            h: [N, H], pos: [N, D], vel: [N, D], edge_index: [2, E], edge_attr: [E, Fe]
            -> (h [N, H], pos [N, D])
        """
        source, target = edge_index
        diff = pos[target] - pos[source]
        radial = diff.pow(2).sum(-1, keepdim=True)
        m = self.phi_e(cat_features([h[target], h[source], radial, edge_attr]))  # [E, H]
        pos = pos + scatter_mean(diff * self.phi_x(m).to(diff.dtype), target, pos.shape[0])
        pos = pos + self.phi_v(h).to(pos.dtype) * vel
        aggregated = scatter_sum(m.to(h.dtype), target, h.shape[0])
        h = h + self.phi_h(cat_features([h, aggregated])).to(h.dtype)
        return h, pos


class ReferenceEGNN(nn.Module):
    def __init__(self, *, in_node_features: int, in_edge_features: int, hidden: int = 64, layers: int = 4) -> None:
        super().__init__()
        self.embed = nn.Linear(in_node_features, hidden)
        self.layers = nn.ModuleList(ReferenceEGNNLayer(hidden, in_edge_features) for _ in range(layers))

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        """
        Shapes:
            batch.h: [N, F], batch.pos: [N, D], batch.vel: [N, D], batch.edge_index: [2, E],
            batch.edge_attr: [E, Fe] -> {"pos": [N, D]}
        """
        pos = batch.pos
        h = self.embed(batch.h).to(pos.dtype)
        for layer in self.layers:
            h, pos = layer(h, pos, batch.vel, batch.edge_index, batch.edge_attr)
        return {"pos": pos}
