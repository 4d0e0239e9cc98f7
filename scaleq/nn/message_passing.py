"""The message-passing block every EGNN-style model's edge work goes through.

For each edge j -> i (receiver i, source j) the block computes, as EGNN's published layer does,

    d_ij = x_i - x_j (+ s_ij)                                   s_ij: periodic image shift, if any
    m_ij = phi_e(h_i, h_j, |d_ij|^2, e_ij)                      phi_e = Linear-SiLU-Linear-SiLU
    c_ij = d_ij phi_x(m_ij)                                     phi_x = Linear-SiLU-Linear(H, 1)

and returns only node-level sums over each receiver's edges: ``message_sum`` [N, H] = sum_j m_ij
and ``coord_sum`` [N, D] = sum_j c_ij (models divide by the degree where they take means).
(EGHN's published layer orders phi_e's inputs |d_ij|^2, h_i, h_j, e_ij: ``radial_first``; its
phi_x's last Linear has a bias, EGNN's has none.)

How it is computed (the function is the same, up to rounding):

- The first Linear of phi_e is split by input: W [h_i, h_j, r, e] + b = (W_i h + b)_i + (W_j h)_j
  + w_r r + W_e e. The two node terms are computed once per node (two [N, H] x [H, H] products)
  instead of once per edge; the Linear modules themselves are unchanged (the weight is sliced by
  columns at run time), so state dicts and checkpoints stay as they were.
- Edges are sorted by receiver once per model forward (:class:`EdgeLayout`, CSR ``ptr`` plus the
  sorted sources) and the layout is shared by all layers.
- Gathers at receivers and sums over them are sorted-segment operations
  (:mod:`scaleq.nn.segments`: ``segment_reduce`` on CUDA, ``index_add_`` on the CPU); gathers
  at sources are ``index_select`` (whose backward is ``index_add_``, not the sort-and-accumulate
  backward of advanced indexing).
- ``edge_chunk = K > 0``: the edges are walked in chunks of about K (runs of whole receivers)
  keeping only node-level tensors, and the backward recomputes each chunk's edge activations
  (:mod:`scaleq.nn.recompute`). Peak memory is O(N H + K H) per layer instead of O(E H).
  ``edge_chunk="auto"``: chunks as large as the device's free memory allows.
- ``kernel="triton"``: fused Triton kernels compute the forward sums and, recomputing, the
  backward without writing any per-edge tensor (:mod:`scaleq.nn.triton_edges`); ``edge_chunk``
  has no effect there. ``kernel="auto"`` (the default): the plain torch path while the edge
  activations fit in free memory, the chunked one when not (:mod:`scaleq.nn.block_options`).
- ``halo`` (graph parallelism): the source-side node tensors (the current positions and the
  source term W_j h) go through ``halo.extend`` before they are gathered by source index, so
  sources may be halo nodes held by other ranks.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scaleq.device_memory import free_memory
from scaleq.nn.block_options import KERNELS, EdgeChunk, Kernel, check_block_options, chunk_rows
from scaleq.nn.edge_layout import EdgeLayout
from scaleq.nn.mlp import split_columns
from scaleq.nn.recompute import sum_over_edges

__all__ = ["KERNELS", "EdgeChunk", "EdgeLayout", "EdgeSums", "Halo", "Kernel", "check_block_options", "edge_sums"]

# [E, H]-sized tensors one edge row costs the torch path: the plain path keeps ~7 for backward
# (EGNN, measured: 1.7 KB per edge and layer at H = 64, fp32) and its backward makes gradients of
# about as many; a chunk's recomputation holds both at once
EDGE_ROW_TENSORS = 12


class Halo(Protocol):
    """What the block needs of graph parallelism's halo (duck-typed; see scaleq.distributed)."""

    def extend(self, t: Tensor) -> Tensor: ...


class EdgeSums(NamedTuple):
    message_sum: Tensor  # [N, H] sum_j m_ij, in the dtype of h
    coord_sum: Tensor  # [N, D] sum_j (x_i - x_j) phi_x(m_ij), in the dtype of pos


