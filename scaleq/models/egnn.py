"""EGNN: E(n)-equivariant graph neural network (Satorras et al., ICML 2021), velocity variant.

One layer (j -> i, as the published code):

    m_ij = phi_e(h_i, h_j, |x_i - x_j|^2, e_ij)
    x_i <- x_i + mean_j (x_i - x_j) phi_x(m_ij) + phi_v(h_i) v_i^0
    h_i <- h_i + phi_h(h_i, sum_j m_ij)

v^0 is the INPUT velocity at every layer. Coordinates are updated before features, both from the
same messages. phi_x ends in a bias-free Linear(H, 1) with xavier gain 0.001. The published code
also clamps each component of the coordinate update to +-100; a per-component clamp is not
rotation-equivariant, so it is left out, and ``update_cap`` bounds the update's length instead
(scaleq.nn.update_cap; off by default).

``message_aggregation: mean`` replaces the sum over neighbours in the feature update by the mean,
as the EGNN baseline of FastEGNN's published code does (its models/basic.py aggregates messages
with aggr='mean'). On complete graphs of many nodes (FastEGNN's 100-body system: 99 neighbours)
the sum makes phi_h's input ~100x larger than on 5 bodies and the untrained model's prediction
runs away (configs/egnn_nbody100.yaml has the figures); the mean keeps it at one message's scale.

The edge work (phi_e, phi_x and the sums over neighbours) runs in the shared message-passing
block (scaleq.nn.message_passing): ``edge_chunk`` bounds its memory, ``kernel`` picks the fused
Triton kernel on CUDA.
"""

from __future__ import annotations

import functools
from typing import Literal

from torch import Tensor, nn
from torch_geometric.data import Batch

from scaleq.nn.block_options import EdgeChunk, Kernel, check_block_options
from scaleq.nn.layer_recompute import run_layers
from scaleq.nn.message_passing import EdgeLayout, Halo, check_edge_mlps, edge_sums
from scaleq.nn.mlp import cat_features, mlp, small_init_
from scaleq.nn.update_cap import cap_length

MessageAggregation = Literal["sum", "mean"]


