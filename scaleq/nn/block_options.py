"""The two options of the message-passing block that every model takes, and the rule for "auto".

``kernel``: "torch" (autograd over torch ops), "triton" (the fused kernels,
:mod:`scaleq.nn.triton_edges`) or "auto" (the default). ``edge_chunk``: 0 (all edges at once),
K > 0 (chunks of about K edges, recomputed in backward: :mod:`scaleq.nn.recompute`) or "auto"
(chunked, the chunk sized from the device's free memory).

The rule for "auto" (:func:`chunk_rows`): ``kernel: auto`` runs the plain path while the edge
activations fit in the device's free memory with room to spare (``PLAIN_HEADROOM`` layers'
worth), and the chunked path, with chunks as large as a share of free memory allows
(``CHUNK_SHARE``), only when they do not. Triton runs only when asked for. The measurements the
rule rests on, with their caveats and the command that made them, are in one place:
docs/large-graphs.md, "The rule of kernel: auto". The decision is taken once per edge layout (:meth:`EdgeLayout.cached`): every layer
sharing a layout, and a checkpointed layer's recomputation, take the same path.
"""

from __future__ import annotations

from typing import Literal

Kernel = Literal["auto", "torch", "triton"]
KERNELS = ("auto", "torch", "triton")
EdgeChunk = int | Literal["auto"]

# plain when PLAIN_HEADROOM x one layer's edge activations fit in free memory: the activations
# of the other layers (4 by default) and the gradients the backward makes of them need the rest
PLAIN_HEADROOM = 8
# an auto-sized chunk's activations (forward, and recomputation with gradients in backward) may
# take this share of the free memory
CHUNK_SHARE = 0.25
MIN_CHUNK = 4096  # below this the per-chunk launch overhead dominates on a GPU


def check_block_options(edge_chunk: EdgeChunk, kernel: str) -> None:
    """Constructor checks of the message-passing block's options, shared by the models."""
    if edge_chunk != "auto" and (isinstance(edge_chunk, bool) or not isinstance(edge_chunk, int) or edge_chunk < 0):
        raise ValueError(f"edge_chunk must be 0 (off), a positive number of edges or 'auto', got {edge_chunk!r}")
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {list(KERNELS)}, got {kernel!r}")


def chunk_rows(kernel: str, edge_chunk: EdgeChunk, rows: int, bytes_per_row: int, free_bytes: int | None) -> int:
    """Rows (edges) per chunk of the torch path; 0: all at once (plain autograd).

    Args:
        kernel, edge_chunk: the block's options (already checked).
        rows: rows of the per-edge work (E, or N for per-node work).
        bytes_per_row: what one row's activations take (forward kept for backward, or one chunk's
            recomputation with its gradients).
        free_bytes: :func:`scaleq.device_memory.free_memory` of the device (only read for "auto"; None: unknown).
    """
    if edge_chunk != "auto" and edge_chunk > 0:
        return edge_chunk
    if edge_chunk == 0 and kernel != "auto":
        return 0
    if free_bytes is None:
        raise ValueError("an 'auto' choice of the edge path needs the device's free memory")
    if edge_chunk == 0 and rows * bytes_per_row * PLAIN_HEADROOM <= free_bytes:
        return 0
    sized = max(MIN_CHUNK, int(free_bytes * CHUNK_SHARE) // max(bytes_per_row, 1))
    return max(1, min(rows, sized))  # one chunk when all rows fit (at least one row: 0 would mean plain)
