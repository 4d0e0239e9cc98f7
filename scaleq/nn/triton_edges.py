"""Fused Triton kernels for the message-passing block, forward and backward.

Tiles. Edges are sorted by receiver (:class:`scaleq.nn.edge_layout.EdgeLayout`, CSR ``ptr``). A
*block* is ``BLOCK_R`` consecutive receivers with all their edges, ``ptr[first]:ptr[last]``,
walked in tiles of ``BLOCK_E`` edges. Every edge of a block ends at one of the block's receivers,
so whoever runs a block owns those receivers' rows: their sums need no atomics. Inside a tile
they are summed with a one-hot product, ``acc[BLOCK_R, H] += onehot[BLOCK_R, BLOCK_E] @ x[BLOCK_E, H]``
(``onehot[r, e] = 1`` where edge e ends at receiver ``first + r``), on the tensor cores unless
the precision is IEEE, and stored once per block. The torch twin is ``scaleq.nn.message_passing.edge_terms``.

Forward (``edge_sums_kernel``), one program per block: per tile it gathers the precomputed node
terms (W_i h + b)_i and (W_j h)_j and the positions, runs phi_e's rest, phi_x and the SiLUs in
registers, and sums messages and coordinate updates into the block's receivers. No per-edge
tensor is written and no atomics are used, so the sums are the same from run to run.

Backward (``edge_grads_kernel``, FlashAttention-style recomputation), a few persistent programs
per SM, each taking every ``programs``-th block: it recomputes its edges' activations in
registers and back-propagates them.
- Receiver-side gradients (of p_recv and pos): one-hot sums per block, stored once, no atomics.
- Source-side gradients (of p_src and pos_src): sources lie anywhere, so atomic adds; they are
  spread over N_src x H addresses and rarely collide.
- Parameter gradients: each program sums its share over all its blocks in registers and stores
  it as its own row of a [programs, P] buffer; one torch sum over the rows gives the gradients.
  Not atomics: every program would add into the same P addresses, and thousands of programs
  serialise there. With a few programs per SM the buffer stays small (P ~ 2 H^2 per layer) and
  the parameter gradients come out the same from run to run.

Precision (:func:`matmul_precision`). The products with the weight matrices (phi_e's second
Linear, phi_x's first, the edge-attribute columns, and their gradients) run as torch would run
them: fp64 in fp64; under autocast to bf16/fp16 with operands in that dtype; fp32 with TF32
tensor cores when torch allows TF32 for CUDA matmuls (``torch.backends.cuda.matmul``), else IEEE
fp32. Accumulation is fp32 (fp64), and the SiLUs, distances and coordinate updates stay fp32
(fp64). The one-hot sums run in "tf32x3" (three TF32 products: fp32 accuracy on tensor cores)
unless the precision is "ieee". Triton's CPU interpreter ignores ``input_precision`` (its products
are fp32), and its tl.dot cannot multiply bf16 (it stores them as integers), so there the bf16
operands are rounded to bf16 and multiplied as fp32 (the interpreter rounds toward zero where
compiled code rounds to nearest, so its bf16 results are a little further off).

Triton is optional: :func:`available` says whether it imports, and nothing imports it at module
import time. On a CPU it runs under ``TRITON_INTERPRET=1`` (the tests do), which must be set
before the first call in the process; there one small tile configuration runs, on CUDA the
kernels are autotuned over a few (once per hidden width, dtype and precision).
"""

from __future__ import annotations

import functools
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor

from scaleq.triton_status import triton_status

Precision = Literal["ieee", "tf32", "bf16", "fp16"]
PRECISIONS = ("ieee", "tf32", "bf16", "fp16")
# (BLOCK_R, BLOCK_E, num_warps) the CUDA autotuner tries: wider edge tiles feed the tensor cores
# longer, more warps hold the [BLOCK_E, H] activations in fewer registers per thread
CUDA_TILES = ((16, 32, 4), (16, 64, 4), (16, 64, 8), (32, 64, 8))
INTERPRETER_TILES = (16, 32)  # one small shape when interpreted (tl.dot needs every dimension >= 16)
INTERPRETER_PROGRAMS = 3  # backward programs under the interpreter: few, so each walks several blocks
PROGRAMS_PER_SM = 4  # backward programs per streaming multiprocessor on CUDA


def available() -> bool:
    """True when the triton package imports (:func:`scaleq.triton_status.triton_status`)."""
    return triton_status().installed


