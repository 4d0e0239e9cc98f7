"""Training losses. The reported metric is always the plain position MSE (mean over nodes and axes).

The loss is a weighted sum of named parts, listed once in :data:`scaleq.loss_terms.LOSS_TERMS`: the trainer logs
each part that is on as ``train_<name>`` (CSV, TensorBoard, the epoch line), so a total is always
explained by its parts. FastEGNN's MMD part can be negative (see :func:`mmd_virtual`), and so can
the total.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.data import Batch

from scaleq.config import LossConfig
from scaleq.loss_terms import LOSS_PARTS, LOSS_TERMS
from scaleq.nn.periodic import minimum_image, periodic_box
from scaleq.nn.scatter import rank_within_groups, scatter_sum


def term_weights(config: LossConfig) -> dict[str, float]:
    """Each part's weight in the total (0: the part is off)."""
    return {t.name: 1.0 if t.weight_key is None else float(getattr(config, t.weight_key)) for t in LOSS_TERMS}


def explain_total(parts: dict[str, float], config: LossConfig) -> str:
    """The total as the sum of its parts that are on, e.g. ``mse 0.00120 + 0.01 x mmd -0.6560``."""
    weights = term_weights(config)
    terms = []
    for name in LOSS_PARTS:
        if weights[name] > 0 and name in parts:
            scale = "" if weights[name] == 1.0 else f"{weights[name]:g} x "
            terms.append(f"{scale}{name} {parts[name]:.5g}")
    return " + ".join(terms)


def squared_error_sum(pred: Tensor, target: Tensor) -> Tensor:
    """Sum of squared coordinate errors, in fp32 at least. Shapes: [N, D], [N, D] -> []."""
    diff = pred.float() - target.float() if pred.dtype != target.dtype else pred - target
    return diff.pow(2).sum()


def position_mse(pred: Tensor, target: Tensor) -> Tensor:
    """Mean over nodes and axes, as the papers report. Shapes: [N, D], [N, D] -> []."""
    return squared_error_sum(pred, target) / target.numel()


def sample_per_graph(batch: Tensor, num_graphs: int, count: int, generator: torch.Generator | None = None) -> Tensor:
    """A uniformly random subset of min(count, n_b) nodes of each graph b, without replacement.

    Shapes: batch [N] -> mask [N] bool
    """
    key = torch.rand(batch.shape[0], generator=generator, device=batch.device)
    return rank_within_groups(key, batch, num_graphs) < count


def kernel(a: Tensor, b: Tensor, sigma: float, kind: Literal["plain", "squared"], length: Tensor | None = None) -> Tensor:
    """exp(-d / (2 sigma^2)) with d = |a - b| ('plain', FastEGNN's code) or |a - b|^2 ('squared',
    a Gaussian kernel). The plain distance has a zero-safe gradient (k(z_c, z_c) sits at d = 0).
    ``length``: periodic box sides, making a - b a minimum image.

    Shapes: a [M, K, D], b [M, K, D], length [M, K, D] (broadcastable) -> [M, K]
    """
    diff = a - b if length is None else minimum_image(a - b, length)
    d2 = diff.pow(2).sum(-1)
    if kind == "plain":
        positive = d2 > 0
        d2 = torch.where(positive, d2.where(positive, torch.ones_like(d2)).sqrt(), torch.zeros_like(d2))
    return torch.exp(-d2 / (2 * sigma**2))


def mmd_virtual(
    pos: Tensor, virtual_pos: Tensor, batch: Tensor, num_graphs: int, *, sigma: float,
    kind: Literal["plain", "squared"] = "plain", samples_per_virtual: int = 3, generator: torch.Generator | None = None,
    halo: Any = None, box: Tensor | None = None,
) -> Tensor:
    """FastEGNN's MMD term, per graph then averaged over graphs, as its published code computes it:

        MMD_b = mean_{c, c'} k(z_c, z_c') - 2 mean_{s, c} k(x_s, z_c)

    with x_s a random sample of min(samples_per_virtual * C, n_b) PREDICTED positions of graph
    b. It is the biased (V-statistic: the diagonal k(z_c, z_c) = 1 is kept) estimate of the
    squared MMD between the sampled positions and the virtual nodes WITHOUT its third term
    mean_{s, s'} k(x_s, x_s'), which lies in (0, 1]. So the value is not a distance: it lies in
    [-1, 1] and is negative once the virtual nodes sit among the real ones, which is what
    training drives it to; MSE + lambda MMD can then be negative. The paper prints the cross
    term with a factor 1 and over all N nodes; we follow the code, whose numbers the paper reports.
    Graphs may have different sizes; nodes need not be sorted by graph. Computed in fp32 at least.

    With ``halo`` (graph parallelism: ``pos`` and ``batch`` are this rank's nodes, ``virtual_pos``
    the same on every rank) the sample is the one a single device draws (the same random numbers,
    one per node of the whole batch) and the result is this rank's SHARE: its sampled nodes'
    cross terms plus 1/R of the virtual term, so that the shares sum to the MMD over the group.

    With ``box`` (periodic boxes) every difference is a minimum image.

    Shapes:
        pos: [N, D], virtual_pos: [B * C, D] (graph-major), batch: [N], box: [B, D, 2] -> []
    """
    dtype = torch.promote_types(pos.dtype, torch.float32)
    pos, virtual_pos = pos.to(dtype), virtual_pos.to(dtype)
    z = virtual_pos.view(num_graphs, -1, virtual_pos.shape[-1])  # [B, C, D]
    c = z.shape[1]
    length = None if box is None else (box[..., 1] - box[..., 0]).to(dtype)  # [B, D]
    virtual_term = kernel(z[:, :, None], z[:, None], sigma, kind, None if length is None else length[:, None, None]).mean((1, 2))  # [B]
    if halo is None:
        chosen = sample_per_graph(batch, num_graphs, samples_per_virtual * c, generator)
        sampled = torch.bincount(batch[chosen], minlength=num_graphs)
    else:  # draw over the whole batch, keep the owned nodes' part
        chosen_anywhere = sample_per_graph(halo.global_batch, num_graphs, samples_per_virtual * c, generator)
        sampled = torch.bincount(halo.global_batch[chosen_anywhere], minlength=num_graphs)
        chosen = chosen_anywhere[halo.global_id]
        virtual_term = virtual_term / halo.num_ranks
    graph = batch[chosen]
    cross = kernel(pos[chosen][:, None], z[graph], sigma, kind, None if length is None else length[graph][:, None]).sum(1)  # [M]
    cross_term = scatter_sum(cross, graph, num_graphs) / (sampled.clamp_min(1).to(dtype) * c)  # [B]
    return (virtual_term - 2 * cross_term).mean()


