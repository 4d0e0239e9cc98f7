"""EGHN: equivariant graph hierarchy network (Han et al., NeurIPS 2022): EMMP, E-Pool, E-UnPool.

One level of hierarchy, as the published model:

    encoder   external EGNN layers on the distance-based global graph (batch.edge_index)
              E-Pool: EMMP layers on the LOCAL graph (batch.local_index: bonds, k-nearest or radius)
                      over the vector channels Z_i = [x_i - centre, dx_i, v_i], then soft
                      assignments s_i = softmax(MLP(h_i)) over K clusters
    high      EGNN layers over the K clusters of each graph, fully connected, edge feature =
              the row-normalised pooled global adjacency S^T A_global S
    decoder   E-UnPool: each node gets sum_k s_ik (cluster quantities) plus an equivariant
              correction from its own vectors (node-wise matrix layers)

EMMP (Eq. 3-6): Zhat_ij = [Z_i, Z_j] (D x 2m, translation-invariant because the position channel
is taken relative to the graph's centre), invariants G_ij = Zhat^T Zhat / ||Zhat^T Zhat||_F, an
MLP of (G_ij, h_i, h_j, e_ij) gives a message m_ij and the mixing matrix H_ij (2m x m);
Z_i <- Z_i + mean_j Zhat_ij H_ij, h_i <- h_i + phi_h(h_i, sum_j m_ij). The paper writes a sum for
the vector update; the mean (as the published code and EGNN) keeps the update's scale independent
of the degree.

Cluster quantities are assignment-weighted means per graph, divided by the column sum
sum_i s_ik: this normalisation is what keeps pooled positions translation-equivariant (Eq. 9).

Batches may mix graphs of different sizes in any node order: node-level work uses edge lists
only; cluster-level work uses a padded [B, N_max, K] assignment tensor and [B, K, K] matrices.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.data import Batch

from scaleq.models.egnn import EGNNLayer
from scaleq.nn.checkpoint import run_layers
from scaleq.nn.mlp import cat_features, mlp, small_init_
from scaleq.nn.scatter import scatter_mean, scatter_sum

POOL_CHANNELS = 3  # [x - centre, dx from the external layers, v]
UNPOOL_CHANNELS = 4  # [cluster displacement, x - cluster position, v - cluster velocity, dx]
OFFSET_CHANNEL = 1  # x - cluster position: the decoder's last layer starts by copying it


def exact_matmul(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` in the inputs' own precision, also under bf16 autocast (which would otherwise run
    matmuls in bf16): coordinates, vectors and pooling weights stay fp32 (or fp64)."""
    with torch.autocast(device_type=a.device.type, enabled=False):
        return a @ b


def normalised_gram(z: Tensor) -> Tensor:
    """Invariants of a set of vectors: the Gram matrix, flattened and scaled to unit Frobenius norm.

    Shapes:
        z: [M, D, c] -> [M, c * c]
    """
    gram = exact_matmul(z.transpose(1, 2), z)  # [M, c, c]
    return F.normalize(gram.flatten(1), dim=-1)


class EMMPLayer(nn.Module):
    """Equivariant matrix message passing (Eq. 3-6) on ``channels`` vector channels.

    Args:
        hidden: width H of h and of the messages.
        channels: m, the number of vectors per node.
        edge_dim: width of the invariant edge attributes.
    """

    def __init__(self, hidden: int, channels: int, edge_dim: int) -> None:
        super().__init__()
        self.channels = channels
        pair = 2 * channels
        self.phi_m = mlp(pair * pair + 2 * hidden + edge_dim, hidden, hidden, act_last=True)
        # H_ij starts near zero, so a deep stack starts near the identity on vectors (as EGNN's phi_x)
        self.phi_mix = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), small_init_(nn.Linear(hidden, pair * channels, bias=False)))
        self.phi_h = mlp(2 * hidden, hidden, hidden)

    def forward(self, h: Tensor, z: Tensor, edge_index: Tensor, edge_attr: Tensor) -> tuple[Tensor, Tensor]:
        """
        Shapes:
            h: [N, H], z: [N, D, m], edge_index: [2, E] (j -> i), edge_attr: [E, Fe]
            -> (h [N, H], z [N, D, m])
        """
        source, target = edge_index
        z_hat = torch.cat([z[target], z[source]], dim=-1)  # [E, D, 2m] = [Z_i, Z_j]
        m = self.phi_m(cat_features([h[target], h[source], edge_attr, normalised_gram(z_hat)]))  # [E, H]
        mix = self.phi_mix(m).to(z.dtype).view(-1, 2 * self.channels, self.channels)  # [E, 2m, m]
        z = z + scatter_mean(exact_matmul(z_hat, mix), target, z.shape[0])  # M_ij = Zhat_ij H_ij, [E, D, m]
        aggregated = scatter_sum(m.to(h.dtype), target, h.shape[0])  # [N, H]
        h = h + self.phi_h(cat_features([h, aggregated])).to(h.dtype)
        return h, z


