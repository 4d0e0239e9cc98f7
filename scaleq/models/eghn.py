"""EGHN: equivariant graph hierarchy network (Han et al., NeurIPS 2022): EMMP, E-Pool, E-UnPool.

One level of hierarchy, as the published code (hanjq17/EGHN, ``model/eghn.py`` and
``model/basic.py``) computes it:

    encoder   Linear(F, H) embedding, then an EGHN-EGNN block (its own Linear(H, H) embedding and
              L EGNN layers, see :class:`EGHNEGNNLayer`) on the distance-based global graph
              (batch.edge_index); dx = x' - x
              E-Pool: EMMP layers on the LOCAL graph (batch.local_index: bonds, k-nearest or
              radius) over Z_i = [x_i - centre, dx_i, v_i], reading the global graph's kind of
              edge attributes on the local edges (batch.local_attr); then soft assignments
              s_i = softmax(Linear(8H, K)(tanh(Linear(H, 8H)(h_i))))
    high      cluster quantities are assignment-weighted means of the INPUT positions and
              velocities and of the encoder's features; an EGHN-EGNN block over all K x K ordered
              pairs of clusters of each graph, self-loops included, edge feature = the raw
              entry of S^T A_global S
    decoder   E-UnPool: each node gets sum_k s_ik X'_k plus an equivariant correction from
              [sum_k s_ik (X'_k - X_k), x_i - sum_k s_ik X_k, v_i - sum_k s_ik V_k, dx_i] and the
              scalars [h_i, sum_k s_ik h'_k] (node-wise matrix layers, :class:`UnPoolLayer`)

EMMP (the published ``EquivariantEdgeScalarNet``): invariants Z_j^T Z_i (m x m, flattened and
scaled to unit norm), with h_i, h_j, e_ij, give a message m_ij (MLP with a final SiLU) and a
mixing matrix H_ij (m x m); Z_i <- Z_i + mean_j Z_j H_ij, h_i <- h_i + phi_h(h_i, sum_j m_ij).
The paper writes a sum for the vector update; the published code takes the mean, as here.

Cluster quantities are divided by the column sum sum_i s_ik: this normalisation is what keeps
pooled positions translation-equivariant (Eq. 9).

Where this module departs from the published code, and why:
- The published EGNN layer clamps each component of the coordinate update to +-100; a
  per-component clamp is not rotation-equivariant, so it is left out.
- The last E-Pool layer updates no vectors and the last E-UnPool layer computes no scalars:
  nothing reads them (the published code computes and discards them), and parameters without
  gradients upset DDP. Outputs are unchanged.
- ``start_at_input=True`` (off by default; published: PyTorch's default initialisation) starts the
  decoder's last layer as the identity on the node's offset from its cluster, so the first
  prediction is the input moved with its clusters.
- ``cluster_edge_attr='row_normalised'`` (off by default) divides each row of S^T A_global S by
  its sum before it becomes the cluster edge feature (see the class's arguments for why).

Batches may mix graphs of different sizes in any node order (the published code needs equal
sizes): node-level work uses edge lists only; cluster-level work uses a padded [B, N_max, K]
assignment tensor and [B, K, K] matrices.
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
from scaleq.nn.layer_recompute import run_layers
from scaleq.nn.message_passing import EdgeLayout, check_edge_mlps, edge_sums, layout_chunk
from scaleq.nn.mlp import cat_features, mlp, small_init_, split_columns
from scaleq.nn.recompute import sum_over_edges
from scaleq.nn.scatter import scatter_mean, scatter_sum
from scaleq.nn.update_cap import cap_length

ClusterEdgeAttr = Literal["raw", "row_normalised"]
POOL_CHANNELS = 3  # [x - centre, dx from the external block, v]
UNPOOL_CHANNELS = 4  # [cluster displacement, x - cluster position, v - cluster velocity, dx]
OFFSET_CHANNEL = 1  # x - cluster position: with start_at_input the decoder starts by copying it
ASSIGN_WIDTH = 8  # the published assignment head: Linear(H, 8H)-Tanh-Linear(8H, K)
EMPTY_CLUSTER_MASS = 1e-5  # the published clamp of the column sums
EMMP_ROW_TENSORS = 16  # [E, H]-sized tensors one local edge costs the torch path (for kernel "auto")


def exact_matmul(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` in the inputs' own precision, also under bf16 autocast (which would otherwise run
    matmuls in bf16): coordinates, vectors and pooling weights stay fp32 (or fp64)."""
    with torch.autocast(device_type=a.device.type, enabled=False):
        return a @ b