def connectivity_loss(pooled_adjacency: Tensor) -> Tensor:
    """EGHN's connectivity loss: || rownorm(S^T A_local S) - I ||_F per graph, averaged over graphs.

    Rows are scaled to unit L2 norm (as the published code; the paper only says "row-wise
    normalisation"); the loss is smallest when every cluster's local edges stay inside it.

    Shapes:
        pooled_adjacency: [B, K, K] -> []
    """
    rows = F.normalize(pooled_adjacency.to(torch.promote_types(pooled_adjacency.dtype, torch.float32)), p=2, dim=-1)
    eye = torch.eye(rows.shape[-1], dtype=rows.dtype, device=rows.device)
    return torch.linalg.matrix_norm(rows - eye, ord="fro").mean()


def training_loss(output: dict[str, Tensor], batch: Batch, config: LossConfig) -> tuple[Tensor, dict[str, Tensor]]:
    """Total loss and its named parts (each detached for logging): the position MSE, plus
    ``mmd_weight`` times :func:`mmd_virtual` (FastEGNN) and ``connectivity_weight`` times
    :func:`connectivity_loss` (EGHN) when those weights are positive.

    Under graph parallelism (``batch.halo``; each rank holds its own nodes of every graph) the
    MSE is over all nodes of the group and the returned loss's VALUE (and every part) is the
    group's total, the same on every rank, while its GRADIENT is that of this rank's share; the
    shares' gradients sum to the single-device gradient (the engine scales for the average over
    data-parallel ranks).

    Shapes:
        output["pos"]: [N, D], batch.target: [N, D], output["virtual_pos"]: [B * C, D] (with
        mmd_weight > 0), output["pooled_adjacency"]: [B, K, K] (with connectivity_weight > 0) -> loss []
    """
    halo = getattr(batch, "halo", None)
    if halo is None:
        mse = position_mse(output["pos"], batch.target)
    else:
        count = halo.sum_over_ranks(torch.tensor([float(batch.target.numel())], dtype=torch.float64, device=batch.target.device))
        squared = squared_error_sum(output["pos"], batch.target)
        mse = squared / count[0].to(squared.dtype)
    loss, parts = mse, {"mse": mse.detach()}
    if config.mmd_weight > 0:
        if "virtual_pos" not in output:
            raise ValueError(
                f"loss.mmd_weight = {config.mmd_weight} needs a model with virtual nodes (e.g. fastegnn); this model "
                f"returns only {sorted(output)}: set loss.mmd_weight to 0"
            )
        mmd = mmd_virtual(
            output["pos"], output["virtual_pos"], batch.batch, int(batch.num_graphs), sigma=config.mmd_sigma,
            kind=config.mmd_kernel, samples_per_virtual=config.mmd_samples_per_virtual, halo=halo,
            box=periodic_box(batch),
        )
        loss = loss + config.mmd_weight * mmd
        parts["mmd"] = mmd.detach()
    if config.connectivity_weight > 0:
        if "pooled_adjacency" not in output:
            raise ValueError(
                f"loss.connectivity_weight = {config.connectivity_weight} needs a model that returns "
                f"'pooled_adjacency' (e.g. eghn); this model returns only {sorted(output)}"
            )
        if halo is not None:
            raise ValueError("loss.connectivity_weight (EGHN) is not supported under graph parallelism")
        connectivity = connectivity_loss(output["pooled_adjacency"])
        loss = loss + config.connectivity_weight * connectivity
        parts["connectivity"] = connectivity.detach()
    if halo is not None:  # shares -> the group's totals, as values only
        names = list(parts)
        totals = halo.sum_over_ranks(torch.stack([loss.detach(), *(parts[k] for k in names)]).to(loss.dtype))
        parts = {k: totals[i + 1] for i, k in enumerate(names)}
        loss = loss + (totals[0] - loss).detach()
    return loss, parts