class UnPoolLayer(nn.Module):
    """A node-wise equivariant matrix layer of E-UnPool (Eq. 14-15): invariants of the node's
    vectors and its scalars give new scalars and a new vector, a combination of the vectors,
    which is appended to the set (the next layer sees it).

    Args:
        channels: vectors per node at this layer's input. scalars: width of its scalar input.
        hidden: H. last: the last layer returns its scalar input unchanged (nothing reads new
            scalars, and parameters without gradients upset DDP).
    """

    def __init__(self, channels: int, scalars: int, hidden: int, *, last: bool = False) -> None:
        super().__init__()
        self.phi = mlp(channels * channels + scalars, hidden, hidden, act_last=True)
        self.phi_w = mlp(hidden, hidden, channels)
        small_init_(self.phi_w[-1])
        nn.init.zeros_(self.phi_w[-1].bias)
        self.phi_s = None if last else mlp(hidden, hidden, hidden)

    def forward(self, s: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        """
        Shapes:
            s: [N, S], z: [N, D, c] -> (s [N, H] ([N, S] when last), z [N, D, c + 1])
        """
        u = self.phi(cat_features([s, normalised_gram(z)]))  # [N, H]
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
        self.mass = self.dense_s.sum(1).clamp_min(1e-6)  # [B, K]

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
        return dense.flatten(0, 1)[self.slot].view(-1, *y.shape[2:])

    def pooled_adjacency(self, edge_index: Tensor) -> Tensor:
        """S^T A S per graph, A[i, j] = 1 for each edge j -> i, without a dense N x N matrix.

        Shapes:
            edge_index: [2, E] -> [B, K, K]
        """
        source, target = edge_index
        a_s = scatter_sum(self.s[source], target, self.s.shape[0])  # (A S)_i = sum_{j -> i} s_j, [N, K]
        return exact_matmul(self.dense_s.transpose(1, 2), self.to_dense(a_s))


def complete_cluster_graph(num_graphs: int, clusters: int, device: torch.device) -> Tensor:
    """All ordered pairs k != l of clusters within each graph; clusters of graph b are b*K..b*K+K-1.

    Shapes: -> edge_index [2, B K (K - 1)] (j -> i)
    """
    k = torch.arange(clusters, device=device)
    target, source = torch.meshgrid(k, k, indexing="ij")
    keep = target != source
    offset = (torch.arange(num_graphs, device=device) * clusters).unsqueeze(1)
    return torch.stack([(offset + source[keep]).flatten(), (offset + target[keep]).flatten()])


class EGHN(nn.Module):
    """Encoder (external EGNN + E-Pool), high-level EGNN over clusters, decoder (E-UnPool).

    Args:
        in_node_features: width of ``batch.h``.
        in_edge_features: width of ``batch.edge_attr`` (the global graph's attributes).
        hidden: H.
        clusters: K, clusters per graph.
        interaction_layers: EGNN layers of the external (global) block and of the high level each.
        pooling_layers: EMMP layers inside E-Pool, on the local graph.
        decoder_layers: node-wise matrix layers of E-UnPool.
        gradient_checkpointing: checkpoint every k layers of each stack (0: off).
    """

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
        gradient_checkpointing: int = 0,
    ) -> None:
        super().__init__()
        if hidden < 1 or clusters < 1:
            raise ValueError(f"EGHN needs hidden >= 1 and clusters >= 1, got hidden={hidden}, clusters={clusters}")
        if min(interaction_layers, pooling_layers, decoder_layers) < 1:
            raise ValueError(
                "EGHN needs at least one layer in each block, got interaction_layers="
                f"{interaction_layers}, pooling_layers={pooling_layers}, decoder_layers={decoder_layers}"
            )
        self.clusters = clusters
        self.gradient_checkpointing = gradient_checkpointing
        self.embed = nn.Linear(in_node_features, hidden)
        self.external = nn.ModuleList(EGNNLayer(hidden, in_edge_features) for _ in range(interaction_layers))
        # local edge attribute: the squared edge length in the input frame
        self.pooling = nn.ModuleList(EMMPLayer(hidden, POOL_CHANNELS, 1) for _ in range(pooling_layers))
        self.assign = mlp(hidden, hidden, clusters)
        self.high = nn.ModuleList(EGNNLayer(hidden, 1) for _ in range(interaction_layers))
        self.decoder = nn.ModuleList(
            UnPoolLayer(UNPOOL_CHANNELS + i, 2 * hidden if i == 0 else hidden, hidden, last=i == decoder_layers - 1)
            for i in range(decoder_layers)
        )
        # The decoder's output vector starts as (x_i - sum_k s_ik X_k), so the prediction starts at
        # x_i + sum_k s_ik (X'_k - X_k): the input moved with its clusters, not the cluster centre.
        with torch.no_grad():
            self.decoder[-1].phi_w[-1].bias[OFFSET_CHANNEL] = 1.0

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        """
        Shapes:
            batch.h: [N, F], batch.pos: [N, D], batch.vel: [N, D], batch.batch: [N],
            batch.edge_index: [2, E] (global graph), batch.edge_attr: [E, Fe],
            batch.local_index: [2, E_local] (local graph)
            -> {"pos": [N, D], "assignments": [N, K], "cluster_pos": [B, K, D] (pooled input
                positions), "pooled_adjacency": [B, K, K] (S^T A_local S)}
        """
        local_index = getattr(batch, "local_index", None)
        if local_index is None:
            raise ValueError(
                "EGHN needs a local graph in batch.local_index: set graph.local to 'bonds', 'knn' or 'radius'"
            )
        every = self.gradient_checkpointing
        pos, vel, node_batch = batch.pos, batch.vel, batch.batch
        num_graphs = int(batch.num_graphs)
        h = self.embed(batch.h).to(pos.dtype)  # the residual stream keeps coordinate precision

        # encoder, external block: EGNN on the global graph
        steps = [functools.partial(_egnn_step, layer, vel=vel, edge_index=batch.edge_index, edge_attr=batch.edge_attr)
                 for layer in self.external]
        h, moved = run_layers(steps, (h, pos), every)
        dx = moved - pos  # [N, D]

        # E-Pool: EMMP on the local graph, then soft assignments
        graph_centre = scatter_mean(pos, node_batch, num_graphs)  # [B, D]
        z = torch.stack([pos - graph_centre[node_batch], dx, vel], dim=-1)  # [N, D, 3]
        source, target = local_index
        local_attr = (pos[target] - pos[source]).pow(2).sum(-1, keepdim=True)  # [E_local, 1]
        steps = [functools.partial(_emmp_step, layer, edge_index=local_index, edge_attr=local_attr) for layer in self.pooling]
        h_pool, z = run_layers(steps, (h, z), every)
        logits = self.assign(h_pool)  # [N, K]; the softmax runs in fp32 at least (bf16 logits)
        s = torch.softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1).to(pos.dtype)
        clusters = Clusters(s, node_batch, num_graphs)
        z_high = clusters.pool(z)  # [B, K, D, 3]; weights sum to 1, so the centre can be added after
        cluster_pos = z_high[..., 0] + graph_centre.unsqueeze(1)  # [B, K, D]
        cluster_vel = z_high[..., 2]  # [B, K, D]
        cluster_h = clusters.pool(h)  # [B, K, H]: the pooling block's input features (Eq. 10)

        # high level: EGNN over the K clusters of each graph, edge feature = rownorm(S^T A_global S)
        k = self.clusters
        high_index = complete_cluster_graph(num_graphs, k, pos.device)
        global_high = F.normalize(clusters.pooled_adjacency(batch.edge_index), p=1, dim=-1)  # [B, K, K]
        high_attr = global_high.flatten(0, 1)  # [B K, K]: row = target cluster
        high_attr = high_attr[high_index[1], high_index[0] % k].unsqueeze(-1)  # [B K (K-1), 1]
        flat = (cluster_h.flatten(0, 1), cluster_pos.flatten(0, 1))
        steps = [functools.partial(_egnn_step, layer, vel=cluster_vel.flatten(0, 1), edge_index=high_index,
                                   edge_attr=high_attr) for layer in self.high]
        h_high, pos_high = run_layers(steps, flat, every)
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


def _egnn_step(layer: EGNNLayer, h: Tensor, pos: Tensor, *, vel: Tensor, edge_index: Tensor, edge_attr: Tensor) -> tuple[Tensor, Tensor]:
    return layer(h, pos, vel, edge_index, edge_attr)


def _emmp_step(layer: EMMPLayer, h: Tensor, z: Tensor, *, edge_index: Tensor, edge_attr: Tensor) -> tuple[Tensor, Tensor]:
    return layer(h, z, edge_index, edge_attr)


def _unpool_step(layer: UnPoolLayer, s: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
    return layer(s, z)