class EdgeWeights(NamedTuple):
    """The parameters the per-edge part needs (slices of the modules' weights, autograd-tracked)."""

    w_edge: Tensor  # [H, 1 + Fe] columns of phi_e's first weight for |d|^2 and the edge attributes
    w2: Tensor  # [H, H] phi_e's second Linear
    b2: Tensor  # [H]
    wx1: Tensor  # [H, H] phi_x's first Linear
    bx1: Tensor  # [H]
    wx2: Tensor  # [1, H] phi_x's last Linear
    bx2: Tensor  # [1] its bias (zeros, not trained, when it has none)


def check_edge_mlps(phi_e: nn.Module, phi_x: nn.Module) -> None:
    """The block runs phi_e = Linear-SiLU-Linear-SiLU and phi_x = Linear-SiLU-Linear(H, 1)."""
    e_ok = (
        isinstance(phi_e, nn.Sequential) and len(phi_e) == 4 and isinstance(phi_e[0], nn.Linear)
        and isinstance(phi_e[1], nn.SiLU) and isinstance(phi_e[2], nn.Linear) and isinstance(phi_e[3], nn.SiLU)
    )
    x_ok = (
        isinstance(phi_x, nn.Sequential) and len(phi_x) == 3 and isinstance(phi_x[0], nn.Linear)
        and isinstance(phi_x[1], nn.SiLU) and isinstance(phi_x[2], nn.Linear) and phi_x[2].out_features == 1
    )
    if not (e_ok and x_ok):
        raise TypeError("the message-passing block needs phi_e = Linear-SiLU-Linear-SiLU and "
                        "phi_x = Linear-SiLU-Linear(H, 1)")


def edge_sums(
    phi_e: nn.Sequential,
    phi_x: nn.Sequential,
    h: Tensor,
    pos: Tensor,
    layout: EdgeLayout,
    *,
    halo: Halo | None = None,
    edge_chunk: EdgeChunk = 0,
    kernel: Kernel = "torch",
    radial_first: bool = False,
) -> EdgeSums:
    """Sums over each receiver's incoming edges of the messages and of the coordinate updates.

    Args:
        phi_e, phi_x: the layer's edge MLP and coordinate head (see :func:`check_edge_mlps`).
        h, pos: the receivers' (owned nodes') features and positions.
        layout: the receiver-sorted edges (:meth:`EdgeLayout.build`).
        halo: under graph parallelism, extends source-side node tensors by the halo rows.
        edge_chunk: K > 0 walks the edges in chunks of about K with recomputation in backward;
            "auto": the same, K from the free memory; 0: all edges at once with plain autograd
            (unless ``kernel`` is "auto" and they do not fit).
        kernel: "torch", "triton" (fused forward and backward kernels) or "auto" (torch, plain or
            chunked by memory: :func:`scaleq.nn.block_options.chunk_rows`).
        radial_first: phi_e's first Linear reads [|d|^2, h_i, h_j, e] (EGHN) instead of
            [h_i, h_j, |d|^2, e] (EGNN, FastEGNN).

    Shapes:
        h: [N, H], pos: [N, D] -> EdgeSums(message_sum [N, H], coord_sum [N, D])
    """
    check_block_options(edge_chunk, kernel)
    if h.shape[0] != layout.num_nodes or pos.shape[0] != layout.num_nodes:
        raise ValueError(
            f"the edge layout has {layout.num_nodes} receivers but h has {h.shape[0]} rows and pos {pos.shape[0]}"
        )
    hidden = h.shape[-1]
    first = phi_e[0]
    weight = first.weight
    if weight.shape[1] != 2 * hidden + 1 + layout.edge_attr.shape[-1]:
        raise ValueError(
            f"phi_e's first Linear takes {weight.shape[1]} inputs, expected 2 H + 1 + Fe = "
            f"{2 * hidden + 1 + layout.edge_attr.shape[-1]} for H={hidden}, Fe={layout.edge_attr.shape[-1]}"
        )
    if radial_first:
        w_radial, w_recv, w_src, w_attr = split_columns(first, (1, hidden, hidden, layout.edge_attr.shape[-1]))
        w_edge = torch.cat([w_radial, w_attr], 1)
    else:
        w_recv, w_src, w_edge = split_columns(first, (hidden, hidden, 1 + layout.edge_attr.shape[-1]))
    # node terms, once per node: (W_i h + b) for receivers, W_j h for sources
    p_recv = F.linear(h, w_recv, first.bias)  # [N, H]
    p_src = F.linear(h, w_src)  # [N, H]
    pos_src = pos
    if halo is not None:
        p_src = halo.extend(p_src)  # [N + N_halo, H]
        pos_src = halo.extend(pos)  # [N + N_halo, D]
    head = phi_x[2]
    weights = EdgeWeights(
        w_edge=w_edge, w2=phi_e[2].weight, b2=phi_e[2].bias, wx1=phi_x[0].weight, bx1=phi_x[0].bias,
        wx2=head.weight, bx2=head.weight.new_zeros(1) if head.bias is None else head.bias,
    )
    message_dtype = h.dtype
    use_triton = resolve_kernel(kernel, pos)
    if use_triton:
        message_sum, coord_sum = FusedEdgeSums.apply(
            layout, message_dtype, p_recv, p_src, pos, pos_src, layout.edge_attr, layout.edge_shift, *weights
        )
    else:
        chunk = layout_chunk(layout, kernel, edge_chunk, EDGE_ROW_TENSORS * hidden * h.element_size())
        message_sum, coord_sum = sum_over_edges(
            functools.partial(_edge_terms_fn, message_dtype=message_dtype), layout, chunk,
            recv=(p_recv, pos), src=(p_src, pos_src), edge=(layout.edge_attr, layout.edge_shift), params=weights,
        )
    return EdgeSums(message_sum, coord_sum)


