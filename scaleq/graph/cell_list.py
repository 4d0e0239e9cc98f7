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
``scaleq/graph/cell_list_kernels.py``) used on CUDA when Triton is installed. Both visit candidates
in the same order and produce identical output (bit for bit in Triton's interpreter; compiled, the
kernel's sum over axes may round differently in the last bit, which can only move pairs at
distance r within rounding).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from scaleq.graph.cell_table import CellTable, build_cell_table, check_box_sides
from scaleq.graph.memory import check_edges_fit, edges_fit, pair_budget
from scaleq.graph.nearest import keep_nearest
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
                 chunk_pairs: int, radius: float) -> tuple[Tensor, Tensor | None, int]:
    """Every pair closer than r (edge_index [2, E] sorted by target), the periodic shifts [E, D]
    (None without a box) and how many targets have more than ``max_num_neighbors`` neighbours;
    target by target in chunks of at most ``chunk_pairs`` candidates (one target with more is
    one chunk). With a cap, each chunk keeps only its targets' nearest ``max_num_neighbors``
    before the next chunk is searched, so at most N x cap edges are ever held, however dense the
    data. Before the search, the edges it may produce are checked against the free memory (an
    upper bound from the cells; counted exactly only when that bound does not fit)."""
    num_nodes = pos.shape[0]
    candidates = table.seg_count.sum(1)[table.cell_of_node]  # candidates of each target (itself included)
    ends = torch.cumsum(candidates, 0).cpu()
    bound = (candidates - 1).clamp(max=max_num_neighbors) if max_num_neighbors is not None else candidates - 1
    bound = int(bound.sum())
    if not edges_fit(bound, pos.device):
        counted = _count_edges(pos, table, batch, r2, max_num_neighbors, candidates, ends, chunk_pairs)
        check_edges_fit(counted, num_nodes=num_nodes, radius=radius, max_num_neighbors=max_num_neighbors,
                        device=pos.device, exact=True)
    sources, targets, shifts = [], [], []
    num_capped = torch.zeros((), dtype=torch.long, device=pos.device)
    for source, target, shift in close_pairs(pos, table, batch, r2, candidates, ends, chunk_pairs):
        if max_num_neighbors is not None:
            num_capped += (torch.bincount(target, minlength=num_nodes) > max_num_neighbors).sum()
            keep = keep_nearest(torch.stack([source, target]), pos, max_num_neighbors, shift).nonzero().squeeze(1)
            source, target = source.index_select(0, keep), target.index_select(0, keep)
            shift = shift.index_select(0, keep) if shift is not None else None
        sources.append(source)
        targets.append(target)
        if shift is not None:
            shifts.append(shift)
    edge_index = torch.stack([torch.cat(sources), torch.cat(targets)])
    return edge_index, torch.cat(shifts) if shifts else None, int(num_capped)


def _count_edges(pos: Tensor, table: CellTable, batch: Tensor, r2: Tensor, max_num_neighbors: int | None,
                 candidates: Tensor, ends: Tensor, chunk_pairs: int) -> int:
    """The count pass: how many edges the capped graph has, chunk by chunk, none of them kept."""
    counted = 0
    for _, target, _ in close_pairs(pos, table, batch, r2, candidates, ends, chunk_pairs):
        degree = torch.bincount(target, minlength=pos.shape[0])
        counted += int(degree.clamp(max=max_num_neighbors).sum() if max_num_neighbors is not None else degree.sum())
    return counted


@torch.no_grad()
def count_radius_edges(pos: Tensor, radius: float, batch: Tensor, num_graphs: int, max_num_neighbors: int | None,
                       chunk_pairs: int | None = None) -> int:
    """How many edges the radius graph has (each node's counted up to ``max_num_neighbors``),
    found with the cell list in chunks of ``chunk_pairs`` candidates, holding no edge.
    Shapes: pos [N, D], batch [N] -> an int."""
    _check_inputs(pos, radius, batch, num_graphs, None)
    if pos.shape[0] == 0:
        return 0
    batch = batch.long()
    r2 = torch.full((), radius * radius, dtype=pos.dtype, device=pos.device)
    table = build_cell_table(pos, radius, batch, num_graphs)
    candidates = table.seg_count.sum(1)[table.cell_of_node]
    chunk = chunk_pairs or DEFAULT_CHUNK_PAIRS["cuda" if pos.is_cuda else "cpu"]
    return _count_edges(pos.contiguous(), table, batch, r2, max_num_neighbors, candidates,
                        torch.cumsum(candidates, 0).cpu(), chunk)


def close_pairs(pos: Tensor, table: CellTable, batch: Tensor, r2: Tensor, candidates: Tensor, ends: Tensor,
                 chunk_pairs: int) -> Iterator[tuple[Tensor, Tensor, Tensor | None]]:
    """The pairs closer than r (source [M], target [M], shift [M, D] or None; no self pairs),
    sorted by target, chunk by chunk of whole targets (``candidates`` [N]: each target's
    candidate count, ``ends`` its cumulative sum on the host)."""
    num_nodes, num_offsets = pos.shape[0], table.seg_count.shape[1]
    device = pos.device
    pos_sorted = pos.index_select(0, table.order)  # sources are read by slot: neighbours lie close in memory
    total = int(ends[-1])
    cuts = torch.searchsorted(ends, torch.arange(1, -(-total // chunk_pairs)) * chunk_pairs, right=True).tolist()
    bounds = sorted(set([0, *cuts, num_nodes]))
    for a, b in zip(bounds[:-1], bounds[1:]):
        cells = table.cell_of_node[a:b]
        seg_len = table.seg_count[cells].reshape(-1)  # [T S], target-major
        seg_beg = table.seg_start[cells].reshape(-1)
        m = int(ends[b - 1]) - (int(ends[a - 1]) if a else 0)
        counts = candidates[a:b]
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
        shift = shift.index_select(0, close).index_select(0, not_self) if shift is not None else None
        yield source.index_select(0, not_self), target.index_select(0, not_self), shift


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

    With a cap, no path holds more than about N x cap candidate pairs at once (targets are
    searched in blocks, each cut to its nearest before the next), so a radius far too large for
    the data costs time, not memory. Edges that would not fit in the device's free memory (no cap,
    or a cap too large for N) raise :class:`~scaleq.graph.memory.GraphSizeError` before the
    output is allocated.

    The Triton path reads the device only for sizes it must allocate: the number of occupied cells,
    then the edge count (with the number of capped nodes in the same read), then, when the capped
    search needs several blocks, one count per block.

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
        from scaleq.graph.cell_list_kernels import cell_pairs_triton

        edge_index, shift, num_capped = cell_pairs_triton(pos, table, batch, r2, max_num_neighbors, radius)
    else:
        chunk = chunk_pairs or DEFAULT_CHUNK_PAIRS["cuda" if pos.is_cuda else "cpu"]
        budget = pair_budget(num_nodes, max_num_neighbors)
        chunk = min(chunk, budget) if budget is not None else chunk  # about N x cap pairs at once, at most
        edge_index, shift, num_capped = _pairs_torch(pos.contiguous(), table, batch, r2, max_num_neighbors, chunk, radius)
    return RadiusEdges(edge_index, shift, num_capped)
