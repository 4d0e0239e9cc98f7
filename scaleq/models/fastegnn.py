"""FastEGNN: EGNN with C learnable virtual nodes per graph (Zhang et al., ICML 2024).

Each graph b gets C virtual nodes with coordinates Z_b [C, D] (initialised at the centre of mass
of the input frame) and features S_b [C, H] (initialised from ONE learnable parameter S [C, H]
shared by all graphs: it is what makes the virtual nodes distinct and ordered). One layer, as the
published code does it (j -> i; c indexes virtual nodes of i's graph; xbar = mean of the CURRENT
real coordinates of the graph):

    m_ij = phi_e(h_i, h_j, |x_i - x_j|^2, e_ij)                       real-real message
    M    = (Z - xbar)(Z - xbar)^T  [C, C]                              virtual-global Gram message
    m_ic = phi_ev(h_i, s_c, d(x_i, z_c), M[c, :])                      real-virtual message
    x_i <- x_i + mean_j (x_i - x_j) phi_x(m_ij)
               + mean_c (x_i - z_c) phi_xv(m_ic)
               + phi_v(h_i) v_i^0  [+ phi_g(h_i) g]                    (velocity, optional gravity g)
    z_c <- z_c + mean_{i in graph} (z_c - x_i) phi_X(m_ic)             (x before this layer's update)
    h_i <- h_i + phi_h(h_i, mean_j m_ij, concat_c m_ic)
    s_c <- s_c + phi_hv(s_c, mean_{i in graph} m_ic)

d(x, z) is the plain distance |x - z| (published code; ``virtual_distance="squared"`` uses
|x - z|^2 as the paper writes). ``virtual_aggregation="concat"`` concatenates m_ic over the
ordered virtual nodes (published); ``"mean"`` averages them (the later DistEGNN code). The real
neighbour messages are MEANED into h (EGNN sums them). Graphs may have different sizes and nodes
need not be sorted by graph: everything per graph is an index_add over ``batch``.

The real-real edge work (phi_e, phi_x, sums over neighbours) runs in the shared message-passing
block (scaleq.nn.message_passing; ``edge_chunk`` and ``kernel`` as in EGNN). The real-virtual
messages are computed the same way, as one "edge" per real node from its graph
(:meth:`EdgeLayout.per_node`) through :func:`scaleq.nn.recompute.sum_over_edges`, and only
per-node and per-graph sums leave it: phi_ev's first Linear is split by input, so the graph
terms W_s s_c + W_g M[c, :] + b are computed once per graph ([B, C, H]) and W_h h_i once per
node; phi_h's first Linear is split too, so the [N, C H] concatenation of the m_ic never exists
outside. With ``edge_chunk`` the nodes are walked in chunks and recomputed in backward, so the
memory kept per node is of EGNN's order, not C x H per layer. Per-graph tensors reach the nodes
by ``index_select`` (whose backward is an ``index_add_``), not advanced indexing.

The gravity term adds a fixed vector, so a model with ``gravity`` is only equivariant under
rotations about the gravity axis (and reflections that keep it), as is the data it is used for.

Periodic boxes (a periodic graph: ``batch.edge_shift`` and ``batch.box``): the positions are
points of a torus, which has no centre of mass. The real edges carry their shifts as in EGNN; the
virtual nodes start at the circular mean per axis of the input frame (scaleq.nn.periodic), which
re-imaging leaves where it is and a periodic translation moves with the particles; xbar is the
circular mean of the current positions; x_i - z_c and z_c - xbar are minimum images. The cube's
rotations and reflections about the box centre act on each axis as a permutation of the axes and a
reflection theta -> -theta of its angles, which carries the circular mean along (a mean of angles
reflected is the reflected mean), so they are symmetries of the model too. Virtual coordinates are
returned unwrapped (compare them modulo the box). The MMD loss term takes minimum-image
differences (scaleq.losses.mmd_virtual).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.data import Batch

from scaleq.nn.block_options import EdgeChunk, Kernel, check_block_options
from scaleq.nn.graph_reduce import graph_mean, graph_means_of_sums
from scaleq.nn.layer_recompute import run_layers
from scaleq.nn.message_passing import EdgeLayout, Halo, check_edge_mlps, edge_sums, layout_chunk
from scaleq.nn.mlp import cat_features, mlp, small_init_, split_columns
from scaleq.nn.periodic import circular_mean, minimum_image, periodic_box
from scaleq.nn.recompute import sum_over_edges

VirtualDistance = Literal["plain", "squared"]
VirtualAggregation = Literal["concat", "mean"]
# [C, H]-sized tensors one node's real-virtual messages cost the torch path (for kernel "auto")
VIRTUAL_ROW_TENSORS = 12


def coordinate_head(hidden: int) -> nn.Sequential:
    """phi_x-style head: Linear-SiLU-Linear(H, 1, bias=False) with xavier gain 0.001, as EGNN's."""
    head = mlp(hidden, hidden, 1, bias_last=False)
    small_init_(head[-1])
    return head