def normalised_products(a: Tensor, b: Tensor) -> Tensor:
    """Invariants of two sets of vectors: a^T b, flattened and scaled to unit Frobenius norm.

    Shapes:
        a: [M, D, c], b: [M, D, c'] -> [M, c * c'] (row-major: entry (p, q) = a_p . b_q)
    """
    return F.normalize(exact_matmul(a.transpose(1, 2), b).flatten(1), dim=-1)


class EGHNEGNNLayer(nn.Module):
    """The EGNN layer of EGHN's published code (``EGNN_Layer`` with velocities):

        m_ij = phi_e(|x_i - x_j|^2, h_i, h_j, e_ij)                    (MLP ending in SiLU)
        x_i <- x_i + phi_v(h_i) v_i + mean_j (x_i - x_j) phi_x(m_ij)   (phi_x ends in Linear(H, 1) with bias)
        h_i <- phi_h(h_i, sum_j m_ij)                                   (no residual)

    v is the block's input velocity at every layer. Unlike EGNN's own layer (scaleq/models/egnn.py)
    the features have no residual connection, phi_e reads |x_i - x_j|^2 first, the coordinate head
    has a bias and PyTorch's default initialisation. The published +-100 clamp of each component
    of the coordinate update is not rotation-equivariant; ``update_cap`` (see
    :func:`cap_length`) bounds the update's length instead. The edge work runs in the shared
    message-passing block (scaleq.nn.message_passing), with ``edge_chunk`` and ``kernel`` as in EGNN.

    Args:
        hidden: width H of h and of the messages.
        edge_dim: width Fe of the invariant edge attributes.
        update_cap: largest length of a node's coordinate update in one layer (None: no cap).
        edge_chunk, kernel: options of the message-passing block.
    """

    def __init__(self, hidden: int, edge_dim: int, *, update_cap: float | None = None, edge_chunk: EdgeChunk = 0,
                 kernel: Kernel = "auto") -> None:
        super().__init__()
        self.update_cap = update_cap
        self.phi_e = mlp(1 + 2 * hidden + edge_dim, hidden, hidden, act_last=True)
        self.phi_x = mlp(hidden, hidden, 1)
        self.phi_v = mlp(hidden, hidden, 1)
        self.phi_h = mlp(2 * hidden, hidden, hidden)
        check_edge_mlps(self.phi_e, self.phi_x)
        self.edge_chunk, self.kernel = edge_chunk, kernel

    def forward(self, h: Tensor, pos: Tensor, vel: Tensor, layout: EdgeLayout) -> tuple[Tensor, Tensor]:
        """
        Shapes:
            h: [N, H], pos: [N, D], vel: [N, D] (the block's input velocity),
            layout: the receiver-sorted edges (j -> i) with attributes [E, Fe] -> (h [N, H], pos [N, D])
        """
        sums = edge_sums(self.phi_e, self.phi_x, h, pos, layout, edge_chunk=self.edge_chunk, kernel=self.kernel,
                         radial_first=True)
        force = sums.coord_sum / layout.degree(pos.dtype)  # [N, D] mean over incoming edges
        pos = pos + cap_length(self.phi_v(h).to(pos.dtype) * vel + force, self.update_cap)
        h = self.phi_h(cat_features([h, sums.message_sum])).to(h.dtype)
        return h, pos