class EGNNLayer(nn.Module):
    """Equivariant graph convolution E_GCL with the velocity term.

    Args:
        hidden: width H of h and of the messages.
        edge_dim: width Fe of the invariant edge attributes.
        velocity: add phi_v(h_i) v_i^0 to the coordinate update.
        message_aggregation: "sum" (the EGNN paper and code) or "mean" over incoming messages in
            the feature update.
        update_cap: largest length of a node's coordinate update in one layer (None: no cap).
        edge_chunk: edges per chunk of the message-passing block (0: all at once; "auto").
        kernel: "auto", "torch" or "triton" (see scaleq.nn.block_options).
    """

    def __init__(
        self, hidden: int, edge_dim: int, *, velocity: bool = True, message_aggregation: MessageAggregation = "sum",
        update_cap: float | None = None, edge_chunk: EdgeChunk = 0, kernel: Kernel = "auto",
    ) -> None:
        super().__init__()
        if message_aggregation not in ("sum", "mean"):
            raise ValueError(f"message_aggregation must be 'sum' or 'mean', got {message_aggregation!r}")
        self.mean_messages = message_aggregation == "mean"
        self.update_cap = update_cap
        self.phi_e = mlp(2 * hidden + 1 + edge_dim, hidden, hidden, act_last=True)
        self.phi_x = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), small_init_(nn.Linear(hidden, 1, bias=False)))
        self.phi_h = mlp(2 * hidden, hidden, hidden)
        self.phi_v = mlp(hidden, hidden, 1) if velocity else None
        check_edge_mlps(self.phi_e, self.phi_x)
        self.edge_chunk, self.kernel = edge_chunk, kernel

    def forward(
        self,
        h: Tensor,
        pos: Tensor,
        vel: Tensor,
        edge_index: Tensor | None,
        edge_attr: Tensor | None,
        *,
        layout: EdgeLayout | None = None,
        halo: Halo | None = None,
        edge_shift: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """
        ``layout`` (the receiver-sorted edges, built once per model forward) replaces
        ``edge_index``, ``edge_attr`` and ``edge_shift`` when given. ``halo``: see
        scaleq.nn.message_passing (sources may then index halo nodes).

        Shapes:
            h: [N, H], pos: [N, D], vel: [N, D] (input velocity), edge_index: [2, E] (j -> i),
            edge_attr: [E, Fe], edge_shift: [E, D] or None -> (h [N, H], pos [N, D])
        """
        if layout is None:
            if edge_index is None or edge_attr is None:
                raise ValueError("EGNNLayer needs edge_index and edge_attr, or a prebuilt layout")
            layout = EdgeLayout.build(edge_index, pos.shape[0], edge_attr, edge_shift)
        sums = edge_sums(
            self.phi_e, self.phi_x, h, pos, layout, halo=halo, edge_chunk=self.edge_chunk, kernel=self.kernel
        )
        update = sums.coord_sum / layout.degree(pos.dtype)  # mean over incoming edges
        if self.phi_v is not None:
            update = update + self.phi_v(h).to(pos.dtype) * vel
        pos_new = pos + cap_length(update, self.update_cap)
        messages = sums.message_sum / layout.degree(h.dtype) if self.mean_messages else sums.message_sum
        h = h + self.phi_h(cat_features([h, messages])).to(h.dtype)
        return h, pos_new


class EGNN(nn.Module):
    """Embedding, L EGNN layers, predicted coordinates.

    Args:
        in_node_features: width of ``batch.h``.
        in_edge_features: width of ``batch.edge_attr``.
        hidden: H. layers: L. velocity: use the velocity term.
        message_aggregation: "sum" (published EGNN) or "mean" (FastEGNN's EGNN baseline) of the
            messages in the feature update.
        update_cap: largest length of one layer's coordinate update (None: no cap).
        gradient_checkpointing: checkpoint every k layers (0: off).
        edge_chunk: K > 0 runs the edge work in chunks of about K edges with recomputation in
            backward (memory O(N H + K H) per layer instead of O(E H)); "auto": the same with K
            from the device's free memory; 0: all edges at once (unless kernel "auto" finds they
            do not fit).
        kernel: "auto" (the torch path, plain where the edges fit in free memory, chunked where
            not: scaleq.nn.block_options); "torch" (exactly as edge_chunk says); "triton" (fused
            forward and backward kernels, need the triton package).
    """

    def __init__(
        self,
        *,
        in_node_features: int,
        in_edge_features: int,
        hidden: int = 64,
        layers: int = 4,
        velocity: bool = True,
        message_aggregation: MessageAggregation = "sum",
        update_cap: float | None = None,
        gradient_checkpointing: int = 0,
        edge_chunk: EdgeChunk = 0,
        kernel: Kernel = "auto",
    ) -> None:
        super().__init__()
        if hidden < 1 or layers < 1:
            raise ValueError(f"EGNN needs hidden >= 1 and layers >= 1, got hidden={hidden}, layers={layers}")
        if update_cap is not None and not update_cap > 0:
            raise ValueError(f"update_cap must be > 0 or None, got {update_cap}")
        check_block_options(edge_chunk, kernel)
        self.embed = nn.Linear(in_node_features, hidden)
        self.layers = nn.ModuleList(
            EGNNLayer(hidden, in_edge_features, velocity=velocity, message_aggregation=message_aggregation,
                      update_cap=update_cap, edge_chunk=edge_chunk, kernel=kernel)
            for _ in range(layers)
        )
        self.gradient_checkpointing = gradient_checkpointing

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        """
        Shapes:
            batch.h: [N, F], batch.pos: [N, D], batch.vel: [N, D], batch.edge_index: [2, E],
            batch.edge_attr: [E, Fe], batch.edge_shift: [E, D] (periodic boxes only)
            -> {"pos": [N, D]}
        """
        pos = batch.pos
        h = self.embed(batch.h).to(pos.dtype)  # the residual stream keeps coordinate precision
        layout = EdgeLayout.from_batch(batch, pos.shape[0])  # sorted once, shared by every layer
        halo = getattr(batch, "halo", None)
        steps = [functools.partial(_layer_step, layer, vel=batch.vel, layout=layout, halo=halo) for layer in self.layers]
        h, pos = run_layers(steps, (h, pos), self.gradient_checkpointing)
        return {"pos": pos}


def _layer_step(
    layer: EGNNLayer, h: Tensor, pos: Tensor, *, vel: Tensor, layout: EdgeLayout, halo: Halo | None
) -> tuple[Tensor, Tensor]:
    return layer(h, pos, vel, None, None, layout=layout, halo=halo)