def interpreted() -> bool:
    """Whether Triton runs under its CPU interpreter (:func:`scaleq.triton_status.triton_status`)."""
    return triton_status().interpreted


def usable_on(device: torch.device) -> bool:
    """Whether the kernel can run on tensors of ``device``: compiled on CUDA, interpreted on CPU."""
    return triton_status().runs_on(device)


def tf32_allowed() -> bool:
    """Whether torch lets CUDA fp32 matmuls use TF32 tensor cores (``torch.backends.cuda.matmul.
    fp32_precision == "tf32"``, or ``allow_tf32`` on torch releases before that switch)."""
    matmul = torch.backends.cuda.matmul
    try:
        return matmul.fp32_precision == "tf32"  # resolves "none" to the global setting
    except AttributeError:
        return bool(matmul.allow_tf32)


def matmul_precision(dtype: torch.dtype, device: torch.device) -> Precision:
    """How the kernels' weight products run for inputs of ``dtype`` on ``device``, as torch runs
    its own matmuls there: "ieee" for fp64; the autocast dtype ("bf16", "fp16") when autocast is
    on for the device; "tf32" when :func:`tf32_allowed`; else "ieee"."""
    if dtype == torch.float64:
        return "ieee"
    if torch.is_autocast_enabled(device.type):
        low = torch.get_autocast_dtype(device.type)
        if low in (torch.bfloat16, torch.float16):
            return "bf16" if low == torch.bfloat16 else "fp16"
    return "tf32" if tf32_allowed() else "ieee"


