# ruff: noqa: ANN001  (Triton kernel arguments are pointers and ints that Triton types itself)
"""The cell list's pair search as one Triton kernel, run twice: count each particle's neighbours,
exclusive scan (torch.cumsum), fill. The torch twin is ``scaleq.graph.cell_list._pairs_torch``;
both visit candidates in the same order (neighbouring cell, then slot) and sum squared distances
over axes left to right, so their outputs are identical (in the interpreter bit for bit; compiled,
FMA contraction is off but the reduction over axes may pair terms differently, which can only
move pairs at distance r within rounding).

Imported only when the kernel path runs (Triton is optional). On CUDA tensors the kernel is
compiled; CPU tensors need Triton's interpreter (TRITON_INTERPRET=1 set before triton is imported),
which is slow and meant for tests.
"""

import functools

import torch
import triton
import triton.language as tl
from torch import Tensor

from scaleq.graph.cell_table import CellTable
from scaleq.graph.memory import check_edges_fit, pair_budget
from scaleq.graph.nearest import keep_nearest
from scaleq.triton_status import triton_status

BLOCK = 128


def _cell_pairs_kernel(
    pos_ptr,  # [N, D] positions in slot order
    node_ptr,  # [N] particle of each slot (original index)
    cell_ptr,  # [N] occupied cell of each slot
    graph_ptr,  # [N] graph of each slot
    seg_start_ptr,  # [U, S] first slot of each neighbouring cell
    seg_count_ptr,  # [U, S] its particle count (0: none)
    box_ptr,  # [B, D] periodic box sides (unused unless PERIODIC)
    r2_ptr,  # [1] r^2 in the coordinates' dtype
    count_ptr,  # [N] out (count pass): neighbours of each slot
    row_ptr,  # [num_slots - slot_begin] in (fill pass): first output row of each slot of the block
    source_ptr,  # [E] out (fill pass)
    target_ptr,  # [E] out (fill pass)
    shift_ptr,  # [E, D] out (fill pass, PERIODIC)
    slot_begin,  # the block of slots this launch searches: slot_begin .. num_slots - 1
    num_slots,
    D: tl.constexpr,  # space dimension
    DP: tl.constexpr,  # D rounded up to a power of two (tile width; padding columns are masked)
    S: tl.constexpr,  # 3^D neighbouring cells
    PERIODIC: tl.constexpr,
    FILL: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
):
    slot = slot_begin + tl.program_id(0) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    axis = tl.arange(0, DP)
    live = slot < num_slots
    real_axis = (axis < D)[None, :]
    cell = tl.load(cell_ptr + slot, mask=live, other=0)
    # own position and box, [BLOCK, DP], loaded once
    xi = tl.load(pos_ptr + slot[:, None] * D + axis[None, :], mask=live[:, None] & real_axis, other=0.0)
    if PERIODIC:
        graph = tl.load(graph_ptr + slot, mask=live, other=0)
        length = tl.load(box_ptr + graph[:, None] * D + axis[None, :], mask=live[:, None] & real_axis, other=1.0)
    r2 = tl.load(r2_ptr)
    found = tl.zeros([BLOCK_SIZE], dtype=tl.int64)
    if FILL:
        row = tl.load(row_ptr + (slot - slot_begin), mask=live, other=0)
        target = tl.load(node_ptr + slot, mask=live, other=0)
    for o in range(S):  # a loop, not unrolled: 27 unrolled copies also trip Triton 3.9's loop CSE pass
        start = tl.load(seg_start_ptr + cell * S + o, mask=live, other=0)
        count = tl.load(seg_count_ptr + cell * S + o, mask=live, other=0)
        # slots of one block sit in the same few cells, so their candidate counts are alike
        for k in range(0, tl.max(count, axis=0)):
            other = start + k
            valid = live & (k < count)
            xj = tl.load(pos_ptr + other[:, None] * D + axis[None, :], mask=valid[:, None] & real_axis, other=0.0)
            diff = xi - xj
            if PERIODIC:
                shift = -(length * tl.floor(diff / length + 0.5))
                diff = diff + shift
            # padding columns add exact zeros, so this is the left-to-right sum of the torch path
            d2 = tl.sum(diff * diff, axis=1)
            hit = valid & (d2 < r2) & (other != slot)
            if FILL:
                out = row + found
                source = tl.load(node_ptr + other, mask=hit, other=0)
                tl.store(source_ptr + out, source, mask=hit)
                tl.store(target_ptr + out, target, mask=hit)
                if PERIODIC:
                    tl.store(shift_ptr + out[:, None] * D + axis[None, :], shift, mask=hit[:, None] & real_axis)
            found += hit.to(tl.int64)
    if not FILL:
        tl.store(count_ptr + slot, found, mask=live)


@functools.cache
def _kernel():  # noqa: ANN202 (a Triton kernel object)
    # With TRITON_INTERPRET=1 set before triton was imported, this is the interpreted kernel.
    return triton.jit(_cell_pairs_kernel)


