"""The message-passing block every EGNN-style model's edge work goes through.

For each edge j -> i (receiver i, source j) the block computes, as EGNN's published layer does,

    d_ij = x_i - x_j (+ s_ij)                                   s_ij: periodic image shift, if any
    m_ij = phi_e(h_i, h_j, |d_ij|^2, e_ij)                      phi_e = Linear-SiLU-Linear-SiLU
    c_ij = d_ij phi_x(m_ij)                                     phi_x = Linear-SiLU-Linear(H, 1)

(EGHN's published layer orders phi_e's inputs |d_ij|^2, h_i, h_j, e_ij: ``radial_first``; its
phi_x's last Linear has a bias, EGNN's has none.)

and returns only node-level sums over each receiver's edges: ``message_sum`` [N, H] = sum_j m_ij
and ``coord_sum`` [N, D] = sum_j c_ij (models divide by the degree where they take means).

How it is computed (the function is the same, up to rounding):

- The first Linear of phi_e is split by input: W [h_i, h_j, r, e] + b = (W_i h + b)_i + (W_j h)_j
  + w_r r + W_e e. The two node terms are computed once per node (two [N, H] x [H, H] products)
  instead of once per edge; the Linear modules themselves are unchanged (the weight is sliced by
  columns at run time), so state dicts and checkpoints stay as they were.
- Edges are sorted by receiver once per model forward (:class:`EdgeLayout`, CSR ``ptr`` plus the
  sorted sources) and the layout is shared by all layers.
- ``edge_chunk = K > 0``: a custom autograd Function walks the sorted edges in chunks of K edges
  (a chunk may end inside one receiver's edges: the sums simply continue in the next chunk) and
  keeps only node-level tensors; its backward recomputes each chunk's edge activations. Peak
  memory is O(N H + K H) per layer instead of O(E H).
- ``kernel="triton"`` (or ``"auto"`` on CUDA when Triton imports): fused Triton kernels compute
  the forward sums and, recomputing, the backward without writing any per-edge tensor
  (:mod:`scaleq.nn.triton_edges`); ``edge_chunk`` has no effect there.
- ``halo`` (graph parallelism): the source-side node tensors (the current positions and the
  source term W_j h) go through ``halo.extend`` before they are gathered by source index, so
  sources may be halo nodes held by other ranks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Kernel = Literal["auto", "torch", "triton"]
KERNELS = ("auto", "torch", "triton")


class Halo(Protocol):
    """What the block needs of graph parallelism's halo (duck-typed; see scaleq.distributed)."""

    def extend(self, t: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class EdgeLayout:
    """Edges sorted by receiver (stable), built once per model forward and shared by its layers.

    Attributes:
        source: [E] source j of each sorted edge (indexes the source node set, which under
            graph parallelism is the owned nodes followed by the halo nodes).
        target: [E] receiver i of each sorted edge, ascending.
        (On CUDA source and target are int32 when every node index fits: half the bytes each
        gather reads, once per layer forward and backward. On the CPU int32 indices made gathers
        and index_add_ no faster, at small sizes slower, so they stay int64 there.)
        ptr: [N + 1] CSR offsets: receiver i's edges are ``ptr[i]:ptr[i + 1]``.
        edge_attr: [E, Fe] edge attributes in sorted order.
        edge_shift: [E, D] periodic shifts in sorted order, or None.
        num_nodes: N, the number of receivers.
    """

    source: Tensor
    target: Tensor
    ptr: Tensor
    edge_attr: Tensor
    edge_shift: Tensor | None
    num_nodes: int

    @staticmethod
    def build(edge_index: Tensor, num_nodes: int, edge_attr: Tensor, edge_shift: Tensor | None = None) -> EdgeLayout:
        """Sort the edges by receiver.

        Shapes:
            edge_index: [2, E] (j -> i), edge_attr: [E, Fe], edge_shift: [E, D] or None
        """
        if edge_index.dim() != 2 or edge_index.shape[0] != 2:
            raise ValueError(f"edge_index must have shape [2, E], got {tuple(edge_index.shape)}")
        num_edges = edge_index.shape[1]
        if edge_attr.shape[0] != num_edges:
            raise ValueError(f"edge_attr has {edge_attr.shape[0]} rows but edge_index has {num_edges} edges")
        if edge_shift is not None and edge_shift.shape[0] != num_edges:
            raise ValueError(f"edge_shift has {edge_shift.shape[0]} rows but edge_index has {num_edges} edges")
        source, target = edge_index[0], edge_index[1]
        if edge_index.is_cuda and num_edges and int(edge_index.max()) <= torch.iinfo(torch.int32).max:
            source, target = source.to(torch.int32), target.to(torch.int32)
        order = torch.argsort(target, stable=True)
        counts = torch.bincount(target, minlength=num_nodes)
        ptr = torch.zeros(num_nodes + 1, dtype=torch.long, device=target.device)
        torch.cumsum(counts, 0, out=ptr[1:])
        return EdgeLayout(
            source=source[order], target=target[order], ptr=ptr, edge_attr=edge_attr[order],
            edge_shift=None if edge_shift is None else edge_shift[order], num_nodes=num_nodes,
        )

    @property
    def num_edges(self) -> int:
        return int(self.source.shape[0])

    def degree(self, dtype: torch.dtype) -> Tensor:
        """In-degree of every receiver, at least 1 (so means over no edges are 0). Shapes: -> [N, 1]."""
        return (self.ptr[1:] - self.ptr[:-1]).clamp(min=1).to(dtype).unsqueeze(-1)


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
    edge_chunk: int = 0,
    kernel: Kernel = "torch",
    radial_first: bool = False,
) -> EdgeSums:
    """Sums over each receiver's incoming edges of the messages and of the coordinate updates.

    Args:
        phi_e, phi_x: the layer's edge MLP and coordinate head (see :func:`check_edge_mlps`).
        h, pos: the receivers' (owned nodes') features and positions.
        layout: the receiver-sorted edges (:meth:`EdgeLayout.build`).
        halo: under graph parallelism, extends source-side node tensors by the halo rows.
        edge_chunk: K > 0 walks the edges in chunks of K with recomputation in backward; 0: all
            edges at once with plain autograd.
        kernel: "torch", "triton" (fused forward and backward kernels) or "auto" (Triton on CUDA if it imports).
        radial_first: phi_e's first Linear reads [|d|^2, h_i, h_j, e] (EGHN) instead of
            [h_i, h_j, |d|^2, e] (EGNN, FastEGNN).

    Shapes:
        h: [N, H], pos: [N, D] -> EdgeSums(message_sum [N, H], coord_sum [N, D])
    """
    if edge_chunk < 0:
        raise ValueError(f"edge_chunk must be 0 (off) or a positive number of edges, got {edge_chunk}")
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
        w_recv, w_src = weight[:, 1 : 1 + hidden], weight[:, 1 + hidden : 1 + 2 * hidden]
        w_edge = torch.cat([weight[:, :1], weight[:, 1 + 2 * hidden :]], 1)
    else:
        w_recv, w_src, w_edge = weight[:, :hidden], weight[:, hidden : 2 * hidden], weight[:, 2 * hidden :]
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
    if not use_triton and edge_chunk == 0:
        m, coord = edge_terms(
            p_recv[layout.target], p_src[layout.source], pos[layout.target], pos_src[layout.source],
            layout.edge_attr, layout.edge_shift, weights, message_dtype,
        )
        message_sum = torch.zeros(layout.num_nodes, hidden, dtype=message_dtype, device=h.device)
        coord_sum = torch.zeros(layout.num_nodes, pos.shape[-1], dtype=pos.dtype, device=pos.device)
        return EdgeSums(message_sum.index_add_(0, layout.target, m), coord_sum.index_add_(0, layout.target, coord))
    message_sum, coord_sum = RecomputedEdgeSums.apply(
        layout, edge_chunk, use_triton, message_dtype, p_recv, p_src, pos, pos_src, layout.edge_attr,
        layout.edge_shift, *weights,
    )
    return EdgeSums(message_sum, coord_sum)