def layout_chunk(layout: EdgeLayout, kernel: str, edge_chunk: EdgeChunk, bytes_per_row: int) -> int:
    """Rows per chunk of the torch path over ``layout`` (0: all at once): the rule of
    :func:`scaleq.nn.block_options.chunk_rows`, decided once per layout (every layer sharing it,
    and a checkpointed layer's recomputation, take the same path)."""
    if edge_chunk != "auto" and (edge_chunk > 0 or kernel != "auto"):
        return chunk_rows(kernel, edge_chunk, layout.num_edges, bytes_per_row, None)
    return layout.cached(
        ("chunk", kernel, edge_chunk, bytes_per_row),
        lambda: chunk_rows(kernel, edge_chunk, layout.num_edges, bytes_per_row, free_memory(layout.target.device)),
    )


def resolve_kernel(kernel: Kernel, pos: Tensor) -> bool:
    """True when the fused Triton kernel should run: only when asked for ("triton"). "auto" takes
    the torch path: on the first GPU measurements it was 6x faster than the fused kernels
    (:mod:`scaleq.nn.block_options`)."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {list(KERNELS)}, got {kernel!r}")
    if kernel != "triton":
        return False
    from scaleq.nn import triton_edges

    if not triton_edges.available():
        raise RuntimeError("kernel='triton' needs the triton package (pip install triton)")
    if not triton_edges.usable_on(pos.device):
        raise RuntimeError(
            f"kernel='triton' cannot run on {pos.device.type} tensors here: it runs compiled on CUDA, and on "
            "the CPU only under TRITON_INTERPRET=1 (set before triton is first imported)"
        )
    return True


def edge_terms(
    p_recv: Tensor,
    p_src: Tensor,
    pos_recv: Tensor,
    pos_src: Tensor,
    edge_attr: Tensor,
    edge_shift: Tensor | None,
    weights: EdgeWeights,
    message_dtype: torch.dtype,
) -> tuple[Tensor, Tensor]:
    """Per-edge messages and coordinate updates from per-edge gathered node terms.

    Shapes:
        p_recv, p_src: [E, H], pos_recv, pos_src: [E, D], edge_attr: [E, Fe], edge_shift: [E, D]
        or None -> (m [E, H] in ``message_dtype``, c [E, D] in the dtype of pos)
    """
    diff = pos_recv - pos_src  # [E, D] x_i - x_j, kept in coordinate precision
    if edge_shift is not None:
        diff = diff + edge_shift.to(diff.dtype)
    radial = diff.pow(2).sum(-1, keepdim=True)  # [E, 1]
    edge_in = torch.cat([radial.to(weights.w_edge.dtype), edge_attr.to(weights.w_edge.dtype)], -1)  # [E, 1 + Fe]
    # (W_i h + b)_i + [r, e] [w_r, W_e]^T in one addmm, then + (W_j h)_j in place (addmm keeps
    # its inputs, not its output, for backward): two [E, H] passes instead of four
    pre = torch.addmm(p_recv, edge_in, weights.w_edge.t())
    pre = pre.add_(p_src.to(pre.dtype))
    m = F.silu(F.linear(F.silu(pre), weights.w2, weights.b2))  # [E, H]
    phi_x = F.linear(F.silu(F.linear(m, weights.wx1, weights.bx1)), weights.wx2, weights.bx2)  # [E, 1]
    return m.to(message_dtype), diff * phi_x.to(diff.dtype)


def _edge_terms_fn(
    recv: Sequence[Tensor], src: Sequence[Tensor], edge: Sequence[Tensor | None], params: Sequence[Tensor], *,
    message_dtype: torch.dtype,
) -> tuple[Tensor, Tensor]:
    """:func:`edge_terms` in the calling convention of :func:`scaleq.nn.recompute.sum_over_edges`."""
    (p_recv, pos_recv), (p_src, pos_src), (edge_attr, edge_shift) = recv, src, edge
    assert edge_attr is not None
    return edge_terms(p_recv, p_src, pos_recv, pos_src, edge_attr, edge_shift, EdgeWeights(*params), message_dtype)


class FusedEdgeSums(torch.autograd.Function):
    """The block's sums with the fused Triton kernels (:mod:`scaleq.nn.triton_edges`): one kernel
    over all edges forward, one that recomputes in registers backward. Their matrix products run
    at the precision torch would use here (:func:`~scaleq.nn.triton_edges.matmul_precision`:
    autocast's dtype, TF32 where torch allows it for CUDA matmuls), chosen in forward and kept
    for backward. Not differentiable twice."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        layout: EdgeLayout,
        message_dtype: torch.dtype,
        p_recv: Tensor,
        p_src: Tensor,
        pos: Tensor,
        pos_src: Tensor,
        edge_attr: Tensor,
        edge_shift: Tensor | None,
        *params: Tensor,
    ) -> tuple[Tensor, Tensor]:
        from scaleq.nn.triton_edges import fused_edge_sums, matmul_precision

        ctx.layout = layout
        ctx.precision = matmul_precision(pos.dtype, pos.device)
        ctx.save_for_backward(p_recv, p_src, pos, pos_src, edge_attr, edge_shift, *params)
        return fused_edge_sums(
            layout, p_recv, p_src, pos, pos_src, edge_attr, edge_shift, params, message_dtype, ctx.precision
        )

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_message: Tensor, grad_coord: Tensor) -> tuple:
        from scaleq.nn.triton_edges import fused_edge_grads

        p_recv, p_src, pos, pos_src, edge_attr, edge_shift, *params = ctx.saved_tensors
        needs = ctx.needs_input_grad[2:]  # p_recv, p_src, pos, pos_src, edge_attr, edge_shift, *params
        grads = fused_edge_grads(
            ctx.layout, grad_message, grad_coord, p_recv, p_src, pos, pos_src, edge_attr, edge_shift, params,
            need_attr=needs[4], need_shift=needs[5], precision=ctx.precision,
        )
        node_grads = [g if need else None for g, need in zip(grads[:4], needs[:4])]
        param_grads = [g if need else None for g, need in zip(grads.weights, needs[6:])]
        return (None, None, *node_grads, grads.edge_attr, grads.edge_shift, *param_grads)
