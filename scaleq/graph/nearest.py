"""The nearest k sources of every target: how a capped radius graph chooses, on every backend
(torch-cluster's refinement, the cell list's torch and Triton paths), so that they all keep the
same edges whatever the order in which they found them."""

from __future__ import annotations

import torch
from torch import Tensor


def keep_nearest(edge_index: Tensor, pos: Tensor, max_num_neighbors: int, edge_shift: Tensor | None = None) -> Tensor:
    """Which edges to keep so that no target has more than ``max_num_neighbors``: all edges of
    targets with at most that many, and for the others their nearest sources. Ties are broken by
    the source's position (lexicographically, axis 0 first), which relabelling the nodes does not
    change; only sources at the very same position fall back to their index. Kept edges stay in
    their input order.

    Shapes:
        edge_index: [2, E], pos: [N, D], edge_shift: [E, D] or None -> [E] bool
    """
    source, target = edge_index
    degree = torch.bincount(target, minlength=pos.shape[0])
    capped = degree[target] > max_num_neighbors
    ids = capped.nonzero().squeeze(1)
    s, t = source[ids], target[ids]
    diff = pos[t] - pos[s]
    if edge_shift is not None:
        diff = diff + edge_shift[ids]
    d2 = diff[:, 0] * diff[:, 0]
    for axis in range(1, pos.shape[1]):
        d2 = d2 + diff[:, axis] * diff[:, axis]
    # Only edges no longer than their target's k-th shortest can be kept (ties at that length
    # included): two sorts find that length, and the exact order below sorts only those edges.
    within = _within_kth_length(t, d2, pos.shape[0], max_num_neighbors)
    ids, s, t, d2 = ids[within], s[within], t[within], d2[within]
    # lexicographic sort by (target, d2, source position axis 0, 1, ..., source index): stable
    # sorts from the least significant key up
    perm = torch.argsort(s, stable=True)
    for axis in reversed(range(pos.shape[1])):
        perm = perm[torch.argsort(pos[s[perm], axis], stable=True)]
    perm = perm[torch.argsort(d2[perm], stable=True)]
    perm = perm[torch.argsort(t[perm], stable=True)]
    t_sorted = t[perm]
    per_target = torch.bincount(t_sorted, minlength=pos.shape[0])
    rank = torch.arange(t_sorted.numel(), device=pos.device) - (torch.cumsum(per_target, 0) - per_target)[t_sorted]
    keep = ~capped
    keep[ids[perm[rank < max_num_neighbors]]] = True
    return keep


def _within_kth_length(target: Tensor, d2: Tensor, num_nodes: int, k: int) -> Tensor:
    """Which edges are no longer than the k-th shortest edge of their target (all of a target
    with at most k). Shapes: target [M], d2 [M] -> [M] bool."""
    # one sort by (target, length): a non-negative float32's bits order as its value does, and
    # rounding to float32 keeps the order (ties may grow, never shrink: a superset is kept)
    length = d2.float().view(torch.int32).long()
    order = torch.argsort(target * 2**32 + length)  # equal keys in any order: only the k-th length is read
    per_target = torch.bincount(target, minlength=num_nodes)
    t_sorted = target[order]
    rank = torch.arange(order.numel(), device=d2.device) - (torch.cumsum(per_target, 0) - per_target)[t_sorted]
    at_k = rank == k - 1
    kth = torch.full((num_nodes,), torch.iinfo(torch.int64).max, dtype=torch.long, device=d2.device)
    kth[t_sorted[at_k]] = length[order[at_k]]
    return length <= kth[target]