def resolve_kernel(kernel: Kernel, pos: Tensor) -> bool:
    """True when the fused Triton kernel should run: always for "triton"; for "auto" on CUDA with
    fp32 coordinates when Triton imports (fp64 stays on the torch path there)."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {list(KERNELS)}, got {kernel!r}")
    if kernel == "torch":
        return False
    from scaleq.nn import triton_edges

    if kernel == "triton":
        if not triton_edges.available():
            raise RuntimeError("kernel='triton' needs the triton package (pip install triton)")
        if not triton_edges.usable_on(pos.device):
            raise RuntimeError(
                f"kernel='triton' cannot run on {pos.device.type} tensors here: it runs compiled on CUDA, and on "
                "the CPU only under TRITON_INTERPRET=1 (set before triton is first imported)"
            )
        return True
    return pos.device.type == "cuda" and pos.dtype == torch.float32 and triton_edges.usable_on(pos.device)


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


class RecomputedEdgeSums(torch.autograd.Function):
    """Edge sums whose forward keeps no per-edge tensor and whose backward recomputes them.

    With the fused Triton kernels, forward and backward are one kernel each over all edges
    (:mod:`scaleq.nn.triton_edges`). Otherwise the forward walks chunks of ``chunk``
    receiver-sorted edges with the torch twin, and the backward, for each chunk, recomputes the
    chunk's edges from the saved node-level inputs under autograd (the same autocast state as the
    forward), scatters the gradients of the chunk's per-edge rows back to their nodes, and sums
    the parameter gradients over chunks. Not differentiable twice.
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        layout: EdgeLayout,
        chunk: int,
        use_triton: bool,
        message_dtype: torch.dtype,
        p_recv: Tensor,
        p_src: Tensor,
        pos: Tensor,
        pos_src: Tensor,
        edge_attr: Tensor,
        edge_shift: Tensor | None,
        *params: Tensor,
    ) -> tuple[Tensor, Tensor]:
        device_type = pos.device.type
        ctx.autocast = (device_type, torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type))
        ctx.layout, ctx.chunk, ctx.message_dtype, ctx.use_triton = layout, chunk, message_dtype, use_triton
        weights = EdgeWeights(*params)
        if use_triton:
            from scaleq.nn.triton_edges import fused_edge_sums

            message_sum, coord_sum = fused_edge_sums(
                layout, p_recv, p_src, pos, pos_src, edge_attr, edge_shift, weights, message_dtype
            )
        else:
            hidden, n = p_recv.shape[-1], layout.num_nodes
            message_sum = torch.zeros(n, hidden, dtype=message_dtype, device=pos.device)
            coord_sum = torch.zeros(n, pos.shape[-1], dtype=pos.dtype, device=pos.device)
            for start in range(0, layout.num_edges, chunk):
                rows = slice(start, start + chunk)
                target, source = layout.target[rows], layout.source[rows]
                m, coord = edge_terms(
                    p_recv[target], p_src[source], pos[target], pos_src[source], edge_attr[rows],
                    None if edge_shift is None else edge_shift[rows], weights, message_dtype,
                )
                message_sum.index_add_(0, target, m)
                coord_sum.index_add_(0, target, coord)
        ctx.save_for_backward(p_recv, p_src, pos, pos_src, edge_attr, edge_shift, *params)
        return message_sum, coord_sum

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_message: Tensor, grad_coord: Tensor) -> tuple:
        p_recv, p_src, pos, pos_src, edge_attr, edge_shift, *params = ctx.saved_tensors
        layout: EdgeLayout = ctx.layout
        needs = ctx.needs_input_grad[4:]  # p_recv, p_src, pos, pos_src, edge_attr, edge_shift, *params
        if ctx.use_triton:
            from scaleq.nn.triton_edges import fused_edge_grads

            grads = fused_edge_grads(
                layout, grad_message, grad_coord, p_recv, p_src, pos, pos_src, edge_attr, edge_shift, params,
                need_attr=needs[4], need_shift=needs[5],
            )
            node_grads = [g if need else None for g, need in zip(grads[:4], needs[:4])]
            param_grads = [g if need else None for g, need in zip(grads.weights, needs[6:])]
            return (None, None, None, None, *node_grads, grads.edge_attr, grads.edge_shift, *param_grads)
        node_inputs = (p_recv, p_src, pos, pos_src)
        node_grads = [torch.zeros_like(t) if need else None for t, need in zip(node_inputs, needs[:4])]
        attr_grad = torch.zeros_like(edge_attr) if needs[4] else None
        shift_grad = torch.zeros_like(edge_shift) if edge_shift is not None and needs[5] else None
        leaves = [p.detach().requires_grad_(need) for p, need in zip(params, needs[6:])]
        param_grads = [torch.zeros_like(p) if need else None for p, need in zip(params, needs[6:])]
        device_type, autocast_on, autocast_dtype = ctx.autocast
        for start in range(0, layout.num_edges, ctx.chunk):
            rows = slice(start, start + ctx.chunk)
            target, source = layout.target[rows], layout.source[rows]
            index = (target, source, target, source)
            with torch.enable_grad(), torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_on):
                gathered = [t[i].detach().requires_grad_(need) for t, i, need in zip(node_inputs, index, needs[:4])]
                attr = edge_attr[rows].detach().requires_grad_(needs[4])
                shift = None if edge_shift is None else edge_shift[rows].detach().requires_grad_(shift_grad is not None)
                m, coord = edge_terms(*gathered, attr, shift, EdgeWeights(*leaves), ctx.message_dtype)
            wrt = [*gathered, attr, *([] if shift is None else [shift]), *leaves]
            wanted = [t for t in wrt if t.requires_grad]
            if not wanted:
                break
            grads = iter(torch.autograd.grad(
                (m, coord), wanted, (grad_message[target].to(m.dtype), grad_coord[target].to(coord.dtype)),
                allow_unused=True,
            ))
            for k, t in enumerate(gathered):
                if t.requires_grad:
                    _accumulate_rows(node_grads[k], index[k], next(grads))
            if attr.requires_grad:
                _add_(attr_grad[rows], next(grads))
            if shift is not None and shift.requires_grad:
                _add_(shift_grad[rows], next(grads))
            for k, leaf in enumerate(leaves):
                if leaf.requires_grad:
                    _add_(param_grads[k], next(grads))
        return (None, None, None, None, *node_grads, attr_grad, shift_grad, *param_grads)


def _accumulate_rows(out: Tensor, index: Tensor, rows: Tensor | None) -> None:
    if rows is not None:
        out.index_add_(0, index, rows.to(out.dtype))


def _add_(out: Tensor, value: Tensor | None) -> None:
    if value is not None:
        out.add_(value.to(out.dtype))