class EGHNEGNN(nn.Module):
    """The published ``EGNN`` block of EGHN: a Linear(H, H) embedding, then L :class:`EGHNEGNNLayer`.

    Args:
        hidden: H. edge_dim: Fe. layers: L. gradient_checkpointing: checkpoint every k layers.
        update_cap: largest length of a coordinate update per layer (None: no cap).
        edge_chunk, kernel: options of the message-passing block.
    """

    def __init__(
        self, hidden: int, edge_dim: int, layers: int, gradient_checkpointing: int = 0, *,
        update_cap: float | None = None, edge_chunk: EdgeChunk = 0, kernel: Kernel = "auto",
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(hidden, hidden)
        self.layers = nn.ModuleList(
            EGHNEGNNLayer(hidden, edge_dim, update_cap=update_cap, edge_chunk=edge_chunk, kernel=kernel)
            for _ in range(layers)
        )
        self.gradient_checkpointing = gradient_checkpointing

    def forward(self, h: Tensor, pos: Tensor, vel: Tensor, edge_index: Tensor, edge_attr: Tensor) -> tuple[Tensor, Tensor]:
        """
        Shapes:
            h: [N, H], pos: [N, D], vel: [N, D], edge_index: [2, E] (j -> i), edge_attr: [E, Fe]
            -> (h [N, H], pos [N, D])
        """
        h = self.embed(h).to(pos.dtype)
        layout = EdgeLayout.build(edge_index, pos.shape[0], edge_attr)  # sorted once, shared by every layer
        steps = [functools.partial(_egnn_step, layer, vel=vel, layout=layout) for layer in self.layers]
        h, pos = run_layers(steps, (h, pos), self.gradient_checkpointing)
        return h, pos


class EMMPLayer(nn.Module):
    """Equivariant matrix message passing on ``channels`` vector channels (the published
    ``PoolingLayer`` with its ``EquivariantEdgeScalarNet``).

    The edge work runs through :func:`scaleq.nn.recompute.sum_over_edges` (``edge_chunk`` > 0:
    chunks of edges recomputed in backward, memory independent of the number of edges), with
    phi_m's first Linear split by input as in the message-passing block: (W_i h + b) and W_j h
    once per node, the invariants' and edge attributes' columns per edge.

    Args:
        hidden: width H of h and of the messages.
        channels: m, the number of vectors per node.
        edge_dim: width of the invariant edge attributes.
        update_vectors: False for a last layer, whose vectors nothing reads (Z is returned as is).
        edge_chunk: edges per chunk (0: all at once; "auto").
        kernel: "auto" chooses plain or chunked by memory as the message-passing block does;
            "torch" and "triton" (no fused kernel here) follow ``edge_chunk``.
    """

    def __init__(self, hidden: int, channels: int, edge_dim: int, *, update_vectors: bool = True,
                 edge_chunk: EdgeChunk = 0, kernel: Kernel = "auto") -> None:
        super().__init__()
        self.channels = channels
        self.phi_m = mlp(channels * channels + 2 * hidden + edge_dim, hidden, hidden, act_last=True)
        self.phi_mix = mlp(hidden, hidden, channels * channels) if update_vectors else None
        self.phi_h = mlp(2 * hidden, hidden, hidden)
        self.edge_chunk, self.kernel = edge_chunk, kernel

    def forward(self, h: Tensor, z: Tensor, layout: EdgeLayout) -> tuple[Tensor, Tensor]:
        """
        Shapes:
            h: [N, H], z: [N, D, m], layout: the receiver-sorted edges (j -> i) with attributes
            [E, Fe] -> (h [N, H], z [N, D, m])
        """
        hidden, invariants = h.shape[-1], self.channels * self.channels
        first = self.phi_m[0]
        # columns: [Z_j^T Z_i (m m), h_i (H), h_j (H), e (Fe)]
        w_inv, w_recv, w_src, w_attr = split_columns(first, (invariants, hidden, hidden, layout.edge_attr.shape[-1]))
        p_recv = F.linear(h, w_recv, first.bias)  # [N, H]
        p_src = F.linear(h, w_src)  # [N, H]
        params = [w_inv, w_attr, self.phi_m[2].weight, self.phi_m[2].bias]
        if self.phi_mix is not None:
            params += [self.phi_mix[0].weight, self.phi_mix[0].bias, self.phi_mix[2].weight, self.phi_mix[2].bias]
        # per edge: ~EMMP_ROW_TENSORS [E, H] activations and the [E, D, m] vectors
        chunk = layout_chunk(layout, self.kernel, self.edge_chunk, EMMP_ROW_TENSORS * hidden * h.element_size())
        sums = sum_over_edges(
            functools.partial(_emmp_edge_terms, channels=self.channels, message_dtype=h.dtype), layout,
            chunk, recv=(p_recv, z), src=(p_src, z), edge=(layout.edge_attr,), params=params,
        )
        if self.phi_mix is not None:
            z = z + sums[1] / layout.degree(z.dtype).unsqueeze(-1)  # mean_j Z_j H_ij
        h = h + self.phi_h(cat_features([h, sums[0]])).to(h.dtype)
        return h, z


def _emmp_edge_terms(
    recv: Sequence[Tensor], src: Sequence[Tensor], edge: Sequence[Tensor | None], params: Sequence[Tensor], *,
    channels: int, message_dtype: torch.dtype,
) -> tuple[Tensor, ...]:
    """EMMP's per-edge message m_ij and, when the layer mixes vectors, Z_j H_ij.

    Shapes:
        recv: (p_recv [E, H], z_i [E, D, m]), src: (p_src [E, H], z_j [E, D, m]), edge: (e [E, Fe],)
        -> (m [E, H], Z_j H_ij [E, D, m] when mixing)
    """
    (p_recv, z_i), (p_src, z_j), (edge_attr,) = recv, src, edge
    w_inv, w_e, w2, b2, *mix_params = params
    invariants = normalised_products(z_j, z_i)  # [E, m m]
    pre = p_recv + p_src.to(p_recv.dtype) + F.linear(invariants.to(w_inv.dtype), w_inv).to(p_recv.dtype)
    pre = pre + F.linear(edge_attr.to(w_e.dtype), w_e).to(pre.dtype)
    m = F.silu(F.linear(F.silu(pre), w2, b2))  # [E, H]
    if not mix_params:
        return (m.to(message_dtype),)
    wm1, bm1, wm2, bm2 = mix_params
    mix = F.linear(F.silu(F.linear(m, wm1, bm1)), wm2, bm2).to(z_j.dtype).view(-1, channels, channels)
    return m.to(message_dtype), exact_matmul(z_j, mix)  # [E, D, m (of Z_j)] @ [E, m, m]


class UnPoolLayer(nn.Module):
    """A node-wise equivariant matrix layer of E-UnPool (the published ``EquivariantScalarNet``,
    stacked as ``EGMN``): invariants of the node's vectors and its scalars give new scalars and a
    new vector, a combination of the vectors, which is appended to the set (the next layer sees it).

    Args:
        channels: vectors per node at this layer's input. scalars: width of its scalar input.
        hidden: H. last: the last layer returns its scalar input unchanged (nothing reads new
            scalars, and parameters without gradients upset DDP).
    """

    def __init__(self, channels: int, scalars: int, hidden: int, *, last: bool = False) -> None:
        super().__init__()
        self.phi = mlp(channels * channels + scalars, hidden, hidden, act_last=True)
        self.phi_w = mlp(hidden, hidden, channels)
        self.phi_s = None if last else mlp(hidden, hidden, hidden)

    def forward(self, s: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        """
        Shapes:
            s: [N, S], z: [N, D, c] -> (s [N, H] ([N, S] when last), z [N, D, c + 1])
        """
        u = self.phi(cat_features([normalised_products(z, z), s]))  # [N, H]
        vector = exact_matmul(z, self.phi_w(u).to(z.dtype).unsqueeze(-1))  # [N, D, 1]
        s = s if self.phi_s is None else self.phi_s(u).to(s.dtype)
        return s, torch.cat([z, vector], dim=-1)


class Clusters:
    """The soft assignment S of one batch: pooling to and unpooling from K clusters per graph.

    Nodes may come in any order (a permuted batch is still a batch): each node gets a slot
    batch_i * N_max + rank_i in a padded [B, N_max] layout; padded slots have zero assignment.
    """

    def __init__(self, s: Tensor, batch: Tensor, num_graphs: int) -> None:
        n = batch.shape[0]
        counts = torch.bincount(batch, minlength=num_graphs)
        order = torch.argsort(batch, stable=True)
        first = torch.cumsum(counts, 0) - counts
        rank = torch.empty_like(batch)
        rank[order] = torch.arange(n, device=batch.device) - first[batch[order]]
        self.num_graphs, self.max_nodes = num_graphs, int(counts.max())
        self.slot = batch * self.max_nodes + rank  # [N]
        self.s = s  # [N, K]
        self.dense_s = self.to_dense(s)  # [B, N_max, K]
        # column sums sum_i s_ik per graph; the clamp only matters for a cluster nobody joins
        self.mass = self.dense_s.sum(1).clamp_min(EMPTY_CLUSTER_MASS)  # [B, K]

    def to_dense(self, x: Tensor) -> Tensor:
        """Shapes: x [N, *] -> [B, N_max, *] (zeros in padded slots)."""
        out = x.new_zeros(self.num_graphs * self.max_nodes, *x.shape[1:]).index_copy(0, self.slot, x)
        return out.view(self.num_graphs, self.max_nodes, *x.shape[1:])

    def pool(self, x: Tensor) -> Tensor:
        """Assignment-weighted means (Eq. 9-10). Shapes: x [N, *] -> [B, K, *]."""
        dense = self.to_dense(x.flatten(1))  # [B, N_max, F]
        pooled = exact_matmul(self.dense_s.transpose(1, 2), dense) / self.mass.unsqueeze(-1)  # [B, K, F]
        return pooled.view(self.num_graphs, -1, *x.shape[1:])

    def unpool(self, y: Tensor) -> Tensor:
        """sum_k s_ik y_k (Eq. 12-13). Shapes: y [B, K, *] -> [N, *]."""
        dense = exact_matmul(self.dense_s, y.flatten(2))  # [B, N_max, F]
        return dense.flatten(0, 1).index_select(0, self.slot).view(-1, *y.shape[2:])

    def pooled_adjacency(self, edge_index: Tensor) -> Tensor:
        """S^T A S per graph, A[i, j] = 1 for each edge j -> i, without a dense N x N matrix.

        Shapes:
            edge_index: [2, E] -> [B, K, K]
        """
        source, target = edge_index
        a_s = scatter_sum(self.s.index_select(0, source), target, self.s.shape[0])  # (A S)_i = sum_{j -> i} s_j, [N, K]
        return exact_matmul(self.dense_s.transpose(1, 2), self.to_dense(a_s))


def complete_cluster_graph(num_graphs: int, clusters: int, device: torch.device) -> Tensor:
    """All K x K ordered pairs (k, l) of clusters within each graph, self-loops included, as the
    published code (which builds a mask for the self-loops and never applies it); clusters of
    graph b are b*K..b*K+K-1. Edge b K^2 + k K + l flows l -> k.

    Shapes: -> edge_index [2, B K^2] (j -> i)
    """
    k = torch.arange(clusters, device=device)
    target, source = torch.meshgrid(k, k, indexing="ij")  # [K, K]: row = target cluster
    offset = (torch.arange(num_graphs, device=device) * clusters).view(-1, 1, 1)
    return torch.stack([(offset + source).flatten(), (offset + target).flatten()])


class EGHN(nn.Module):
    """Encoder (external EGNN block + E-Pool), high-level EGNN block over clusters, decoder (E-UnPool).

    Args:
        in_node_features: width of ``batch.h``.
        in_edge_features: width of ``batch.edge_attr`` and of ``batch.local_attr`` (the same
            attributes, on the global and on the local edges).
        hidden: H.
        clusters: K, clusters per graph.
        interaction_layers: EGNN layers of the external (global) block and of the high level each.
        pooling_layers: EMMP layers inside E-Pool, on the local graph.
        decoder_layers: node-wise matrix layers of E-UnPool.
        start_at_input: start the decoder's output vector as x_i - sum_k s_ik X_k, so the first
            prediction is the input moved with its clusters (scaleq's option; off: the published
            default initialisation).
        cluster_edge_attr: 'raw' S^T A_global S entries on the cluster edges (published) or
            'row_normalised' (each row divided by its sum): on dense global graphs (a protein's
            10 A contacts) the raw entries reach thousands and, without the published clamp, the
            high-level coordinates blow up.
        update_cap: largest length of one EGNN layer's coordinate update, in the data's length
            units (None: no cap, the default, so the layer computes what the published one does
            wherever its +-100 clamp is idle). The published clamp is per component and not
            rotation-equivariant; a cap on the length is (see :func:`cap_length`).
        gradient_checkpointing: checkpoint every k layers of each stack (0: off).
        edge_chunk, kernel: options of the message-passing block of the EGNN layers (external and
            high-level blocks; see EGNN); ``edge_chunk`` also chunks the EMMP layers of E-Pool
            (which have no Triton kernel).
    """

    # what scaleq.models.build checks a config against before a run starts
    needs_local_graph: ClassVar[bool] = True
    supports_graph_parallel: ClassVar[bool] = False  # the pooling and the local graph are global per graph
    auxiliary_outputs: ClassVar[tuple[str, ...]] = ("assignments", "cluster_pos", "pooled_adjacency")

    @staticmethod
    def periodic_problem(options: dict[str, object]) -> str | None:
        """Why EGHN refuses periodic boxes (scaleq.models.build.check_model_fits): E-Pool's soft
        assignments give every cluster a share of every node, so its pooled position is a
        weighted mean over the whole box, and E-UnPool adds weighted sums of cluster positions.
        On a torus a mean of positions has no form that is linear, continuous and periodic (the
        circular mean of points spread over the box is set by noise), and the pooling's
        translation equivariance rests on exactly that linear mean (Eq. 9)."""
        return ("its pooling averages positions over soft clusters that span the whole box, and a mean of "
                "positions has no periodic form; set graph.periodic to false, or use egnn, fastegnn or dusego")

    def __init__(
        self,
        *,
        in_node_features: int,
        in_edge_features: int,
        hidden: int = 64,
        clusters: int = 5,
        interaction_layers: int = 4,
        pooling_layers: int = 4,
        decoder_layers: int = 2,
        start_at_input: bool = False,
        cluster_edge_attr: ClusterEdgeAttr = "raw",
        update_cap: float | None = None,
        gradient_checkpointing: int = 0,
        edge_chunk: EdgeChunk = 0,
        kernel: Kernel = "auto",
    ) -> None:
        super().__init__()
        if hidden < 1 or clusters < 1:
            raise ValueError(f"EGHN needs hidden >= 1 and clusters >= 1, got hidden={hidden}, clusters={clusters}")
        if cluster_edge_attr not in ("raw", "row_normalised"):
            raise ValueError(f"cluster_edge_attr must be 'raw' or 'row_normalised', got {cluster_edge_attr!r}")
        if min(interaction_layers, pooling_layers, decoder_layers) < 1:
            raise ValueError(
                "EGHN needs at least one layer in each block, got interaction_layers="
                f"{interaction_layers}, pooling_layers={pooling_layers}, decoder_layers={decoder_layers}"
            )
        check_block_options(edge_chunk, kernel)
        self.clusters = clusters
        self.cluster_edge_attr = cluster_edge_attr
        self.gradient_checkpointing = gradient_checkpointing
        self.embed = nn.Linear(in_node_features, hidden)
        block = {"edge_chunk": edge_chunk, "kernel": kernel}
        if update_cap is not None and not update_cap > 0:
            raise ValueError(f"update_cap must be > 0 or None, got {update_cap}")
        self.external = EGHNEGNN(hidden, in_edge_features, interaction_layers, gradient_checkpointing,
                                 update_cap=update_cap, **block)
        self.pooling = nn.ModuleList(
            EMMPLayer(hidden, POOL_CHANNELS, in_edge_features, update_vectors=i < pooling_layers - 1, **block)
            for i in range(pooling_layers)
        )
        self.assign = nn.Sequential(
            nn.Linear(hidden, ASSIGN_WIDTH * hidden), nn.Tanh(), nn.Linear(ASSIGN_WIDTH * hidden, clusters)
        )
        self.high = EGHNEGNN(hidden, 1, interaction_layers, gradient_checkpointing, update_cap=update_cap, **block)
        self.decoder = nn.ModuleList(
            UnPoolLayer(UNPOOL_CHANNELS + i, 2 * hidden if i == 0 else hidden, hidden, last=i == decoder_layers - 1)
            for i in range(decoder_layers)
        )
        if start_at_input:
            # The output vector starts as (x_i - sum_k s_ik X_k), so the prediction starts at
            # x_i + sum_k s_ik (X'_k - X_k): the input moved with its clusters.
            head = self.decoder[-1].phi_w[-1]
            with torch.no_grad():
                small_init_(head)
                head.bias.zero_()
                head.bias[OFFSET_CHANNEL] = 1.0

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        """
        Shapes:
            batch.h: [N, F], batch.pos: [N, D], batch.vel: [N, D], batch.batch: [N],
            batch.edge_index: [2, E] (global graph), batch.edge_attr: [E, Fe],
            batch.local_index: [2, E_local] (local graph), batch.local_attr: [E_local, Fe]
            -> {"pos": [N, D], "assignments": [N, K], "cluster_pos": [B, K, D] (pooled input
                positions), "pooled_adjacency": [B, K, K] (S^T A_local S)}
        """
        if getattr(batch, "edge_shift", None) is not None:
            raise ValueError(f"EGHN on a periodic graph (batch.edge_shift): {self.periodic_problem({})}")
        local_index = getattr(batch, "local_index", None)
        local_attr = getattr(batch, "local_attr", None)
        if local_index is None or local_attr is None:
            raise ValueError(
                "EGHN needs a local graph in batch.local_index and its attributes in batch.local_attr: "
                "set graph.local to 'bonds', 'knn' or 'radius'"
            )
        every = self.gradient_checkpointing
        pos, vel, node_batch = batch.pos, batch.vel, batch.batch
        num_graphs = int(batch.num_graphs)
        h = self.embed(batch.h).to(pos.dtype)  # the feature stream keeps coordinate precision

        # encoder, external block: EGNN on the global graph
        h, moved = self.external(h, pos, vel, batch.edge_index, batch.edge_attr)
        dx = moved - pos  # [N, D]

        # E-Pool: EMMP on the local graph, then soft assignments
        graph_centre = scatter_mean(pos, node_batch, num_graphs)  # [B, D]
        z = torch.stack([pos - graph_centre.index_select(0, node_batch), dx, vel], dim=-1)  # [N, D, 3]
        local_layout = EdgeLayout.build(local_index, pos.shape[0], local_attr)  # shared by the EMMP layers
        steps = [functools.partial(_emmp_step, layer, layout=local_layout) for layer in self.pooling]
        h_pool, _ = run_layers(steps, (h, z), every)
        logits = self.assign(h_pool)  # [N, K]; the softmax runs in fp32 at least (bf16 logits)
        s = torch.softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1).to(pos.dtype)
        clusters = Clusters(s, node_batch, num_graphs)
        cluster_pos = clusters.pool(pos)  # [B, K, D]: pooled INPUT positions
        cluster_vel = clusters.pool(vel)  # [B, K, D]
        cluster_h = clusters.pool(h)  # [B, K, H]: the encoder's features

        # high level: EGNN over all K x K cluster pairs of each graph, edge feature (S^T A_global S)[k, l]
        k = self.clusters
        high_index = complete_cluster_graph(num_graphs, k, pos.device)
        pooled_global = clusters.pooled_adjacency(batch.edge_index)  # [B, K, K]
        if self.cluster_edge_attr == "row_normalised":
            pooled_global = F.normalize(pooled_global, p=1, dim=-1)
        high_attr = pooled_global.reshape(-1, 1)  # [B K K, 1], in the edge order of high_index
        h_high, pos_high = self.high(cluster_h.flatten(0, 1), cluster_pos.flatten(0, 1), cluster_vel.flatten(0, 1),
                                     high_index, high_attr.to(pos.dtype))
        h_high = h_high.view(num_graphs, k, -1)
        shift_high = pos_high.view(num_graphs, k, -1) - cluster_pos  # [B, K, D]

        # decoder, E-UnPool: unpooled cluster motion plus a correction from the node's own vectors
        node_shift, node_cluster_pos = clusters.unpool(shift_high), clusters.unpool(cluster_pos)
        z_out = torch.stack([node_shift, pos - node_cluster_pos, vel - clusters.unpool(cluster_vel), dx], dim=-1)
        scalars = torch.cat([h, clusters.unpool(h_high)], dim=-1)  # [N, 2H]
        steps = [functools.partial(_unpool_step, layer) for layer in self.decoder]
        _, z_out = run_layers(steps, (scalars, z_out), every)
        return {
            "pos": node_cluster_pos + node_shift + z_out[..., -1],
            "assignments": s,
            "cluster_pos": cluster_pos,
            "pooled_adjacency": clusters.pooled_adjacency(local_index),
        }


def _egnn_step(layer: EGHNEGNNLayer, h: Tensor, pos: Tensor, *, vel: Tensor, layout: EdgeLayout) -> tuple[Tensor, Tensor]:
    return layer(h, pos, vel, layout)


def _emmp_step(layer: EMMPLayer, h: Tensor, z: Tensor, *, layout: EdgeLayout) -> tuple[Tensor, Tensor]:
    return layer(h, z, layout)


def _unpool_step(layer: UnPoolLayer, s: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
    return layer(s, z)
