"""Radius graphs in O(N) with a cell list: batched, any D, optionally periodic, on CPU and CUDA.

Each graph's particles are binned into cells of side >= r (per graph and axis), the particles are
sorted by (graph, cell), and every particle compares itself only with the particles of the 3^D cells
around its own. Cells are found by binary search among the OCCUPIED cells, so clustered points with
a huge, mostly empty bounding box cost no memory.

Exact: the edges are every ordered pair (j, i), i != j, of one graph with squared distance < r^2
computed in the coordinates' dtype as ``sum_d (x_i,d - x_j,d)^2`` (left to right), the same strict
``<`` as torch-cluster; duplicate positions are neighbours. Edges come out sorted by target i
(within a target: by neighbouring cell, then by slot).

Periodic boxes (``box`` [B, D, 2], lower and upper corner per graph): distances are minimum-image
distances, and each pair appears at most once, through its nearest image; ``edge_shift`` [E, D] is
the vector to add to ``pos[i] - pos[j]`` to get that image's difference. Where r exceeds half a box
side, further images of a neighbour would also lie within r: they are NOT added (one edge per pair,
as the model's ``x_i - x_j`` needs); a box side shorter than 2 r therefore means a graph without
those extra images, which is what minimum-image codes do. Axes too short for three cells use one or
two cells, so the search stays exact for any r.

Two implementations of the pair search share the binning: a vectorised torch one (candidate pairs
processed in chunks of bounded size) and a Triton kernel (count, exclusive scan, fill; in
``scaleq/data/cell_list_kernels.py``) used on CUDA when Triton is installed. Both visit candidates
in the same order and produce identical output (bit for bit in Triton's interpreter; compiled, the
kernel's sum over axes may round differently in the last bit, which can only move pairs at
distance r within rounding).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from scaleq.data.cell_table import CellTable, build_cell_table, check_box_sides
from scaleq.triton_status import triton_status

# Candidate pairs held at once by the torch path (each costs ~80 bytes of temporaries).
DEFAULT_CHUNK_PAIRS = {"cpu": 1 << 21, "cuda": 1 << 25}

PairSearch = Literal["auto", "torch", "triton"]


@dataclass(frozen=True)
class RadiusEdges:
    """A radius graph: ``edge_index`` [2, E] (j -> i, sorted by target), ``edge_shift`` [E, D] or
    None (non-periodic), and ``num_capped``: how many nodes had more than ``max_num_neighbors``
    neighbours and were cut to their nearest ones (0 when no cap was given)."""

    edge_index: Tensor
    edge_shift: Tensor | None
    num_capped: int


def _check_inputs(pos: Tensor, radius: float, batch: Tensor, num_graphs: int, box: Tensor | None) -> None:
    if pos.dim() != 2 or pos.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"cell list: pos must be a float32 or float64 [N, D] tensor, got {pos.dtype} {tuple(pos.shape)}")
    if not radius > 0:
        raise ValueError(f"cell list: radius must be > 0, got {radius}")
    if batch.shape != (pos.shape[0],):
        raise ValueError(f"cell list: batch must have shape [{pos.shape[0]}], got {tuple(batch.shape)}")
    if box is not None:
        if box.shape != (num_graphs, pos.shape[1], 2):
            raise ValueError(f"cell list: box must have shape [B={num_graphs}, D={pos.shape[1]}, 2] "
                             f"(lower, upper corner per graph), got {tuple(box.shape)}")
        if not box.is_cuda:  # on CUDA this would be a device read per call: the graph builder checks once
            check_box_sides(box)


def squared_distance(diff: Tensor, box_length: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """|x_i - x_j|^2 of each pair from ``diff`` = x_i - x_j (minimum image with ``box_length``, the
    box sides of each pair's graph), summed over axes left to right so that every path (torch,
    Triton) rounds alike; and the periodic shift.

    Shapes:
        diff: [M, D], box_length: [M, D] or None -> [M], [M, D] or None
    """
    shift = None
    if box_length is not None:
        shift = -(box_length * torch.floor(diff / box_length + 0.5))
        diff = diff + shift
    d2 = diff[:, 0] * diff[:, 0]
    for axis in range(1, diff.shape[1]):
        d2 = d2 + diff[:, axis] * diff[:, axis]
    return d2, shift


def _pairs_torch(pos: Tensor, table: CellTable, batch: Tensor, r2: Tensor, max_num_neighbors: int | None,
                 chunk_pairs: int) -> tuple[Tensor, Tensor | None, int]:
    """Every pair closer than r (edge_index [2, E] sorted by target), the periodic shifts [E, D]
    (None without a box) and how many targets have more than ``max_num_neighbors`` neighbours;
    target by target in chunks of at most ``chunk_pairs`` candidates (one target with more is
    one chunk)."""
    num_nodes, num_offsets = pos.shape[0], table.seg_count.shape[1]
    device = pos.device
    pos_sorted = pos.index_select(0, table.order)  # sources are read by slot: neighbours lie close in memory
    per_node = table.seg_count.sum(1)[table.cell_of_node]  # candidates of each target (itself included)
    ends = torch.cumsum(per_node, 0).cpu()
    total = int(ends[-1])
    cuts = torch.searchsorted(ends, torch.arange(1, -(-total // chunk_pairs)) * chunk_pairs, right=True).tolist()
    bounds = sorted(set([0, *cuts, num_nodes]))
    sources, targets, shifts = [], [], []
    for a, b in zip(bounds[:-1], bounds[1:]):
        cells = table.cell_of_node[a:b]
        seg_len = table.seg_count[cells].reshape(-1)  # [T S], target-major
        seg_beg = table.seg_start[cells].reshape(-1)
        m = int(ends[b - 1]) - (int(ends[a - 1]) if a else 0)
        counts = per_node[a:b]
        # candidate c of segment s reads slot seg_beg[s] + (c - first candidate of s)
        seg_id = torch.repeat_interleave(torch.arange(seg_len.numel(), device=device), seg_len, output_size=m)
        slot = torch.arange(m, device=device) + (seg_beg - (torch.cumsum(seg_len, 0) - seg_len)).index_select(0, seg_id)
        diff = pos[a:b].repeat_interleave(counts, dim=0, output_size=m) - pos_sorted.index_select(0, slot)
        box_length = None
        if table.box_length is not None:
            box_length = table.box_length[batch[a:b]].repeat_interleave(counts, dim=0, output_size=m)
        d2, shift = squared_distance(diff, box_length)
        close = (d2 < r2).nonzero().squeeze(1)
        source = table.order.index_select(0, slot.index_select(0, close))
        target = a + torch.div(seg_id.index_select(0, close), num_offsets, rounding_mode="floor")
        not_self = (source != target).nonzero().squeeze(1)
        sources.append(source.index_select(0, not_self))
        targets.append(target.index_select(0, not_self))
        if shift is not None:
            shifts.append(shift.index_select(0, close).index_select(0, not_self))
    edge_index = torch.stack([torch.cat(sources), torch.cat(targets)])
    shift = torch.cat(shifts) if shifts else None
    if max_num_neighbors is None:
        return edge_index, shift, 0
    return edge_index, shift, int((torch.bincount(edge_index[1], minlength=num_nodes) > max_num_neighbors).sum())


@torch.no_grad()  # edges and shifts carry no gradient
def cell_list_radius_graph(
    pos: Tensor, radius: float, batch: Tensor | None = None, *, num_graphs: int | None = None,
    box: Tensor | None = None, max_num_neighbors: int | None = None, pair_search: PairSearch = "auto",
    chunk_pairs: int | None = None,
) -> RadiusEdges:
    """Radius graph j -> i within each graph (no self loops), sorted by target.

    ``max_num_neighbors`` cuts nodes with more neighbours to their nearest ones (see
    :func:`keep_nearest`). ``pair_search``: 'torch', 'triton' (CUDA kernel; on CPU tensors it runs
    in Triton's interpreter, slowly, which is how the tests check it) or 'auto' (Triton on CUDA when
    installed, else torch). ``num_graphs`` defaults to max(batch) + 1 (a host read).

    The Triton path reads the device only for sizes it must allocate: the number of occupied cells,
    then the edge count (with the number of capped nodes in the same read).

    Shapes:
        pos: [N, D], batch: [N], box: [B, D, 2] -> RadiusEdges(edge_index [2, E], edge_shift [E, D])
    """
    num_nodes = pos.shape[0]
    if batch is None:
        batch = torch.zeros(num_nodes, dtype=torch.long, device=pos.device)
    if num_graphs is None:
        num_graphs = int(batch.max()) + 1 if num_nodes else 0
    _check_inputs(pos, radius, batch, num_graphs, box)
    periodic = box is not None
    if num_nodes == 0:
        return RadiusEdges(batch.new_zeros((2, 0)), pos.new_zeros((0, pos.shape[1])) if periodic else None, 0)
    batch = batch.long()
    # r * r rounded to the coordinates' dtype, as torch-cluster does; a fill, not a host-to-device copy
    r2 = torch.full((), radius * radius, dtype=pos.dtype, device=pos.device)
    table = build_cell_table(pos, radius, batch, num_graphs, box)
    use_triton = pair_search == "triton" or (pair_search == "auto" and pos.is_cuda and triton_status().installed)
    if use_triton:
        from scaleq.data.cell_list_kernels import cell_pairs_triton

        edge_index, shift, num_capped = cell_pairs_triton(pos, table, batch, r2, max_num_neighbors)
    else:
        chunk = chunk_pairs or DEFAULT_CHUNK_PAIRS["cuda" if pos.is_cuda else "cpu"]
        edge_index, shift, num_capped = _pairs_torch(pos.contiguous(), table, batch, r2, max_num_neighbors, chunk)
    if num_capped:
        assert max_num_neighbors is not None
        keep = keep_nearest(edge_index, pos, max_num_neighbors, shift)
        edge_index = edge_index[:, keep]
        shift = shift[keep] if shift is not None else None
    return RadiusEdges(edge_index, shift, num_capped)


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
