"""The cell list's table, which both pair searches read (the torch one in
:mod:`scaleq.graph.cell_list`, the Triton kernel in :mod:`scaleq.graph.cell_list_kernels`):
particles binned into cells of side >= r per graph, sorted by (graph, cell), and for every
occupied cell where the particles of its 3^D neighbouring cells lie. Occupied cells are found by
binary search, so clustered points with a huge, mostly empty bounding box cost no memory."""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

import torch
from torch import Tensor

# Cells are a little wider than r, so that no pair whose float32 squared distance rounds below r^2
# can sit two cells apart.
_CELL_MARGIN = 1e-4


@dataclass(frozen=True)
class CellTable:
    """Particles sorted by (graph, cell) and, per occupied cell, where its 3^D neighbours lie.

    Shapes (N particles, U occupied cells, S = 3^D neighbour offsets, B graphs):
        order [N]: the particle in each sorted slot; cell_of_node [N], cell_of_slot [N]: occupied
        cell id; seg_start [U, S], seg_count [U, S]: slot range of each neighbouring cell (count 0
        where the cell is empty, outside the box, or a duplicate through periodic wrapping);
        box_length [B, D] or None.
    """

    order: Tensor
    cell_of_node: Tensor
    cell_of_slot: Tensor
    seg_start: Tensor
    seg_count: Tensor
    box_length: Tensor | None


@functools.lru_cache(maxsize=16)
def neighbour_offsets(dim: int, device: torch.device) -> Tensor:
    """All 3^D cell offsets in {-1, 0, 1}^D (cached: no host-to-device copy per call).
    Shapes: -> [3^D, D] int64."""
    return torch.tensor(list(itertools.product((-1, 0, 1), repeat=dim)), dtype=torch.long, device=device).view(-1, dim)


def check_box_sides(box: Tensor) -> None:
    if not bool((box[..., 1] > box[..., 0]).all()):
        raise ValueError("cell list: every periodic box needs upper > lower on every axis (the store's 'bounds')")


def build_cell_table(pos: Tensor, radius: float, batch: Tensor, num_graphs: int, box: Tensor | None = None) -> CellTable:
    """Bin particles into cells of side >= ``radius`` per graph (``box``: periodic, else each
    graph's bounding box) and find each occupied cell's neighbouring cells.

    Cell coordinates are computed in float64, and cells per axis are capped so that one int64 key
    (graph offset + linear cell index) addresses every cell of every graph.

    Shapes:
        pos: [N, D], batch: [N] (any order), box: [B, D, 2] or None -> CellTable
    """
    num_nodes, dim = pos.shape
    device = pos.device
    x = pos.detach().double()
    side = radius * (1.0 + _CELL_MARGIN)
    # Keys stay below 2^62: at most this many cells per axis per graph.
    cap = max(3.0, min(2.0**31, (2.0**62 / max(num_graphs, 1)) ** (1.0 / dim)))
    index = batch.view(-1, 1).expand(-1, dim)
    if box is None:
        lower = torch.full((num_graphs, dim), torch.inf, dtype=torch.float64, device=device)
        lower = lower.scatter_reduce(0, index, x, "amin")
        upper = torch.full_like(lower, -torch.inf).scatter_reduce(0, index, x, "amax")
        lower = torch.where(torch.isfinite(lower), lower, 0.0)  # graphs without nodes
        extent = (upper - lower).clamp(min=0.0)
        cell_side = torch.maximum(torch.full_like(extent, side), extent / (cap - 2.0))
        cells_per_axis = (extent / cell_side).floor().long() + 1
        box_length = None
        local = x - lower[batch]
    else:
        lower, box_length64 = box[..., 0].double(), (box[..., 1] - box[..., 0]).double()
        cells_per_axis = (box_length64 / side).floor().clamp(1.0, cap).long()
        cell_side = box_length64 / cells_per_axis
        box_length = (box[..., 1] - box[..., 0]).to(pos.dtype)
        local = torch.remainder(x - lower[batch], box_length64[batch])
    coords = torch.minimum((local / cell_side[batch]).floor().long().clamp(min=0), cells_per_axis[batch] - 1)
    # linear index within a graph: c_0 + n_0 (c_1 + n_1 (c_2 + ...))
    stride = torch.cumprod(torch.cat([torch.ones_like(cells_per_axis[:, :1]), cells_per_axis[:, :-1]], 1), 1)
    cells_per_graph = stride[:, -1] * cells_per_axis[:, -1]
    graph_offset = torch.cumsum(cells_per_graph, 0) - cells_per_graph
    key = graph_offset[batch] + (coords * stride[batch]).sum(1)

    order = torch.argsort(key, stable=True)
    sorted_key = key[order]
    occupied, occupancy = torch.unique_consecutive(sorted_key, return_counts=True)
    cell_start = torch.cumsum(occupancy, 0) - occupancy
    cell_of_slot = torch.repeat_interleave(torch.arange(occupied.numel(), device=device), occupancy, output_size=num_nodes)
    cell_of_node = torch.empty_like(cell_of_slot)
    cell_of_node[order] = cell_of_slot

    first = order[cell_start]  # one particle of each occupied cell
    cell_coords, cell_graph = coords[first], batch[first]  # [U, D], [U]
    offsets = neighbour_offsets(dim, device)  # [S, D]
    n = cells_per_axis[cell_graph].unsqueeze(1)  # [U, 1, D]
    neighbour = cell_coords.unsqueeze(1) + offsets  # [U, S, D]
    if box is None:
        inside = ((neighbour >= 0) & (neighbour < n)).all(-1)
    else:
        # With fewer than 3 cells on an axis, -1 and +1 (or all three) wrap onto the same cell:
        # keep one of them so no pair is found twice.
        inside = (((offsets >= 0) | (n >= 3)) & ((offsets <= 0) | (n >= 2))).all(-1)
        neighbour = torch.remainder(neighbour, n)
    neighbour_key = graph_offset[cell_graph].unsqueeze(1) + (neighbour * stride[cell_graph].unsqueeze(1)).sum(-1)
    found = torch.searchsorted(occupied, neighbour_key).clamp(max=occupied.numel() - 1)  # N > 0: U >= 1
    present = inside & (occupied[found] == neighbour_key)
    seg_start = torch.where(present, cell_start[found], 0)
    seg_count = torch.where(present, occupancy[found], 0)
    return CellTable(order, cell_of_node, cell_of_slot, seg_start, seg_count, box_length)
