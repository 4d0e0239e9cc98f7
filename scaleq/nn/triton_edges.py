"""Fused Triton kernel for the forward pass of the message-passing block.

One program per block of ``BLOCK_R`` receivers walks their receiver-sorted edges in tiles of
``BLOCK_E``: it gathers the precomputed node terms (W_i h + b)_i and (W_j h)_j and the positions,
runs phi_e's rest, phi_x and the SiLUs in registers, and adds the messages and coordinate
updates into the receivers' rows. No per-edge tensor is written to memory. The torch twin is
``scaleq.nn.message_passing.edge_terms``; the backward recomputes with it, chunk by chunk.

Triton is optional: :func:`available` says whether it imports, and nothing imports it at module
import time. On a CPU it runs under ``TRITON_INTERPRET=1`` (the tests do), which must be set
before the first call in the process. Computation is in fp32 (fp64 for fp64 inputs); bf16
node terms from autocast are read and widened to fp32. Matrix products use IEEE precision
(no TF32), so results match the torch path to fp32 rounding.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import torch
from torch import Tensor

BLOCK_R = 16  # receivers per program
BLOCK_E = 32  # edges per tile (tl.dot needs >= 16)


@functools.cache
def available() -> bool:
    """True when the triton package imports."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def interpreted() -> bool:
    """Whether Triton runs under its CPU interpreter (TRITON_INTERPRET=1, read when triton is
    first imported in the process)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def usable_on(device: torch.device) -> bool:
    """Whether the kernel can run on tensors of ``device``: compiled on CUDA, interpreted on CPU."""
    if not available():
        return False
    return interpreted() if device.type == "cpu" else device.type == "cuda" and not interpreted()


@functools.cache
def _kernel(interpret: bool) -> Any:  # cached per interpreter mode: triton.jit reads it when it decorates
    import triton
    import triton.language as tl

    @triton.jit
    def edge_sums_kernel(
        ptr_ptr, source_ptr, target_ptr, p_recv_ptr, p_src_ptr, pos_ptr, pos_src_ptr, attr_ptr, shift_ptr,  # noqa: ANN001
        w_r_ptr, w_e_ptr, w2_ptr, b2_ptr, wx1_ptr, bx1_ptr, wx2_ptr, message_ptr, coord_ptr,  # noqa: ANN001
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
        w_r = tl.load(w_r_ptr + cols, mask=col_ok, other=0.0)
        for tile in range(edge_begin, edge_end, BLOCK_E):
            edges = tile + tl.arange(0, BLOCK_E)
            edge_ok = edges < edge_end
            source = tl.load(source_ptr + edges, mask=edge_ok, other=0)
            target = tl.load(target_ptr + edges, mask=edge_ok, other=0)
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
            phi_x = tl.sum(hidden_x * wx2[None, :], axis=1)  # [BLOCK_E]
            tl.atomic_add(message_ptr + target[:, None] * H + cols[None, :], m, mask=row_ok)
            tl.atomic_add(coord_ptr + target[:, None] * D + dims[None, :], diff * phi_x[:, None], mask=vec_ok)

    return edge_sums_kernel


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
    provides the backward).

    Shapes:
        p_recv: [N, H], p_src: [N_src, H], pos: [N, D], pos_src: [N_src, D], edge_attr: [E, Fe],
        edge_shift: [E, D] or None -> (message_sum [N, H], coord_sum [N, D])
    """
    import triton

    compute = torch.float64 if pos.dtype == torch.float64 else torch.float32
    n, hidden, dim = layout.num_nodes, p_recv.shape[-1], pos.shape[-1]
    fe = edge_attr.shape[-1]
    message_sum = torch.zeros(n, hidden, dtype=compute, device=pos.device)
    coord_sum = torch.zeros(n, dim, dtype=compute, device=pos.device)
    if n == 0 or layout.num_edges == 0:
        return message_sum.to(message_dtype), coord_sum.to(pos.dtype)

    def prepared(t: Tensor) -> Tensor:
        return t.detach().to(compute).contiguous()

    w_edge, *rest = (prepared(t) for t in weights)
    w = [w_edge[:, 0].contiguous(), w_edge[:, 1:].contiguous(), *rest]  # w_r [H], w_e [H, Fe], ...
    shift = prepared(edge_shift) if edge_shift is not None else coord_sum  # any pointer when absent
    kernel = _kernel(interpreted())
    grid = (triton.cdiv(n, BLOCK_R),)
    kernel[grid](
        layout.ptr, layout.source, layout.target, p_recv.detach().contiguous(), p_src.detach().contiguous(),
        pos.detach().contiguous(), pos_src.detach().contiguous(), prepared(edge_attr) if fe else coord_sum, shift,
        w[0], w[1] if fe else w[0], w[2], w[3], w[4], w[5], w[6], message_sum, coord_sum, n,
        H=hidden, HP=max(16, triton.next_power_of_2(hidden)), D=dim, DP=triton.next_power_of_2(dim), FE=fe,
        HAS_SHIFT=edge_shift is not None, BLOCK_R=BLOCK_R, BLOCK_E=BLOCK_E,
    )
    return message_sum.to(message_dtype), coord_sum.to(pos.dtype)