@functools.cache
def _kernels(interpret: bool) -> tuple[Any, Any]:  # cached per interpreter mode: triton.jit reads it when it decorates
    """The forward and backward kernels, each wrapped in ``triton.autotune`` (one configuration
    under the interpreter); ``.fn`` is the plain jit function."""
    import triton
    import triton.language as tl

    @triton.jit
    def edge_sums_kernel(
        ptr_ptr, source_ptr, target_ptr, p_recv_ptr, p_src_ptr, pos_ptr, pos_src_ptr, attr_ptr, shift_ptr,  # noqa: ANN001
        w_r_ptr, w_e_ptr, w2_ptr, b2_ptr, wx1_ptr, bx1_ptr, wx2_ptr, bx2_ptr, message_ptr, coord_ptr,  # noqa: ANN001
        num_nodes,  # noqa: ANN001
        H: tl.constexpr, HP: tl.constexpr, D: tl.constexpr, DP: tl.constexpr, FE: tl.constexpr, FP: tl.constexpr,
        HAS_SHIFT: tl.constexpr, ROUND: tl.constexpr, OPERAND: tl.constexpr, PRECISION: tl.constexpr,
        SUM_PRECISION: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_E: tl.constexpr,
    ):
        first = tl.program_id(0) * BLOCK_R
        last = tl.minimum(first + BLOCK_R, num_nodes)
        edge_begin = tl.load(ptr_ptr + first)
        edge_end = tl.load(ptr_ptr + last)
        rows = tl.arange(0, BLOCK_R)  # receiver first + r
        cols = tl.arange(0, HP)  # hidden channel
        col_ok = cols < H
        dims = tl.arange(0, DP)
        dim_ok = dims < D
        feats = tl.arange(0, FP)
        feat_ok = feats < FE
        square = col_ok[:, None] & col_ok[None, :]
        compute = w2_ptr.dtype.element_ty
        # weights transposed to [in, out] (rows @ W^T is tl.dot(rows, wT)), loaded once, as dot operands:
        # every weight product's operands are rounded to ROUND and reach tl.dot as OPERAND (_dot_options)
        w2t = tl.load(w2_ptr + cols[None, :] * H + cols[:, None], mask=square, other=0.0).to(ROUND).to(OPERAND)
        wx1t = tl.load(wx1_ptr + cols[None, :] * H + cols[:, None], mask=square, other=0.0).to(ROUND).to(OPERAND)
        b2 = tl.load(b2_ptr + cols, mask=col_ok, other=0.0)
        bx1 = tl.load(bx1_ptr + cols, mask=col_ok, other=0.0)
        wx2 = tl.load(wx2_ptr + cols, mask=col_ok, other=0.0)
        bx2 = tl.load(bx2_ptr)
        w_r = tl.load(w_r_ptr + cols, mask=col_ok, other=0.0)
        if FE > 0:
            w_et = tl.load(w_e_ptr + cols[None, :] * FE + feats[:, None], mask=feat_ok[:, None] & col_ok[None, :],
                           other=0.0).to(ROUND).to(OPERAND)  # [FP, HP]
        acc_m = tl.zeros((BLOCK_R, HP), dtype=compute)
        acc_c = tl.zeros((BLOCK_R, DP), dtype=compute)
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
            if FE > 0:
                attr = tl.load(attr_ptr + edges[:, None] * FE + feats[None, :], mask=edge_ok[:, None] & feat_ok[None, :],
                               other=0.0).to(compute)  # [BLOCK_E, FP]
                pre = tl.dot(attr.to(ROUND).to(OPERAND), w_et, pre, input_precision=PRECISION)
            # SiLU written out (x sigmoid(x)): Triton's interpreter does not find jit helpers defined
            # next to the kernels in this function
            a1 = pre / (1.0 + tl.exp(-pre))
            pre2 = tl.dot(a1.to(ROUND).to(OPERAND), w2t, input_precision=PRECISION) + b2[None, :]
            m = pre2 / (1.0 + tl.exp(-pre2))  # [BLOCK_E, HP]
            pre3 = tl.dot(m.to(ROUND).to(OPERAND), wx1t, input_precision=PRECISION) + bx1[None, :]
            hidden_x = pre3 / (1.0 + tl.exp(-pre3))
            phi_x = tl.sum(hidden_x * wx2[None, :], axis=1) + bx2  # [BLOCK_E]
            # the tile's edges summed into their receivers (padded edges match no row)
            onehot = ((target - first)[None, :] == rows[:, None]) & edge_ok[None, :]
            onehot = onehot.to(compute)  # [BLOCK_R, BLOCK_E]
            acc_m = tl.dot(onehot, m, acc_m, input_precision=SUM_PRECISION)
            acc_c = tl.dot(onehot, diff * phi_x[:, None], acc_c, input_precision=SUM_PRECISION)
        receivers = (first + rows).to(tl.int64)
        recv_ok = receivers < last
        tl.store(message_ptr + receivers[:, None] * H + cols[None, :], acc_m, mask=recv_ok[:, None] & col_ok[None, :])
        tl.store(coord_ptr + receivers[:, None] * D + dims[None, :], acc_c, mask=recv_ok[:, None] & dim_ok[None, :])

    @triton.jit
    def edge_grads_kernel(
        ptr_ptr, source_ptr, target_ptr, p_recv_ptr, p_src_ptr, pos_ptr, pos_src_ptr, attr_ptr, shift_ptr,  # noqa: ANN001
        w_r_ptr, w_e_ptr, w2_ptr, b2_ptr, wx1_ptr, bx1_ptr, wx2_ptr, bx2_ptr, grad_message_ptr, grad_coord_ptr,  # noqa: ANN001
        g_p_recv_ptr, g_p_src_ptr, g_pos_ptr, g_pos_src_ptr, g_attr_ptr, g_shift_ptr, partial_ptr,  # noqa: ANN001
        num_nodes,  # noqa: ANN001
        H: tl.constexpr, HP: tl.constexpr, D: tl.constexpr, DP: tl.constexpr, FE: tl.constexpr, FP: tl.constexpr,
        HAS_SHIFT: tl.constexpr, NEED_ATTR: tl.constexpr, NEED_SHIFT: tl.constexpr, ROUND: tl.constexpr,
        OPERAND: tl.constexpr, PRECISION: tl.constexpr, SUM_PRECISION: tl.constexpr,
        BLOCK_R: tl.constexpr, BLOCK_E: tl.constexpr,
    ):
        program = tl.program_id(0)
        rows = tl.arange(0, BLOCK_R)
        cols = tl.arange(0, HP)
        col_ok = cols < H
        dims = tl.arange(0, DP)
        dim_ok = dims < D
        feats = tl.arange(0, FP)
        feat_ok = feats < FE
        square = col_ok[:, None] & col_ok[None, :]
        wide = col_ok[:, None] & feat_ok[None, :]
        compute = w2_ptr.dtype.element_ty
        # weights as [out, in] (the backward products) and transposed [in, out] (the recomputed forward);
        # dot operands rounded to ROUND, handed to tl.dot as OPERAND, as in the forward
        w2 = tl.load(w2_ptr + cols[:, None] * H + cols[None, :], mask=square, other=0.0).to(ROUND).to(OPERAND)
        wx1 = tl.load(wx1_ptr + cols[:, None] * H + cols[None, :], mask=square, other=0.0).to(ROUND).to(OPERAND)
        w2t = tl.trans(w2)
        wx1t = tl.trans(wx1)
        if FE > 0:
            w_e = tl.load(w_e_ptr + cols[:, None] * FE + feats[None, :], mask=wide, other=0.0).to(ROUND).to(OPERAND)
            w_et = tl.trans(w_e)  # [FP, HP]
        b2 = tl.load(b2_ptr + cols, mask=col_ok, other=0.0)
        bx1 = tl.load(bx1_ptr + cols, mask=col_ok, other=0.0)
        wx2 = tl.load(wx2_ptr + cols, mask=col_ok, other=0.0)
        bx2 = tl.load(bx2_ptr)
        w_r = tl.load(w_r_ptr + cols, mask=col_ok, other=0.0)
        # this program's share of the parameter gradients, over all its blocks: its row of the buffer
        acc_w2 = tl.zeros((HP, HP), dtype=compute)
        acc_wx1 = tl.zeros((HP, HP), dtype=compute)
        acc_w_e = tl.zeros((HP, FP), dtype=compute)
        acc_b2 = tl.zeros((HP,), dtype=compute)
        acc_bx1 = tl.zeros((HP,), dtype=compute)
        acc_wx2 = tl.zeros((HP,), dtype=compute)
        acc_bx2 = tl.zeros((BLOCK_E,), dtype=compute)  # summed over edges at the end
        acc_w_r = tl.zeros((HP,), dtype=compute)
        for block in range(program, tl.cdiv(num_nodes, BLOCK_R), tl.num_programs(0)):
            first = block * BLOCK_R
            last = tl.minimum(first + BLOCK_R, num_nodes)
            edge_begin = tl.load(ptr_ptr + first)
            edge_end = tl.load(ptr_ptr + last)
            acc_recv = tl.zeros((BLOCK_R, HP), dtype=compute)  # the block's receivers' gradients
            acc_pos = tl.zeros((BLOCK_R, DP), dtype=compute)
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
                pre = tl.load(p_recv_ptr + target[:, None] * H + cols[None, :], mask=row_ok, other=0.0).to(compute)
                pre += tl.load(p_src_ptr + source[:, None] * H + cols[None, :], mask=row_ok, other=0.0).to(compute)
                pre += radial[:, None] * w_r[None, :]
                if FE > 0:
                    attr = tl.load(attr_ptr + edges[:, None] * FE + feats[None, :],
                                   mask=edge_ok[:, None] & feat_ok[None, :], other=0.0).to(compute)
                    attr_op = attr.to(ROUND).to(OPERAND)  # [BLOCK_E, FP]
                    pre = tl.dot(attr_op, w_et, pre, input_precision=PRECISION)
                s1 = 1.0 / (1.0 + tl.exp(-pre))
                a1_op = (pre * s1).to(ROUND).to(OPERAND)
                pre2 = tl.dot(a1_op, w2t, input_precision=PRECISION) + b2[None, :]
                s2 = 1.0 / (1.0 + tl.exp(-pre2))
                m = pre2 * s2
                m_op = m.to(ROUND).to(OPERAND)
                pre3 = tl.dot(m_op, wx1t, input_precision=PRECISION) + bx1[None, :]
                s3 = 1.0 / (1.0 + tl.exp(-pre3))
                hidden_x = pre3 * s3
                phi_x = tl.sum(hidden_x * wx2[None, :], axis=1) + bx2
                # the backward of c = diff phi_x and of the message m, edge by edge (SiLU' = s (1 + x (1 - s)))
                g_m = tl.load(grad_message_ptr + target[:, None] * H + cols[None, :], mask=row_ok,
                              other=0.0).to(compute)
                g_c = tl.load(grad_coord_ptr + target[:, None] * D + dims[None, :], mask=vec_ok, other=0.0).to(compute)
                g_phi = tl.sum(g_c * diff, axis=1)  # [BLOCK_E]
                g_diff = g_c * phi_x[:, None]
                acc_wx2 += tl.sum(g_phi[:, None] * hidden_x, axis=0)
                acc_bx2 += g_phi
                # (padded edges and channels load zero output gradients, so every term below is zero there)
                g_pre3 = g_phi[:, None] * wx2[None, :] * (s3 * (1.0 + pre3 * (1.0 - s3)))
                acc_bx1 += tl.sum(g_pre3, axis=0)
                g_pre3_op = g_pre3.to(ROUND).to(OPERAND)
                acc_wx1 = tl.dot(tl.trans(g_pre3_op), m_op, acc_wx1, input_precision=PRECISION)
                g_m = tl.dot(g_pre3_op, wx1, g_m, input_precision=PRECISION)
                g_pre2 = g_m * (s2 * (1.0 + pre2 * (1.0 - s2)))
                acc_b2 += tl.sum(g_pre2, axis=0)
                g_pre2_op = g_pre2.to(ROUND).to(OPERAND)
                acc_w2 = tl.dot(tl.trans(g_pre2_op), a1_op, acc_w2, input_precision=PRECISION)
                g_pre = tl.dot(g_pre2_op, w2, input_precision=PRECISION) * (s1 * (1.0 + pre * (1.0 - s1)))
                acc_w_r += tl.sum(g_pre * radial[:, None], axis=0)
                g_diff += 2.0 * diff * tl.sum(g_pre * w_r[None, :], axis=1)[:, None]
                if FE > 0:
                    g_pre_op = g_pre.to(ROUND).to(OPERAND)
                    acc_w_e = tl.dot(tl.trans(g_pre_op), attr_op, acc_w_e, input_precision=PRECISION)
                    if NEED_ATTR:
                        g_attr = tl.dot(g_pre_op, w_e, input_precision=PRECISION)  # [BLOCK_E, FP]
                        tl.store(g_attr_ptr + edges[:, None] * FE + feats[None, :], g_attr,
                                 mask=edge_ok[:, None] & feat_ok[None, :])
                if NEED_SHIFT:
                    tl.store(g_shift_ptr + edges[:, None] * D + dims[None, :], g_diff, mask=vec_ok)
                # receiver side: into the block's rows; source side: anywhere, so atomics
                onehot = ((target - first)[None, :] == rows[:, None]) & edge_ok[None, :]
                onehot = onehot.to(compute)  # [BLOCK_R, BLOCK_E]
                acc_recv = tl.dot(onehot, g_pre, acc_recv, input_precision=SUM_PRECISION)
                acc_pos = tl.dot(onehot, g_diff, acc_pos, input_precision=SUM_PRECISION)
                tl.atomic_add(g_p_src_ptr + source[:, None] * H + cols[None, :], g_pre, mask=row_ok)
                tl.atomic_add(g_pos_src_ptr + source[:, None] * D + dims[None, :], -g_diff, mask=vec_ok)
            receivers = (first + rows).to(tl.int64)
            recv_ok = receivers < last
            tl.store(g_p_recv_ptr + receivers[:, None] * H + cols[None, :], acc_recv,
                     mask=recv_ok[:, None] & col_ok[None, :])
            tl.store(g_pos_ptr + receivers[:, None] * D + dims[None, :], acc_pos, mask=recv_ok[:, None] & dim_ok[None, :])
        # the row of this program: [w2 (H H) | wx1 (H H) | w_e (H FE) | w_r | b2 | bx1 | wx2 (H each) | bx2]
        part = partial_ptr + program.to(tl.int64) * (2 * H * H + H * FE + 4 * H + 1)
        tl.store(part + cols[:, None] * H + cols[None, :], acc_w2, mask=square)
        tl.store(part + H * H + cols[:, None] * H + cols[None, :], acc_wx1, mask=square)
        tl.store(part + 2 * H * H + cols[:, None] * FE + feats[None, :], acc_w_e, mask=wide)
        vectors = part + 2 * H * H + H * FE
        tl.store(vectors + cols, acc_w_r, mask=col_ok)
        tl.store(vectors + H + cols, acc_b2, mask=col_ok)
        tl.store(vectors + 2 * H + cols, acc_bx1, mask=col_ok)
        tl.store(vectors + 3 * H + cols, acc_wx2, mask=col_ok)
        tl.store(vectors + 4 * H, tl.sum(acc_bx2, axis=0))

    key = ["H", "D", "FE", "HAS_SHIFT", "ROUND", "PRECISION"]  # (the autotuner adds the tensors' dtypes)
    tiles = [(*INTERPRETER_TILES, 4)] if interpret else CUDA_TILES
    configs = [triton.Config({"BLOCK_R": r, "BLOCK_E": e}, num_warps=w, num_stages=1) for r, e, w in tiles]
    forward = triton.autotune(configs, key=key)(edge_sums_kernel)
    # tuning runs the backward several times: zero its atomic targets before each run
    backward = triton.autotune(configs, key=[*key, "NEED_ATTR", "NEED_SHIFT"],
                               reset_to_zero=["g_p_src_ptr", "g_pos_src_ptr"])(edge_grads_kernel)
    return forward, backward


