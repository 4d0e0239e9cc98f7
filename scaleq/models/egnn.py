"""EGNN: E(n)-equivariant graph neural network (Satorras et al., ICML 2021), velocity variant.

One layer (j -> i, as the published code):

    m_ij = phi_e(h_i, h_j, |x_i - x_j|^2, e_ij)
    x_i <- x_i + mean_j (x_i - x_j) phi_x(m_ij) + phi_v(h_i) v_i^0
    h_i <- h_i + phi_h(h_i, sum_j m_ij)

v^0 is the INPUT velocity at every layer. Coordinates are updated before features, both from the
same messages. phi_x ends in a bias-free Linear(H, 1) with xavier gain 0.001. The published code
also clamps each component of the coordinate update to +-100; a per-component clamp is not
rotation-equivariant, so it is left out.
"""

from __future__ import annotations

import functools

from torch import Tensor, nn
from torch_geometric.data import Batch

from scaleq.nn.checkpoint import run_layers
from scaleq.nn.mlp import cat_features, mlp, small_init_
from scaleq.nn.scatter import scatter_mean, scatter_sum


class EGNNLayer(nn.Module):
    """Equivariant graph convolution E_GCL with the velocity term.

    Args:
        hidden: width H of h and of the messages.
        edge_dim: width Fe of the invariant edge attributes.
        velocity: add phi_v(h_i) v_i^0 to the coordinate update.
    """

    def __init__(self, hidden: int, edge_dim: int, *, velocity: bool = True) -> None:
        super().__init__()
        self.phi_e = mlp(2 * hidden + 1 + edge_dim, hidden, hidden, act_last=True)
        self.phi_x = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), small_init_(nn.Linear(hidden, 1, bias=False)))
        self.phi_h = mlp(2 * hidden, hidden, hidden)
        self.phi_v = mlp(hidden, hidden, 1) if velocity else None

    def forward(self, h: Tensor, pos: Tensor, vel: Tensor, edge_index: Tensor, edge_attr: Tensor) -> tuple[Tensor, Tensor]:
        """
        Shapes:
            h: [N, H], pos: [N, D], vel: [N, D] (input velocity), edge_index: [2, E] (j -> i),
            edge_attr: [E, Fe] -> (h [N, H], pos [N, D])
        """
        source, target = edge_index
        diff = pos[target] - pos[source]  # [E, D] x_i - x_j, kept in coordinate precision
        radial = diff.pow(2).sum(-1, keepdim=True)  # [E, 1]
        m = self.phi_e(cat_features([h[target], h[source], radial, edge_attr]))  # [E, H]
        pos = pos + scatter_mean(diff * self.phi_x(m).to(diff.dtype), target, pos.shape[0])
        if self.phi_v is not None:
            pos = pos + self.phi_v(h).to(pos.dtype) * vel
        aggregated = scatter_sum(m.to(h.dtype), target, h.shape[0])  # [N, H]
        h = h + self.phi_h(cat_features([h, aggregated])).to(h.dtype)
        return h, pos


class EGNN(nn.Module):
    """Embedding, L EGNN layers, predicted coordinates.

    Args:
        in_node_features: width of ``batch.h``.
        in_edge_features: width of ``batch.edge_attr``.
        hidden: H. layers: L. velocity: use the velocity term.
        gradient_checkpointing: checkpoint every k layers (0: off).
    """

    def __init__(
        self,
        *,
        in_node_features: int,
        in_edge_features: int,
        hidden: int = 64,
        layers: int = 4,
        velocity: bool = True,
        gradient_checkpointing: int = 0,
    ) -> None:
        super().__init__()
        if hidden < 1 or layers < 1:
            raise ValueError(f"EGNN needs hidden >= 1 and layers >= 1, got hidden={hidden}, layers={layers}")
        self.embed = nn.Linear(in_node_features, hidden)
        self.layers = nn.ModuleList(EGNNLayer(hidden, in_edge_features, velocity=velocity) for _ in range(layers))
        self.gradient_checkpointing = gradient_checkpointing

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        """
        Shapes:
            batch.h: [N, F], batch.pos: [N, D], batch.vel: [N, D], batch.edge_index: [2, E],
            batch.edge_attr: [E, Fe] -> {"pos": [N, D]}
        """
        pos = batch.pos
        h = self.embed(batch.h).to(pos.dtype)  # the residual stream keeps coordinate precision
        steps = [
            functools.partial(_layer_step, layer, vel=batch.vel, edge_index=batch.edge_index, edge_attr=batch.edge_attr)
            for layer in self.layers
        ]
        h, pos = run_layers(steps, (h, pos), self.gradient_checkpointing)
        return {"pos": pos}


def _layer_step(layer: EGNNLayer, h: Tensor, pos: Tensor, *, vel: Tensor, edge_index: Tensor, edge_attr: Tensor) -> tuple[Tensor, Tensor]:
    return layer(h, pos, vel, edge_index, edge_attr)
