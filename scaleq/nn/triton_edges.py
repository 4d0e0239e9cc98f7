"""Fused Triton kernels for the message-passing block, forward and backward.

Forward: one program per block of ``BLOCK_R`` receivers walks their receiver-sorted edges in
tiles of ``BLOCK_E``: it gathers the precomputed node terms (W_i h + b)_i and (W_j h)_j and the
positions, runs phi_e's rest, phi_x and the SiLUs in registers, and adds the messages and
coordinate updates into the receivers' rows. No per-edge tensor is written to memory. The torch
twin is ``scaleq.nn.message_passing.edge_terms``.

Backward (FlashAttention-style): the same programs recompute their edges' activations in
registers from the saved node-level inputs, back-propagate through them, scatter the node
gradients with atomic adds, and sum the parameter gradients per program before one atomic add
per program into the global gradients.

Triton is optional: :func:`available` says whether it imports, and nothing imports it at module
import time. On a CPU it runs under ``TRITON_INTERPRET=1`` (the tests do), which must be set
before the first call in the process. Computation is in fp32 (fp64 for fp64 inputs); bf16
node terms from autocast are read and widened to fp32. Matrix products use IEEE precision
(no TF32), so results match the torch path to fp32 rounding.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import torch
from torch import Tensor

from scaleq.triton_status import triton_status

BLOCK_R = 16  # receivers per program
BLOCK_E = 32  # edges per tile (tl.dot needs >= 16)


def available() -> bool:
    """True when the triton package imports (:func:`scaleq.triton_status.triton_status`)."""
    return triton_status().installed


def interpreted() -> bool:
    """Whether Triton runs under its CPU interpreter (:func:`scaleq.triton_status.triton_status`)."""
    return triton_status().interpreted


def usable_on(device: torch.device) -> bool:
    """Whether the kernel can run on tensors of ``device``: compiled on CUDA, interpreted on CPU."""
    return triton_status().runs_on(device)


@functools.cache
def _kernels(interpret: bool) -> tuple[Any, Any]:  # cached per interpreter mode: triton.jit reads it when it decorates
    import triton
    import triton.language as tl

    @triton.jit
    def edge_sums_kernel(
        ptr_ptr, source_ptr, target_ptr, p_recv_ptr, p_src_ptr, pos_ptr, pos_src_ptr, attr_ptr, shift_ptr,  # noqa: ANN001
        w_r_ptr, w_e_ptr, w2_ptr, b2_ptr, wx1_ptr, bx1_ptr, wx2_ptr, bx2_ptr, message_ptr, coord_ptr,  # noqa: ANN001
        num_nodes,  # noqa: ANN001
        H: tl.constexpr, HP: tl.constexpr, D: tl.constexpr, DP: tl.constexpr, FE: tl.constexpr,
        HAS_SHIFT: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_E: tl.constexpr,
    ):
        pid = tl.program_id(0)
        first = pid * BLOCK_R
        last = tl.minimum(first + BLOCK_R, num_nodes)
        edge_begin = tl.load(ptr_ptr + first)
        edge_end = tl.load(ptr_ptr + last)
        cols = tl.arange(0, HP)  # hidden channel
        col_ok = cols < H
        dims = tl.arange(0, DP)
        dim_ok = dims < D
        square = col_ok[:, None] & col_ok[None, :]
        compute = w2_ptr.dtype.element_ty
        # weights, loaded once per program; transposed so that rows @ W^T is tl.dot(rows, wT)
        w2t = tl.load(w2_ptr + cols[None, :] * H + cols[:, None], mask=square, other=0.0)  # [in, out]
        wx1t = tl.load(wx1_ptr + cols[None, :] * H + cols[:, None], mask=square, other=0.0)
        b2 = tl.load(b2_ptr + cols, mask=col_ok, other=0.0)
        bx1 = tl.load(bx1_ptr + cols, mask=col_ok, other=0.0)
        wx2 = tl.load(wx2_ptr + cols, mask=col_ok, other=0.0)
        bx2 = tl.load(bx2_ptr)
        w_r = tl.load(w_r_ptr + cols, mask=col_ok, other=0.0)
        for tile in range(edge_begin, edge_end, BLOCK_E):
            edges = tile + tl.arange(0, BLOCK_E)
            edge_ok = edges < edge_end
            # node indices may be int32: widen before they are multiplied into offsets (N H > 2^31)
            source = tl.load(source_ptr + edges, mask=edge_ok, other=0).to(tl.int64)
            target = tl.load(target_ptr + edges, mask=edge_ok, other=0).to(tl.int64)
            vec_ok = edge_ok[:, None] & dim_ok[None, :]
            diff = tl.load(pos_ptr + target[:, None] * D + dims[None, :], mask=vec_ok, other=0.0).to(compute)
            diff -= tl.load(pos_src_ptr + source[:, None] * D + dims[None, :], mask=vec_ok, other=0.0).to(compute)
            if HAS_SHIFT:
                diff += tl.load(shift_ptr + edges[:, None] * D + dims[None, :], mask=vec_ok, other=0.0).to(compute)
            radial = tl.sum(diff * diff, axis=1)  # [BLOCK_E]
            row_ok = edge_ok[:, None] & col_ok[None, :]
            pre = tl.load(p_recv_ptr + target[:, None] * H + cols[None, :], mask=row_ok, other=0.0).to(compute)
            pre += tl.load(p_src_ptr + source[:, None] * H + cols[None, :], mask=row_ok, other=0.0).to(compute)
            pre += radial[:, None] * w_r[None, :]
            for f in tl.static_range(FE):
                attr = tl.load(attr_ptr + edges * FE + f, mask=edge_ok, other=0.0).to(compute)
                w_e = tl.load(w_e_ptr + cols * FE + f, mask=col_ok, other=0.0)
                pre += attr[:, None] * w_e[None, :]
            # SiLU written out (x sigmoid(x)): nested jit helpers are not visible to the interpreter
            a1 = pre / (1.0 + tl.exp(-pre))
            pre2 = tl.dot(a1, w2t, input_precision="ieee") + b2[None, :]
            m = pre2 / (1.0 + tl.exp(-pre2))  # [BLOCK_E, HP]
            pre3 = tl.dot(m, wx1t, input_precision="ieee") + bx1[None, :]
            hidden_x = pre3 / (1.0 + tl.exp(-pre3))
            phi_x = tl.sum(hidden_x * wx2[None, :], axis=1) + bx2  # [BLOCK_E]
            tl.atomic_add(message_ptr + target[:, None] * H + cols[None, :], m, mask=row_ok)
            tl.atomic_add(coord_ptr + target[:, None] * D + dims[None, :], diff * phi_x[:, None], mask=vec_ok)


    @triton.jit
    def edge_grads_kernel(
        ptr_ptr, source_ptr, target_ptr, p_recv_ptr, p_src_ptr, pos_ptr, pos_src_ptr, attr_ptr, shift_ptr,  # noqa: ANN001
        w_r_ptr, w_e_ptr, w2_ptr, b2_ptr, wx1_ptr, bx1_ptr, wx2_ptr, bx2_ptr, grad_message_ptr, grad_coord_ptr,  # noqa: ANN001
        g_p_recv_ptr, g_p_src_ptr, g_pos_ptr, g_pos_src_ptr, g_attr_ptr, g_shift_ptr,  # noqa: ANN001
        g_w_r_ptr, g_w_e_ptr, g_w2_ptr, g_b2_ptr, g_wx1_ptr, g_bx1_ptr, g_wx2_ptr, g_bx2_ptr,  # noqa: ANN001
        num_nodes,  # noqa: ANN001
        H: tl.constexpr, HP: tl.constexpr, D: tl.constexpr, DP: tl.constexpr, FE: tl.constexpr, FP: tl.constexpr,
        HAS_SHIFT: tl.constexpr, NEED_ATTR: tl.constexpr, NEED_SHIFT: tl.constexpr,
        BLOCK_R: tl.constexpr, BLOCK_E: tl.constexpr,
    ):
        pid = tl.program_id(0)
        first = pid * BLOCK_R
        last = tl.minimum(first + BLOCK_R, num_nodes)
        edge_begin = tl.load(ptr_ptr + first)
        edge_end = tl.load(ptr_ptr + last)
        cols = tl.arange(0, HP)
        col_ok = cols < H
        dims = tl.arange(0, DP)
        dim_ok = dims < D
        feats = tl.arange(0, FP)
        feat_ok = feats < FE
        square = col_ok[:, None] & col_ok[None, :]
        wide = col_ok[:, None] & feat_ok[None, :]
        compute = w2_ptr.dtype.element_ty
        # weights as [out, in] (backward products) and transposed [in, out] (the recomputed forward)
        w2 = tl.load(w2_ptr + cols[:, None] * H + cols[None, :], mask=square, other=0.0)
        wx1 = tl.load(wx1_ptr + cols[:, None] * H + cols[None, :], mask=square, other=0.0)
        w2t = tl.trans(w2)
        wx1t = tl.trans(wx1)
        w_e = tl.load(w_e_ptr + cols[:, None] * FE + feats[None, :], mask=wide, other=0.0)  # [HP, FP]
        w_et = tl.trans(w_e)
        b2 = tl.load(b2_ptr + cols, mask=col_ok, other=0.0)
        bx1 = tl.load(bx1_ptr + cols, mask=col_ok, other=0.0)
        wx2 = tl.load(wx2_ptr + cols, mask=col_ok, other=0.0)
        bx2 = tl.load(bx2_ptr)
        w_r = tl.load(w_r_ptr + cols, mask=col_ok, other=0.0)
        # this program's share of the parameter gradients, added to the global sums once at the end
        acc_w2 = tl.zeros((HP, HP), dtype=compute)
        acc_wx1 = tl.zeros((HP, HP), dtype=compute)
        acc_w_e = tl.zeros((HP, FP), dtype=compute)
        acc_b2 = tl.zeros((HP,), dtype=compute)
        acc_bx1 = tl.zeros((HP,), dtype=compute)
        acc_wx2 = tl.zeros((HP,), dtype=compute)
        acc_bx2 = tl.zeros((BLOCK_E,), dtype=compute)  # summed over edges at the end
        acc_w_r = tl.zeros((HP,), dtype=compute)
        for tile in range(edge_begin, edge_end, BLOCK_E):
            edges = tile + tl.arange(0, BLOCK_E)
            edge_ok = edges < edge_end
            # node indices may be int32: widen before they are multiplied into offsets (N H > 2^31)
            source = tl.load(source_ptr + edges, mask=edge_ok, other=0).to(tl.int64)
            target = tl.load(target_ptr + edges, mask=edge_ok, other=0).to(tl.int64)
            vec_ok = edge_ok[:, None] & dim_ok[None, :]
            row_ok = edge_ok[:, None] & col_ok[None, :]
            # the forward, recomputed in registers
            diff = tl.load(pos_ptr + target[:, None] * D + dims[None, :], mask=vec_ok, other=0.0).to(compute)
            diff -= tl.load(pos_src_ptr + source[:, None] * D + dims[None, :], mask=vec_ok, other=0.0).to(compute)
            if HAS_SHIFT:
                diff += tl.load(shift_ptr + edges[:, None] * D + dims[None, :], mask=vec_ok, other=0.0).to(compute)
            radial = tl.sum(diff * diff, axis=1)
            attr = tl.load(attr_ptr + edges[:, None] * FE + feats[None, :], mask=edge_ok[:, None] & feat_ok[None, :],
                           other=0.0).to(compute)  # [BLOCK_E, FP]
            pre = tl.load(p_recv_ptr + target[:, None] * H + cols[None, :], mask=row_ok, other=0.0).to(compute)
            pre += tl.load(p_src_ptr + source[:, None] * H + cols[None, :], mask=row_ok, other=0.0).to(compute)
            pre += radial[:, None] * w_r[None, :]
            pre += tl.dot(attr, w_et, input_precision="ieee")
            s1 = 1.0 / (1.0 + tl.exp(-pre))
            a1 = pre * s1
            pre2 = tl.dot(a1, w2t, input_precision="ieee") + b2[None, :]
            s2 = 1.0 / (1.0 + tl.exp(-pre2))
            m = pre2 * s2
            pre3 = tl.dot(m, wx1t, input_precision="ieee") + bx1[None, :]
            s3 = 1.0 / (1.0 + tl.exp(-pre3))
            hidden_x = pre3 * s3
            phi_x = tl.sum(hidden_x * wx2[None, :], axis=1) + bx2
            # the backward of c = diff phi_x and of the message m, edge by edge (SiLU' = s (1 + x (1 - s)))
            g_m = tl.load(grad_message_ptr + target[:, None] * H + cols[None, :], mask=row_ok, other=0.0).to(compute)
            g_c = tl.load(grad_coord_ptr + target[:, None] * D + dims[None, :], mask=vec_ok, other=0.0).to(compute)
            g_phi = tl.sum(g_c * diff, axis=1)  # [BLOCK_E]
            g_diff = g_c * phi_x[:, None]
            acc_wx2 += tl.sum(g_phi[:, None] * hidden_x, axis=0)
            acc_bx2 += g_phi
            g_pre3 = g_phi[:, None] * wx2[None, :] * (s3 * (1.0 + pre3 * (1.0 - s3)))
            acc_bx1 += tl.sum(g_pre3, axis=0)
            acc_wx1 += tl.dot(tl.trans(g_pre3), m, input_precision="ieee")
            g_m += tl.dot(g_pre3, wx1, input_precision="ieee")
            g_pre2 = g_m * (s2 * (1.0 + pre2 * (1.0 - s2)))
            acc_b2 += tl.sum(g_pre2, axis=0)
            acc_w2 += tl.dot(tl.trans(g_pre2), a1, input_precision="ieee")
            g_pre = tl.dot(g_pre2, w2, input_precision="ieee") * (s1 * (1.0 + pre * (1.0 - s1)))
            g_pre = tl.where(row_ok, g_pre, 0.0)  # padded edges contribute nothing below
            acc_w_r += tl.sum(g_pre * radial[:, None], axis=0)
            acc_w_e += tl.dot(tl.trans(g_pre), attr, input_precision="ieee")
            g_diff += 2.0 * diff * tl.sum(g_pre * w_r[None, :], axis=1)[:, None]
            tl.atomic_add(g_p_recv_ptr + target[:, None] * H + cols[None, :], g_pre, mask=row_ok)
            tl.atomic_add(g_p_src_ptr + source[:, None] * H + cols[None, :], g_pre, mask=row_ok)
            tl.atomic_add(g_pos_ptr + target[:, None] * D + dims[None, :], g_diff, mask=vec_ok)
            tl.atomic_add(g_pos_src_ptr + source[:, None] * D + dims[None, :], -g_diff, mask=vec_ok)
            if NEED_ATTR:
                g_attr = tl.dot(g_pre, w_e, input_precision="ieee")  # [BLOCK_E, FP]
                tl.store(g_attr_ptr + edges[:, None] * FE + feats[None, :], g_attr,
                         mask=edge_ok[:, None] & feat_ok[None, :])
            if NEED_SHIFT:
                tl.store(g_shift_ptr + edges[:, None] * D + dims[None, :], g_diff, mask=vec_ok)
        tl.atomic_add(g_w2_ptr + cols[:, None] * H + cols[None, :], acc_w2, mask=square)
        tl.atomic_add(g_wx1_ptr + cols[:, None] * H + cols[None, :], acc_wx1, mask=square)
        tl.atomic_add(g_w_e_ptr + cols[:, None] * FE + feats[None, :], acc_w_e, mask=wide)
        tl.atomic_add(g_b2_ptr + cols, acc_b2, mask=col_ok)
        tl.atomic_add(g_bx1_ptr + cols, acc_bx1, mask=col_ok)
        tl.atomic_add(g_wx2_ptr + cols, acc_wx2, mask=col_ok)
        tl.atomic_add(g_bx2_ptr, tl.sum(acc_bx2, axis=0))
        tl.atomic_add(g_w_r_ptr + cols, acc_w_r, mask=col_ok)

    return edge_sums_kernel, edge_grads_kernel


class _Prepared(NamedTuple):
    """The kernels' inputs in the compute dtype, contiguous, with the edge-input weight split into
    w_r [H] (the |d|^2 column) and w_e [H, Fe] (the attribute columns)."""

    compute: torch.dtype
    w_r: Tensor
    w_e: Tensor
    w2: Tensor
    b2: Tensor
    wx1: Tensor
    bx1: Tensor
    wx2: Tensor
    bx2: Tensor
    edge_attr: Tensor
    edge_shift: Tensor | None


def _prepare(pos: Tensor, edge_attr: Tensor, edge_shift: Tensor | None, weights: Any) -> _Prepared:
    compute = torch.float64 if pos.dtype == torch.float64 else torch.float32

    def prepared(t: Tensor) -> Tensor:
        return t.detach().to(compute).contiguous()

    w_edge, w2, b2, wx1, bx1, wx2, bx2 = (prepared(t) for t in weights)
    return _Prepared(
        compute, w_edge[:, 0].contiguous(), w_edge[:, 1:].contiguous(), w2, b2, wx1, bx1, wx2.view(-1), bx2,
        prepared(edge_attr), None if edge_shift is None else prepared(edge_shift),
    )


def _sizes(hidden: int, dim: int, fe: int) -> dict[str, int]:
    import triton

    # tl.dot needs every dimension >= 16; the padding is masked
    return {"H": hidden, "HP": max(16, triton.next_power_of_2(hidden)), "D": dim, "DP": triton.next_power_of_2(dim),
            "FE": fe}


def _contiguous(t: Tensor) -> Tensor:
    return t.detach().contiguous()


def fused_edge_sums(
    layout: Any,
    p_recv: Tensor,
    p_src: Tensor,
    pos: Tensor,
    pos_src: Tensor,
    edge_attr: Tensor,
    edge_shift: Tensor | None,
    weights: Any,
    message_dtype: torch.dtype,
) -> tuple[Tensor, Tensor]:
    """The block's forward sums with the fused kernel (no autograd: the caller's Function
    provides the backward, :func:`fused_edge_grads`).

    Shapes:
        p_recv: [N, H], p_src: [N_src, H], pos: [N, D], pos_src: [N_src, D], edge_attr: [E, Fe],
        edge_shift: [E, D] or None -> (message_sum [N, H], coord_sum [N, D])
    """
    import triton

    prep = _prepare(pos, edge_attr, edge_shift, weights)
    n, hidden, dim = layout.num_nodes, p_recv.shape[-1], pos.shape[-1]
    message_sum = torch.zeros(n, hidden, dtype=prep.compute, device=pos.device)
    coord_sum = torch.zeros(n, dim, dtype=prep.compute, device=pos.device)
    if n == 0 or layout.num_edges == 0:
        return message_sum.to(message_dtype), coord_sum.to(pos.dtype)
    fe = edge_attr.shape[-1]
    forward_kernel, _ = _kernels(interpreted())
    forward_kernel[(triton.cdiv(n, BLOCK_R),)](
        layout.ptr, layout.source, layout.target, _contiguous(p_recv), _contiguous(p_src), _contiguous(pos),
        _contiguous(pos_src), prep.edge_attr if fe else coord_sum,  # any pointer when there is nothing to read
        coord_sum if prep.edge_shift is None else prep.edge_shift,
        prep.w_r, prep.w_e if fe else prep.w_r, prep.w2, prep.b2, prep.wx1, prep.bx1, prep.wx2, prep.bx2,
        message_sum, coord_sum, n, **_sizes(hidden, dim, fe),
        HAS_SHIFT=edge_shift is not None, BLOCK_R=BLOCK_R, BLOCK_E=BLOCK_E,
    )
    return message_sum.to(message_dtype), coord_sum.to(pos.dtype)


class EdgeGrads(NamedTuple):
    """Gradients of the block's inputs (None where not asked for)."""

    p_recv: Tensor  # [N, H]
    p_src: Tensor  # [N_src, H]
    pos: Tensor  # [N, D]
    pos_src: Tensor  # [N_src, D]
    edge_attr: Tensor | None  # [E, Fe]
    edge_shift: Tensor | None  # [E, D]
    weights: tuple[Tensor, ...]  # like EdgeWeights: w_edge [H, 1 + Fe], w2, b2, wx1, bx1, wx2 [1, H], bx2 [1]