def pair_distance(diff: Tensor, kind: VirtualDistance) -> Tensor:
    """|diff| or |diff|^2 over the last axis, keepdim. The plain norm has a zero-safe gradient:
    at the first layer every z_c sits at the centre of mass and may coincide with a node."""
    squared = diff.pow(2).sum(-1, keepdim=True)
    if kind == "squared":
        return squared
    positive = squared > 0
    return torch.where(positive, squared.where(positive, torch.ones_like(squared)).sqrt(), torch.zeros_like(squared))


class FastEGNNLayer(nn.Module):
    """One FastEGNN layer over real nodes and C virtual nodes per graph.

    Args:
        hidden: H. edge_dim: width Fe of the real edge attributes. virtual_nodes: C.
        velocity: add phi_v(h_i) v_i^0. gravity: add phi_g(h_i) g with this fixed vector g.
        virtual_distance, virtual_aggregation: see the module docstring.
        edge_chunk, kernel: options of the message-passing block (see FastEGNN).
    """

    def __init__(
        self,
        hidden: int,
        edge_dim: int,
        virtual_nodes: int,
        *,
        velocity: bool = True,
        gravity: bool = False,
        virtual_distance: VirtualDistance = "plain",
        virtual_aggregation: VirtualAggregation = "concat",
        edge_chunk: EdgeChunk = 0,
        kernel: Kernel = "auto",
    ) -> None:
        super().__init__()
        self.edge_chunk, self.kernel = edge_chunk, kernel
        self.virtual_distance = virtual_distance
        self.virtual_aggregation = virtual_aggregation
        c = virtual_nodes
        self.phi_e = mlp(2 * hidden + 1 + edge_dim, hidden, hidden, act_last=True)
        self.phi_ev = mlp(2 * hidden + 1 + c, hidden, hidden, act_last=True)
        self.phi_x = coordinate_head(hidden)
        self.phi_xv = coordinate_head(hidden)
        self.phi_zv = coordinate_head(hidden)  # the paper's phi_X: moves virtual coordinates
        self.phi_v = mlp(hidden, hidden, 1) if velocity else None
        self.phi_g = mlp(hidden, hidden, 1) if gravity else None
        virtual_width = c * hidden if virtual_aggregation == "concat" else hidden
        self.phi_h = mlp(2 * hidden + virtual_width, hidden, hidden)
        self.phi_hv = mlp(2 * hidden, hidden, hidden)
        self.virtual_width = virtual_width
        check_edge_mlps(self.phi_e, self.phi_x)

    def forward(
        self,
        h: Tensor,
        pos: Tensor,
        z: Tensor,
        s: Tensor,
        *,
        vel: Tensor,
        layout: EdgeLayout,
        batch: Tensor,
        nodes: EdgeLayout | None = None,
        gravity: Tensor | None = None,
        halo: Halo | None = None,
        box: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """
        ``nodes``: :meth:`EdgeLayout.per_node` of ``batch`` (built once per model forward; made
        here when None). ``box``: each graph's periodic box (then the centre is the circular mean
        and every real-virtual and virtual-centre difference a minimum image), or None.

        Shapes:
            h: [N, H], pos: [N, D], z: [B, C, D] virtual coordinates, s: [B, C, H] virtual
            features, vel: [N, D] input velocity, layout: the receiver-sorted real edges
            (scaleq.nn.message_passing.EdgeLayout), batch: [N] graph of each node, gravity: [D],
            box: [B, D, 2] -> (h, pos, z, s) with the same shapes
        """
        num_graphs, c, hidden = z.shape[0], z.shape[1], h.shape[-1]
        if nodes is None:
            nodes = EdgeLayout.per_node(batch, num_graphs)
        # real-real messages: node-level sums from the message-passing block
        real = edge_sums(self.phi_e, self.phi_x, h, pos, layout, halo=halo, edge_chunk=self.edge_chunk, kernel=self.kernel)
        degree = layout.degree(pos.dtype)  # [N, 1]

        # virtual-global Gram message, from the current centre of mass of each graph
        # per-graph means over every rank's nodes under graph parallelism (halo.sum_over_ranks)
        if box is None:
            centre = graph_mean(pos, batch, num_graphs, halo)  # [B, D]
            offset = z - centre[:, None, :]  # [B, C, D]
            periodic: tuple[Tensor, ...] = ()
        else:  # the torus has no centre of mass: the circular mean, and offsets by minimum image
            length = (box[..., 1] - box[..., 0]).to(pos.dtype)[:, None, :]  # [B, 1, D]
            offset = minimum_image(z - circular_mean(pos, batch, num_graphs, box, halo)[:, None, :], length)
            periodic = (length,)
        gram = (offset[:, :, None, :] * offset[:, None, :, :]).sum(-1)  # [B, C, C]; elementwise: stays fp32

        # real-virtual messages m_ic = phi_ev(h_i, s_c, d(x_i, z_c), M[c, :]), first Linear by input:
        # the graph terms once per graph, the node term once per node, the distance per pair
        first = self.phi_ev[0]
        w_node, w_virtual, w_dist, w_gram = split_columns(first, (hidden, hidden, 1, c))
        p_node = F.linear(h, w_node)  # [N, H]
        p_graph = F.linear(s.to(h.dtype), w_virtual, first.bias) + F.linear(gram.to(h.dtype), w_gram)  # [B, C, H]
        w_in, w_messages = split_columns(self.phi_h[0], (2 * hidden, self.virtual_width))
        params = [w_dist, self.phi_ev[2].weight, self.phi_ev[2].bias, self.phi_xv[0].weight, self.phi_xv[0].bias,
                  self.phi_xv[2].weight, self.phi_zv[0].weight, self.phi_zv[0].bias, self.phi_zv[2].weight, w_messages]
        chunk = virtual_chunk(nodes, self.kernel, self.edge_chunk, c, VIRTUAL_ROW_TENSORS * c * hidden * h.element_size())
        virtual_coord, virtual_h, m_sum, z_sum = sum_over_edges(
            functools.partial(_virtual_terms, distance=self.virtual_distance, aggregation=self.virtual_aggregation),
            nodes, chunk, recv=(p_node, pos), src=(p_graph, z, *periodic), edge=(), params=params, at_source=2,
        )
        z_shift, m_mean = graph_means_of_sums([z_sum, m_sum], batch, num_graphs, halo)  # [B, C, D], [B, C, H]

        # coordinates: real-real, real-virtual, velocity, gravity (published order); virtual from old x
        new_pos = pos + real.coord_sum / degree  # mean over incoming real edges
        new_pos = new_pos + virtual_coord
        if self.phi_v is not None:
            new_pos = new_pos + self.phi_v(h).to(pos.dtype) * vel
        if self.phi_g is not None and gravity is not None:
            new_pos = new_pos + self.phi_g(h).to(pos.dtype) * gravity
        z = z + z_shift  # mean over the graph's nodes of (z_c - x_i) phi_X(m_ic)

        # features: real from the mean of real messages and the ordered (or averaged) virtual ones,
        # phi_h's first Linear split into [h, mean_j m_ij] and the virtual messages' part
        real_in = real.message_sum / degree.to(h.dtype)  # [N, H] mean of the real messages
        h_pre = F.linear(cat_features([h, real_in]), w_in, self.phi_h[0].bias) + virtual_h.to(h.dtype)
        h_new = h + self.phi_h[2](F.silu(h_pre)).to(h.dtype)
        s = s + self.phi_hv(cat_features([s, m_mean.to(s.dtype)])).to(s.dtype)
        return h_new, new_pos, z, s


def virtual_chunk(nodes: EdgeLayout, kernel: str, edge_chunk: EdgeChunk, virtual_nodes: int, bytes_per_node: int) -> int:
    """Nodes per chunk of the real-virtual messages: ``edge_chunk`` counts messages (C per node)."""
    if edge_chunk != "auto" and edge_chunk > 0:
        return max(1, edge_chunk // virtual_nodes)
    return layout_chunk(nodes, kernel, edge_chunk, bytes_per_node)


def _virtual_terms(
    recv: Sequence[Tensor], src: Sequence[Tensor], edge: Sequence[Tensor | None], params: Sequence[Tensor], *,
    distance: VirtualDistance, aggregation: VirtualAggregation,
) -> tuple[Tensor, ...]:
    """The real-virtual messages of M nodes and what each contributes to the layer's updates.

    A third ``src`` tensor, the box sides of each node's graph, makes x_i - z_c a minimum image.

    Shapes:
        recv: (W_h h [M, H], x [M, D]), src: (graph terms [M, C, H], z [M, C, D][, box sides [M, 1, D]])
        of each node's graph
        -> (mean_c (x_i - z_c) phi_xv(m_ic) [M, D], phi_h's virtual input part [M, H],
            m_ic [M, C, H] and (z_c - x_i) phi_X(m_ic) [M, C, D], both in the dtype of z, to sum per graph)
    """
    (p_node, pos), (p_graph, z, *periodic) = recv, src
    w_dist, w2, b2, wx1, bx1, wx2, wz1, bz1, wz2, w_messages = params
    diff = pos[:, None, :] - z  # [M, C, D] x_i - z_c, coordinate precision
    if periodic:
        diff = minimum_image(diff, periodic[0])
    dist = pair_distance(diff, distance)  # [M, C, 1]
    pre = p_graph + p_node[:, None, :].to(p_graph.dtype) + dist * w_dist.squeeze(-1)  # [M, C, H]
    m = F.silu(F.linear(F.silu(pre), w2, b2))  # [M, C, H]
    x_gate = F.linear(F.silu(F.linear(m, wx1, bx1)), wx2)  # [M, C, 1]
    z_gate = F.linear(F.silu(F.linear(m, wz1, bz1)), wz2)  # [M, C, 1]
    virtual_in = m.flatten(1) if aggregation == "concat" else m.mean(1)  # [M, C H] or [M, H]
    return ((diff * x_gate.to(diff.dtype)).mean(1), F.linear(virtual_in, w_messages),
            m.to(z.dtype), -diff * z_gate.to(diff.dtype))


class FastEGNN(nn.Module):
    """Embedding, L FastEGNN layers; predicted coordinates plus the virtual nodes.

    Args:
        in_node_features: width of ``batch.h``. in_edge_features: width of ``batch.edge_attr``.
        dim: D (only to check ``gravity``).
        hidden: H. layers: L. virtual_nodes: C.
        velocity: use the velocity term.
        gravity: a fixed vector g (length D, e.g. [0, -1, 0] for Water-3D) for the term
            phi_g(h_i) g; None: no gravity term (and full E(n) equivariance).
        virtual_distance: 'plain' |x_i - z_c| (published code) or 'squared' (paper).
        virtual_aggregation: 'concat' over ordered virtual nodes (published) or 'mean' (DistEGNN).
        gradient_checkpointing: checkpoint every k layers (0: off).
        edge_chunk: K > 0 runs the real edges in chunks of about K, and the real-virtual messages
            in chunks of about K messages (K / C nodes), with recomputation in backward; "auto":
            the same with K from the free memory; 0: off.
        kernel: "auto", "torch" or "triton" for the real edges (see scaleq.nn.block_options); the
            real-virtual messages take the torch path ("auto": plain or chunked by memory).

    Outputs: ``pos`` [N, D] predicted coordinates, ``virtual_pos`` [B * C, D] and ``virtual_h``
    [B * C, H] virtual coordinates and features, graph-major (rows b * C .. b * C + C - 1 belong
    to graph b; ``.view(B, C, -1)`` recovers the per-graph sets).
    """

    # what scaleq.models.build checks a config against before a run starts
    auxiliary_outputs: ClassVar[tuple[str, ...]] = ("virtual_pos", "virtual_h")

    def __init__(
        self,
        *,
        in_node_features: int,
        in_edge_features: int,
        dim: int = 3,
        hidden: int = 64,
        layers: int = 4,
        virtual_nodes: int = 3,
        velocity: bool = True,
        gravity: list[float] | None = None,
        virtual_distance: VirtualDistance = "plain",
        virtual_aggregation: VirtualAggregation = "concat",
        gradient_checkpointing: int = 0,
        edge_chunk: EdgeChunk = 0,
        kernel: Kernel = "auto",
    ) -> None:
        super().__init__()
        if hidden < 1 or layers < 1 or virtual_nodes < 1:
            raise ValueError(
                f"FastEGNN needs hidden, layers and virtual_nodes >= 1, got {hidden}, {layers}, {virtual_nodes}"
            )
        if gravity is not None and len(gravity) != dim:
            raise ValueError(f"FastEGNN gravity must have {dim} components (one per axis), got {list(gravity)}")
        if virtual_distance not in ("plain", "squared"):
            raise ValueError(f"virtual_distance must be 'plain' or 'squared', got {virtual_distance!r}")
        if virtual_aggregation not in ("concat", "mean"):
            raise ValueError(f"virtual_aggregation must be 'concat' or 'mean', got {virtual_aggregation!r}")
        check_block_options(edge_chunk, kernel)
        self.virtual_nodes = virtual_nodes
        self.embed = nn.Linear(in_node_features, hidden)
        self.virtual_features = nn.Parameter(torch.randn(virtual_nodes, hidden))  # S, shared by all graphs
        self.register_buffer(
            "gravity", None if gravity is None else torch.tensor(gravity, dtype=torch.float32), persistent=False
        )
        self.layers = nn.ModuleList(
            FastEGNNLayer(
                hidden, in_edge_features, virtual_nodes, velocity=velocity, gravity=gravity is not None,
                virtual_distance=virtual_distance, virtual_aggregation=virtual_aggregation,
                edge_chunk=edge_chunk, kernel=kernel,
            )
            for _ in range(layers)
        )
        self.gradient_checkpointing = gradient_checkpointing

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        """
        Shapes:
            batch.h: [N, F], batch.pos: [N, D], batch.vel: [N, D], batch.edge_index: [2, E],
            batch.edge_attr: [E, Fe], batch.batch: [N], batch.edge_shift: [E, D] and batch.box
            [B, D, 2] (periodic only) -> {"pos": [N, D], "virtual_pos": [B * C, D], "virtual_h": [B * C, H]}
        """
        pos, graph = batch.pos, batch.batch
        num_graphs = int(batch.num_graphs)
        h = self.embed(batch.h).to(pos.dtype)  # the residual streams keep coordinate precision
        box = periodic_box(batch)
        if box is None:
            centre = graph_mean(pos, graph, num_graphs, getattr(batch, "halo", None))  # [B, D] input centre of mass
        else:  # periodic: where the particles' circular mean puts it, moving with them on the torus
            centre = circular_mean(pos, graph, num_graphs, box, getattr(batch, "halo", None))
        z = centre[:, None, :].expand(-1, self.virtual_nodes, -1).contiguous()  # [B, C, D]
        s = self.virtual_features.to(pos.dtype)[None].expand(num_graphs, -1, -1)  # [B, C, H]
        gravity = None if self.gravity is None else self.gravity.to(pos.dtype)
        layout = EdgeLayout.from_batch(batch, pos.shape[0])  # sorted once, shared by every layer
        nodes = EdgeLayout.per_node(graph, num_graphs)  # the real-virtual messages' layout, also shared
        steps = [
            functools.partial(
                _layer_step, layer, vel=batch.vel, layout=layout, batch=graph, nodes=nodes, gravity=gravity,
                halo=getattr(batch, "halo", None), box=box,
            )
            for layer in self.layers
        ]
        h, pos, z, s = run_layers(steps, (h, pos, z, s), self.gradient_checkpointing)
        return {"pos": pos, "virtual_pos": z.reshape(-1, z.shape[-1]), "virtual_h": s.reshape(-1, s.shape[-1])}


def _layer_step(layer: FastEGNNLayer, h: Tensor, pos: Tensor, z: Tensor, s: Tensor, **inputs: object) -> tuple[Tensor, ...]:
    return layer(h, pos, z, s, **inputs)
