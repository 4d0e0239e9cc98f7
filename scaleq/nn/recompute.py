"""Sums over each receiver's edges of per-edge functions, with memory bounded by a chunk of edges.

``sum_over_edges(edge_fn, layout, chunk, recv, src, edge, params)`` returns, for every output
of ``edge_fn``, its sum over each receiver's incoming edges, where ``edge_fn`` sees one chunk of
receiver-sorted edges at a time: the receiver-side node tensors gathered at the chunk's
receivers, the source-side ones at its sources, the per-edge tensors' rows and the parameters.
With ``chunk`` = 0 that is plain autograd over all edges at once. With ``chunk`` > 0 the
forward keeps only node-level sums and the backward recomputes each chunk's edge activations
under autograd (with the forward's autocast state), scatters the gradients of the gathered rows
back to their nodes and sums the parameter gradients over chunks. Peak memory is that of the
node-level tensors plus one chunk's activations, whatever the number of edges.

Not ``torch.utils.checkpoint`` per chunk: that would keep every chunk's inputs alive until the
backward. Not differentiable twice. The models' message-passing blocks are built on it
(:mod:`scaleq.nn.message_passing` for EGNN-style layers, EGHN's EMMP layer).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from scaleq.nn.edge_layout import EdgeLayout

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
) -> tuple[Tensor, ...]:
    """Per-receiver sums of ``edge_fn``'s outputs.

    Args:
        edge_fn: the per-edge computation (see the module docstring); its outputs' dtypes and
            trailing shapes must not depend on the number of edges.
        layout: the receiver-sorted edges.
        chunk: 0: all edges at once under plain autograd (per-edge activations kept for backward);
            K > 0: K receiver-sorted edges at a time, recomputed in backward.
        recv, src: node tensors read at each edge's receiver / source (``src`` rows may include
            halo nodes: they index the layout's source set).
        edge: per-edge tensors in the layout's order (None entries are passed through as None).
        params: tensors the function reads as a whole (weights).

    Shapes:
        recv: [N, ...] each, src: [N_src, ...] each, edge: [E, ...] each -> one [N, ...] per output
    """
    if chunk < 0:
        raise ValueError(f"chunk must be 0 (all edges at once) or a positive number of edges, got {chunk}")
    if chunk > 0:
        counts = (len(recv), len(src), len(edge))
        return RecomputedEdgeSums.apply(edge_fn, layout, chunk, counts, *recv, *src, *edge, *params)
    outputs = edge_fn([t[layout.target] for t in recv], [t[layout.source] for t in src], edge, params)
    return tuple(out.new_zeros(layout.num_nodes, *out.shape[1:]).index_add_(0, layout.target, out) for out in outputs)


def _split(tensors: Sequence, counts: tuple[int, int, int]) -> tuple[list, list, list, list]:
    a, b, c = counts
    return list(tensors[:a]), list(tensors[a : a + b]), list(tensors[a + b : a + b + c]), list(tensors[a + b + c :])


def _rows(layout: EdgeLayout, start: int, chunk: int) -> tuple[slice, Tensor, Tensor]:
    rows = slice(start, start + chunk)
    return rows, layout.target[rows], layout.source[rows]


class RecomputedEdgeSums(torch.autograd.Function):
    """The chunked path of :func:`sum_over_edges`."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        edge_fn: EdgeFn,
        layout: EdgeLayout,
        chunk: int,
        counts: tuple[int, int, int],
        *tensors: Tensor | None,
    ) -> tuple[Tensor, ...]:
        recv, src, edge, params = _split(tensors, counts)
        device_type = layout.target.device.type
        ctx.autocast = (device_type, torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type))
        ctx.edge_fn, ctx.layout, ctx.chunk, ctx.counts = edge_fn, layout, chunk, counts
        sums: list[Tensor] | None = None
        # an empty first chunk gives the outputs' dtypes and trailing shapes when there are no edges
        for start in range(0, max(layout.num_edges, 1), chunk):
            rows, target, source = _rows(layout, start, chunk)
            outputs = edge_fn([t[target] for t in recv], [t[source] for t in src],
                              [None if t is None else t[rows] for t in edge], params)
            if sums is None:
                sums = [out.new_zeros(layout.num_nodes, *out.shape[1:]) for out in outputs]
            for total, out in zip(sums, outputs):
                total.index_add_(0, target, out)
        ctx.save_for_backward(*tensors)
        assert sums is not None
        return tuple(sums)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: torch.autograd.function.FunctionCtx, *grad_sums: Tensor) -> tuple:
        layout: EdgeLayout = ctx.layout
        tensors = ctx.saved_tensors
        recv, src, edge, params = _split(tensors, ctx.counts)
        needs = _split(ctx.needs_input_grad[4:], ctx.counts)
        grads = [[torch.zeros_like(t) if need else None for t, need in zip(group, group_needs)]
                 for group, group_needs in zip((recv, src, edge, params), needs)]
        leaves = [p.detach().requires_grad_(need) for p, need in zip(params, needs[3])]
        device_type, autocast_on, autocast_dtype = ctx.autocast
        for start in range(0, layout.num_edges, ctx.chunk):
            rows, target, source = _rows(layout, start, ctx.chunk)
            with torch.enable_grad(), torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_on):
                gathered = [
                    [t[target].detach().requires_grad_(need) for t, need in zip(recv, needs[0])],
                    [t[source].detach().requires_grad_(need) for t, need in zip(src, needs[1])],
                    [None if t is None else t[rows].detach().requires_grad_(need) for t, need in zip(edge, needs[2])],
                ]
                outputs = ctx.edge_fn(*gathered, leaves)
            inputs = [t for group in (*gathered, leaves) for t in group if t is not None and t.requires_grad]
            pairs = [(out, g[target].to(out.dtype)) for out, g in zip(outputs, grad_sums) if out.requires_grad]
            if not inputs or not pairs:  # nothing asked for, or nothing that depends on it
                break
            found = iter(torch.autograd.grad([o for o, _ in pairs], inputs, [g for _, g in pairs], allow_unused=True))
            for k, group in enumerate((*gathered, leaves)):
                index = (target, source, rows, None)[k]
                for total, t in zip(grads[k], group):
                    if t is None or not t.requires_grad:
                        continue
                    g = next(found)
                    if g is None:
                        continue
                    if k < 2:
                        total.index_add_(0, index, g.to(total.dtype))
                    elif k == 2:
                        total[rows] += g.to(total.dtype)
                    else:
                        total += g.to(total.dtype)
        return (None, None, None, None, *grads[0], *grads[1], *grads[2], *grads[3])
