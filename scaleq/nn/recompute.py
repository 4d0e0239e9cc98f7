"""Sums over each receiver's edges of per-edge functions, with memory bounded by a chunk of edges.

``sum_over_edges(edge_fn, layout, chunk, recv, src, edge, params)`` returns, for every output
of ``edge_fn``, its sum over each receiver's incoming edges (or, for the last ``at_source``
outputs, over each source's outgoing edges), where ``edge_fn`` sees one chunk of
receiver-sorted edges at a time: the receiver-side node tensors gathered at the chunk's
receivers, the source-side ones at its sources, the per-edge tensors' rows and the parameters.
With ``chunk`` = 0 that is plain autograd over all edges at once. With ``chunk`` > 0 the
forward keeps only node-level sums and the backward recomputes each chunk's edge activations
under autograd (with the forward's autocast state), scatters the gradients of the gathered rows
back to their nodes and sums the parameter gradients over chunks. Peak memory is that of the
node-level tensors plus one chunk's activations, whatever the number of edges.

Chunks are runs of whole receivers (:meth:`EdgeLayout.chunks`, bounds computed once per layout
and chunk size): a chunk's receiver sums are a slice of the output, written once, and the sums
and the gathers at receivers are the device's fastest sorted reductions
(:mod:`scaleq.nn.segments`). Nothing is read back to the host per chunk.

Not ``torch.utils.checkpoint`` per chunk: that would keep every chunk's inputs alive until the
backward. The chunked path is not differentiable twice. The models' message-passing blocks are
built on it (:mod:`scaleq.nn.message_passing` for EGNN-style layers, EGHN's EMMP layer,
FastEGNN's real-virtual messages over :meth:`EdgeLayout.per_node`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from scaleq.nn.edge_layout import Chunk, EdgeLayout
from scaleq.nn.segments import segment_expand, segment_sum, sum_sorted_rows

# edge_fn(recv_rows, src_rows, edge_rows, params) -> per-edge outputs, each [E_chunk, ...]
EdgeFn = Callable[[Sequence[Tensor], Sequence[Tensor], Sequence[Tensor | None], Sequence[Tensor]], tuple[Tensor, ...]]


def sum_over_edges(
    edge_fn: EdgeFn,
    layout: EdgeLayout,
    chunk: int,
    recv: Sequence[Tensor],
    src: Sequence[Tensor],
    edge: Sequence[Tensor | None],
    params: Sequence[Tensor],
    *,
    at_source: int = 0,
) -> tuple[Tensor, ...]:
    """Per-receiver (and per-source) sums of ``edge_fn``'s outputs.

    Args:
        edge_fn: the per-edge computation (see the module docstring); its outputs' dtypes and
            trailing shapes must not depend on the number of edges.
        layout: the receiver-sorted edges.
        chunk: 0: all edges at once under plain autograd (per-edge activations kept for backward);
            K > 0: about K receiver-sorted edges at a time (whole receivers), recomputed in backward.
        recv, src: node tensors read at each edge's receiver / source (``src`` rows may include
            halo nodes: they index the layout's source set).
        edge: per-edge tensors in the layout's order (None entries are passed through as None).
        params: tensors the function reads as a whole (weights).
        at_source: the last ``at_source`` outputs are summed at each edge's source (rows of the
            source set, sized like ``src[0]``) instead of its receiver.

    Shapes:
        recv: [N, ...] each, src: [N_src, ...] each, edge: [E, ...] each -> [N, ...] per receiver
        output, then [N_src, ...] per source output
    """
    if chunk < 0:
        raise ValueError(f"chunk must be 0 (all edges at once) or a positive number of edges, got {chunk}")
    if at_source and not src:
        raise ValueError("sums at sources need a source-side tensor (it gives the number of sources)")
    if chunk > 0:
        counts = (len(recv), len(src), len(edge))
        return RecomputedEdgeSums.apply(edge_fn, layout, chunk, counts, at_source, *recv, *src, *edge, *params)
    outputs = edge_fn([_at_receivers(t, layout) for t in recv], [t.index_select(0, layout.source) for t in src],
                      edge, params)
    split = len(outputs) - at_source
    to_receivers = [_sum_at_receivers(out, layout) for out in outputs[:split]]
    num_src = src[0].shape[0] if src else 0
    to_sources = [out.new_zeros(num_src, *out.shape[1:]).index_add(0, layout.source, out) for out in outputs[split:]]
    return (*to_receivers, *to_sources)


def _at_receivers(t: Tensor, layout: EdgeLayout) -> Tensor:
    return t if layout.one_per_receiver else segment_expand(t, layout.segments())


def _sum_at_receivers(out: Tensor, layout: EdgeLayout) -> Tensor:
    return out if layout.one_per_receiver else segment_sum(out, layout.segments())


def _split(tensors: Sequence, counts: tuple[int, int, int]) -> tuple[list, list, list, list]:
    a, b, c = counts
    return list(tensors[:a]), list(tensors[a : a + b]), list(tensors[a + b : a + b + c]), list(tensors[a + b + c :])


class _ChunkRows:
    """Reads and writes of one chunk: rows of receiver-side node tensors at its edges, of
    source-side ones, of per-edge ones; its receiver sums as a slice of the output."""

    def __init__(self, layout: EdgeLayout, chunk: Chunk) -> None:
        self.layout, self.chunk = layout, chunk
        self.source = layout.source[chunk.edges]
        self.segments = None if layout.one_per_receiver else layout.chunk_segments(chunk)

    def at_receivers(self, t: Tensor) -> Tensor:
        rows = t[self.chunk.receivers]
        return rows if self.segments is None else rows.index_select(0, self.segments.index)

    def sum_at_receivers(self, rows: Tensor) -> Tensor:
        return rows if self.segments is None else sum_sorted_rows(rows, self.segments)


class RecomputedEdgeSums(torch.autograd.Function):
    """The chunked path of :func:`sum_over_edges`."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        edge_fn: EdgeFn,
        layout: EdgeLayout,
        chunk: int,
        counts: tuple[int, int, int],
        at_source: int,
        *tensors: Tensor | None,
    ) -> tuple[Tensor, ...]:
        recv, src, edge, params = _split(tensors, counts)
        device_type = layout.target.device.type
        ctx.autocast = (device_type, torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type))
        ctx.edge_fn, ctx.layout, ctx.chunk, ctx.counts, ctx.at_source = edge_fn, layout, chunk, counts, at_source
        num_src = src[0].shape[0] if src else 0
        sums: list[Tensor] | None = None
        for bounds in layout.chunks(chunk):  # at least one: it gives the outputs' dtypes and shapes
            rows = _ChunkRows(layout, bounds)
            outputs = edge_fn([rows.at_receivers(t) for t in recv], [t.index_select(0, rows.source) for t in src],
                              [None if t is None else t[bounds.edges] for t in edge], params)
            split = len(outputs) - at_source
            if sums is None:
                sums = [out.new_zeros(layout.num_nodes, *out.shape[1:]) for out in outputs[:split]]
                sums += [out.new_zeros(num_src, *out.shape[1:]) for out in outputs[split:]]
            for k, out in enumerate(outputs):
                if k < split:
                    sums[k][bounds.receivers] = rows.sum_at_receivers(out)
                else:
                    sums[k].index_add_(0, rows.source, out)
        ctx.save_for_backward(*tensors)
        assert sums is not None
        return tuple(sums)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: torch.autograd.function.FunctionCtx, *grad_sums: Tensor) -> tuple:
        layout: EdgeLayout = ctx.layout
        tensors = ctx.saved_tensors
        recv, src, edge, params = _split(tensors, ctx.counts)
        needs = _split(ctx.needs_input_grad[5:], ctx.counts)
        grads = [[torch.zeros_like(t) if need else None for t, need in zip(group, group_needs)]
                 for group, group_needs in zip((recv, src, edge, params), needs)]
        leaves = [p.detach().requires_grad_(need) for p, need in zip(params, needs[3])]
        device_type, autocast_on, autocast_dtype = ctx.autocast
        split = len(grad_sums) - ctx.at_source
        for bounds in layout.chunks(ctx.chunk):
            if bounds.edges.stop == bounds.edges.start:
                continue  # receivers without edges: nothing to recompute
            rows = _ChunkRows(layout, bounds)
            with torch.enable_grad(), torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_on):
                gathered = [
                    [rows.at_receivers(t).detach().requires_grad_(need) for t, need in zip(recv, needs[0])],
                    [t.index_select(0, rows.source).detach().requires_grad_(need) for t, need in zip(src, needs[1])],
                    [None if t is None else t[bounds.edges].detach().requires_grad_(need)
                     for t, need in zip(edge, needs[2])],
                ]
                outputs = ctx.edge_fn(*gathered, leaves)
            pairs = [(out, (rows.at_receivers(g) if k < split else g.index_select(0, rows.source)).to(out.dtype))
                     for k, (out, g) in enumerate(zip(outputs, grad_sums)) if out.requires_grad]
            inputs = [t for group in (*gathered, leaves) for t in group if t is not None and t.requires_grad]
            if not inputs or not pairs:  # nothing asked for, or nothing that depends on it
                break
            found = iter(torch.autograd.grad([o for o, _ in pairs], inputs, [g for _, g in pairs], allow_unused=True))
            for k, group in enumerate((*gathered, leaves)):
                for total, t in zip(grads[k], group):
                    if t is None or not t.requires_grad:
                        continue
                    g = next(found)
                    if g is None:
                        continue
                    g = g.to(total.dtype)
                    if k == 0:  # receiver rows: whole receivers, a slice of the total
                        total[bounds.receivers] += rows.sum_at_receivers(g)
                    elif k == 1:
                        total.index_add_(0, rows.source, g)
                    elif k == 2:
                        total[bounds.edges] += g
                    else:
                        total += g
        return (None, None, None, None, None, *grads[0], *grads[1], *grads[2], *grads[3])