def _dot_options(precision: Precision, compute: torch.dtype) -> dict[str, Any]:
    """The kernels' precision constexprs: ROUND, the dtype the weight products' operands are rounded
    to; OPERAND, the dtype they reach tl.dot in (ROUND when compiled; the compute dtype under the
    interpreter, see the module docstring); PRECISION and SUM_PRECISION, tl.dot's input_precision
    for the weight products and for the one-hot sums."""
    import triton.language as tl

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    wide = tl.float64 if compute == torch.float64 else tl.float32
    if compute == torch.float64:
        precision = "ieee"  # fp64 has no lower-precision products here
    round_to = {"bf16": tl.bfloat16, "fp16": tl.float16}.get(precision, wide)
    return {
        "ROUND": round_to, "OPERAND": wide if interpreted() else round_to,
        "PRECISION": "tf32" if precision == "tf32" else "ieee",
        "SUM_PRECISION": "ieee" if precision == "ieee" else "tf32x3",
    }


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

    # tl.dot needs every dimension >= 16 (the one-hot sums multiply [BLOCK_E, D] tiles too); the
    # padding is masked
    return {"H": hidden, "HP": max(16, triton.next_power_of_2(hidden)), "D": dim,
            "DP": max(16, triton.next_power_of_2(dim)), "FE": fe, "FP": max(16, triton.next_power_of_2(fe))}