def cell_pairs_triton(pos: Tensor, table: CellTable, batch: Tensor, r2: Tensor, max_num_neighbors: int | None,
                      radius: float) -> tuple[Tensor, Tensor | None, int]:
    """Every pair closer than r (edge_index [2, E] sorted by target; with ``max_num_neighbors``,
    each target's nearest that many), the periodic shifts [E, D] (None without a box), and how
    many targets have more than ``max_num_neighbors`` neighbours.

    The count pass gives E before anything is allocated: edges that would not fit refuse here
    (:func:`~scaleq.graph.memory.check_edges_fit`). With a cap and more pairs than about
    N x cap, the fill pass runs on blocks of slots of at most that many pairs, each block cut to
    its targets' nearest before the next; otherwise one read (the edge count and the number of
    capped targets together) and one fill.
    """
    num_nodes, dim = pos.shape
    device = pos.device
    if not pos.is_cuda and not triton_status().interpreted:
        raise RuntimeError("the Triton pair search on CPU tensors runs in Triton's interpreter: set "
                           "TRITON_INTERPRET=1 in the environment before Python imports triton")
    kernel = _kernel()
    order = table.order
    pos_sorted = pos.detach()[order].contiguous()
    graph_sorted = batch[order].contiguous()
    seg_start = table.seg_start.contiguous()
    seg_count = table.seg_count.contiguous()
    periodic = table.box_length is not None
    box = table.box_length.contiguous() if periodic else pos.new_ones((1, dim))
    count_sorted = torch.empty(num_nodes, dtype=torch.long, device=device)
    shared = dict(D=dim, DP=triton.next_power_of_2(dim), S=seg_count.shape[1], PERIODIC=periodic, BLOCK_SIZE=BLOCK)
    if pos.is_cuda:
        shared["enable_fp_fusion"] = False  # round d^2 as torch does (multiply, then add)
    dummy = count_sorted[:1]
    inputs = (pos_sorted, order, table.cell_of_slot, graph_sorted, seg_start, seg_count, box, r2.view(1))
    kernel[(triton.cdiv(num_nodes, BLOCK),)](*inputs, count_sorted, dummy, dummy, dummy, pos_sorted, 0, num_nodes,
                                             FILL=False, **shared)
    counts = torch.empty_like(count_sorted)
    counts[order] = count_sorted  # per original node
    cap = max_num_neighbors if max_num_neighbors is not None else num_nodes
    num_edges, num_kept, num_capped = torch.stack([counts.sum(), counts.clamp(max=cap).sum(), (counts > cap).sum()]).tolist()
    check_edges_fit(num_kept, num_nodes=num_nodes, radius=radius, max_num_neighbors=max_num_neighbors, device=device,
                    exact=True)
    budget = pair_budget(num_nodes, max_num_neighbors)

    def fill(begin: int, end: int, rows: Tensor, size: int) -> tuple[Tensor, Tensor, Tensor]:
        """The pairs of slots begin .. end - 1, each slot's at ``rows`` (relative to ``begin``)."""
        source = torch.empty(size, dtype=torch.long, device=device)
        target = torch.empty(size, dtype=torch.long, device=device)
        shift = pos.new_empty((size, dim)) if periodic else pos_sorted
        if size:
            kernel[(triton.cdiv(end - begin, BLOCK),)](*inputs, dummy, rows, source, target, shift, begin, end,
                                                       FILL=True, **shared)
        return source, target, shift

    if budget is None or num_edges <= budget:
        row_start = torch.cumsum(counts, 0) - counts  # targets in original order: output sorted by target
        source, target, shift = fill(0, num_nodes, row_start[order].contiguous(), num_edges)
        edge_index = torch.stack([source, target])
        if not num_capped:
            return edge_index, shift if periodic else None, 0
        keep = keep_nearest(edge_index, pos, cap, shift if periodic else None)
        return edge_index[:, keep], shift[keep] if periodic else None, num_capped
    edges, shifts = [], []
    for begin, end, size in _slot_blocks(count_sorted, budget):
        rows = count_sorted[begin:end]
        source, target, shift = fill(begin, end, (torch.cumsum(rows, 0) - rows).contiguous(), size)
        block = torch.stack([source, target])
        keep = keep_nearest(block, pos, cap, shift if periodic else None)
        edges.append(block[:, keep])
        if periodic:
            shifts.append(shift[keep])
    edge_index = torch.cat(edges, dim=1)
    by_target = torch.argsort(edge_index[1], stable=True)  # blocks are in slot order; within a target, visit order
    return edge_index[:, by_target], torch.cat(shifts)[by_target] if periodic else None, num_capped


def _slot_blocks(count_sorted: Tensor, budget: int) -> list[tuple[int, int, int]]:
    """Consecutive slot ranges (begin, end, pairs) of at most ``budget`` pairs each (a slot with
    more is a range of its own). One host read of the counts."""
    ends = torch.cumsum(count_sorted, 0).cpu()
    total, num_slots = int(ends[-1]), count_sorted.numel()
    cuts = torch.searchsorted(ends, torch.arange(1, -(-total // budget)) * budget, right=True).tolist()
    bounds = sorted(set([0, *cuts, num_slots]))
    return [(a, b, int(ends[b - 1]) - (int(ends[a - 1]) if a else 0)) for a, b in zip(bounds[:-1], bounds[1:])]