def fused_edge_grads(
    layout: Any,
    grad_message: Tensor,
    grad_coord: Tensor,
    p_recv: Tensor,
    p_src: Tensor,
    pos: Tensor,
    pos_src: Tensor,
    edge_attr: Tensor,
    edge_shift: Tensor | None,
    weights: Any,
    *,
    need_attr: bool,
    need_shift: bool,
) -> EdgeGrads:
    """The backward of :func:`fused_edge_sums`: one program per block of receivers recomputes its
    edges' activations in registers (as the forward did) and back-propagates them; node gradients
    are scattered with atomic adds, parameter gradients summed per program and added once. No
    per-edge tensor is written except the edge-attribute and shift gradients when asked for.
    Atomic adds make the summation order (and so the last bits of fp32 results) vary run to run.

    Shapes:
        grad_message: [N, H], grad_coord: [N, D], the rest as in :func:`fused_edge_sums`
    """
    import triton

    prep = _prepare(pos, edge_attr, edge_shift, weights)
    n, hidden, dim = layout.num_nodes, p_recv.shape[-1], pos.shape[-1]
    fe = edge_attr.shape[-1]
    device = pos.device

    def zeros(*shape: int) -> Tensor:
        return torch.zeros(*shape, dtype=prep.compute, device=device)

    g = {"p_recv": zeros(*p_recv.shape), "p_src": zeros(*p_src.shape), "pos": zeros(*pos.shape),
         "pos_src": zeros(*pos_src.shape), "attr": zeros(*edge_attr.shape) if need_attr else None,
         "shift": zeros(*edge_shift.shape) if need_shift and edge_shift is not None else None,
         "w_r": zeros(hidden), "w_e": zeros(hidden, fe), "w2": zeros(hidden, hidden), "b2": zeros(hidden),
         "wx1": zeros(hidden, hidden), "bx1": zeros(hidden), "wx2": zeros(hidden), "bx2": zeros(1)}
    if n > 0 and layout.num_edges > 0:
        dummy = g["w_r"]  # any pointer where there is nothing to read or write
        _, backward_kernel = _kernels(interpreted())
        backward_kernel[(triton.cdiv(n, BLOCK_R),)](
            layout.ptr, layout.source, layout.target, _contiguous(p_recv), _contiguous(p_src), _contiguous(pos),
            _contiguous(pos_src), prep.edge_attr if fe else dummy,
            dummy if prep.edge_shift is None else prep.edge_shift,
            prep.w_r, prep.w_e if fe else dummy, prep.w2, prep.b2, prep.wx1, prep.bx1, prep.wx2, prep.bx2,
            _contiguous(grad_message), _contiguous(grad_coord),
            g["p_recv"], g["p_src"], g["pos"], g["pos_src"], dummy if g["attr"] is None else g["attr"],
            dummy if g["shift"] is None else g["shift"],
            g["w_r"], g["w_e"] if fe else dummy, g["w2"], g["b2"], g["wx1"], g["bx1"], g["wx2"], g["bx2"], n,
            **_sizes(hidden, dim, fe), FP=max(16, triton.next_power_of_2(fe)),
            HAS_SHIFT=edge_shift is not None, NEED_ATTR=g["attr"] is not None and fe > 0,
            NEED_SHIFT=g["shift"] is not None, BLOCK_R=BLOCK_R, BLOCK_E=BLOCK_E,
        )

    def like(grad: Tensor | None, t: Tensor | None) -> Tensor | None:
        return None if grad is None or t is None else grad.to(t.dtype)

    w_edge, w2, b2, wx1, bx1, wx2, bx2 = weights
    return EdgeGrads(
        like(g["p_recv"], p_recv), like(g["p_src"], p_src), like(g["pos"], pos), like(g["pos_src"], pos_src),
        like(g["attr"], edge_attr), like(g["shift"], edge_shift),
        (torch.cat([g["w_r"][:, None], g["w_e"]], 1).to(w_edge.dtype), g["w2"].to(w2.dtype), g["b2"].to(b2.dtype),
         g["wx1"].to(wx1.dtype), g["bx1"].to(bx1.dtype), g["wx2"].view_as(wx2).to(wx2.dtype), g["bx2"].to(bx2.dtype)),
    )