def _contiguous(t: Tensor) -> Tensor:
    return t.detach().contiguous()


def _backward_programs(num_nodes: int, device: torch.device) -> int:
    """How many persistent programs the backward launches (rows of its parameter-gradient buffer):
    a few per SM on CUDA, never more than there are blocks at the smallest BLOCK_R tried."""
    if interpreted():
        cap, block_r = INTERPRETER_PROGRAMS, INTERPRETER_TILES[0]
    else:
        cap = PROGRAMS_PER_SM * torch.cuda.get_device_properties(device).multi_processor_count
        block_r = min(r for r, _, _ in CUDA_TILES)
    return max(1, min(cap, -(-num_nodes // block_r)))


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
    precision: Precision = "ieee",
) -> tuple[Tensor, Tensor]:
    """The block's forward sums with the fused kernel (no autograd: the caller's Function
    provides the backward, :func:`fused_edge_grads`). ``precision``: see :func:`matmul_precision`.

    Shapes:
        p_recv: [N, H], p_src: [N_src, H], pos: [N, D], pos_src: [N_src, D], edge_attr: [E, Fe],
        edge_shift: [E, D] or None -> (message_sum [N, H], coord_sum [N, D])
    """
    import triton

    prep = _prepare(pos, edge_attr, edge_shift, weights)
    n, hidden, dim = layout.num_nodes, p_recv.shape[-1], pos.shape[-1]
    options = _dot_options(precision, prep.compute)
    if n == 0 or layout.num_edges == 0:
        return (torch.zeros(n, hidden, dtype=message_dtype, device=pos.device),
                torch.zeros(n, dim, dtype=pos.dtype, device=pos.device))
    # every receiver's row is stored by the program that owns it (isolated ones as zeros)
    message_sum = torch.empty(n, hidden, dtype=prep.compute, device=pos.device)
    coord_sum = torch.empty(n, dim, dtype=prep.compute, device=pos.device)
    fe = edge_attr.shape[-1]
    forward_kernel, _ = _kernels(interpreted())
    forward_kernel[lambda meta: (triton.cdiv(n, meta["BLOCK_R"]),)](
        layout.ptr, layout.source, layout.target, _contiguous(p_recv), _contiguous(p_src), _contiguous(pos),
        _contiguous(pos_src), prep.edge_attr if fe else coord_sum,  # any pointer when there is nothing to read
        coord_sum if prep.edge_shift is None else prep.edge_shift,
        prep.w_r, prep.w_e if fe else prep.w_r, prep.w2, prep.b2, prep.wx1, prep.bx1, prep.wx2, prep.bx2,
        message_sum, coord_sum, n, **_sizes(hidden, dim, fe), HAS_SHIFT=edge_shift is not None, **options,
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
    precision: Precision = "ieee",
) -> EdgeGrads:
    """The backward of :func:`fused_edge_sums`: persistent programs recompute their blocks' edge
    activations in registers (as the forward did) and back-propagate them. Receiver-side
    gradients are summed per block and stored; source-side ones are scattered with atomic adds
    (so their last bits in fp32 vary run to run); parameter gradients are summed per program
    into a [programs, P] buffer and reduced here by one sum. No per-edge tensor is written except
    the edge-attribute and shift gradients when asked for.

    Shapes:
        grad_message: [N, H], grad_coord: [N, D], the rest as in :func:`fused_edge_sums`
    """
    prep = _prepare(pos, edge_attr, edge_shift, weights)
    n, hidden, dim = layout.num_nodes, p_recv.shape[-1], pos.shape[-1]
    fe = edge_attr.shape[-1]
    device = pos.device
    options = _dot_options(precision, prep.compute)

    def zeros(*shape: int) -> Tensor:
        return torch.zeros(*shape, dtype=prep.compute, device=device)

    def empty(*shape: int) -> Tensor:  # for what the kernel writes in full
        return torch.empty(*shape, dtype=prep.compute, device=device)

    size = 2 * hidden * hidden + hidden * fe + 4 * hidden + 1  # P, one row of the parameter-gradient buffer
    live = n > 0 and layout.num_edges > 0
    programs = _backward_programs(n, device) if live else 0
    make = empty if live else zeros
    g = {"p_recv": make(*p_recv.shape), "p_src": zeros(*p_src.shape), "pos": make(*pos.shape),
         "pos_src": zeros(*pos_src.shape), "attr": make(*edge_attr.shape) if need_attr else None,
         "shift": make(*edge_shift.shape) if need_shift and edge_shift is not None else None,
         "partial": empty(programs, size)}
    if live:
        dummy = g["partial"]  # any pointer where there is nothing to read or write
        _, backward_kernel = _kernels(interpreted())
        backward_kernel[(programs,)](
            layout.ptr, layout.source, layout.target, _contiguous(p_recv), _contiguous(p_src), _contiguous(pos),
            _contiguous(pos_src), prep.edge_attr if fe else dummy,
            dummy if prep.edge_shift is None else prep.edge_shift,
            prep.w_r, prep.w_e if fe else dummy, prep.w2, prep.b2, prep.wx1, prep.bx1, prep.wx2, prep.bx2,
            _contiguous(grad_message), _contiguous(grad_coord),
            g["p_recv"], g["p_src"], g["pos"], g["pos_src"], dummy if g["attr"] is None else g["attr"],
            dummy if g["shift"] is None else g["shift"], g["partial"], n,
            **_sizes(hidden, dim, fe), HAS_SHIFT=edge_shift is not None, NEED_ATTR=g["attr"] is not None and fe > 0,
            NEED_SHIFT=g["shift"] is not None, **options,
        )
    # the programs' shares, summed; then the row split back into the parameters
    total = g["partial"].sum(0) if programs else zeros(size)
    square = hidden * hidden
    g_w2, g_wx1, g_w_e, g_w_r, g_b2, g_bx1, g_wx2, g_bx2 = total.split(
        [square, square, hidden * fe, hidden, hidden, hidden, hidden, 1])

    def like(grad: Tensor | None, t: Tensor | None) -> Tensor | None:
        return None if grad is None or t is None else grad.to(t.dtype)

    w_edge, w2, b2, wx1, bx1, wx2, bx2 = weights
    return EdgeGrads(
        like(g["p_recv"], p_recv), like(g["p_src"], p_src), like(g["pos"], pos), like(g["pos_src"], pos_src),
        like(g["attr"], edge_attr), like(g["shift"], edge_shift),
        (torch.cat([g_w_r[:, None], g_w_e.view(hidden, fe)], 1).to(w_edge.dtype), g_w2.view_as(w2).to(w2.dtype),
         g_b2.to(b2.dtype), g_wx1.view_as(wx1).to(wx1.dtype), g_bx1.to(bx1.dtype), g_wx2.view_as(wx2).to(wx2.dtype),
         g_bx2.to(bx2.dtype)),
    )
