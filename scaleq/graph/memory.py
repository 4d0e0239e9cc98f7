"""How much memory a radius graph may take, and the one-line refusal when it would not fit.

The radius graph is built inside the training step, on the training device. A radius that is too
large for the data (a typo, a unit mix-up) turns every graph into a complete one: without a check,
the first sign is the allocator failing deep inside the search (or, on a GPU, an out-of-memory
error, or a machine that swaps). The searches here ask :func:`check_edges_fit` before they
allocate their output; it compares the edges they are about to hold with the device's free memory
and refuses with one line that says what to change.
"""

from __future__ import annotations

import torch

from scaleq.device_memory import free_memory

# Bytes a radius-graph edge costs by the time the builder has finished with it: edge_index (16),
# and the attributes, squared distances and sort keys made from it (float32/int64 temporaries,
# about 48 more). The model's per-edge work comes on top of this, in chunks of its own.
GRAPH_BYTES_PER_EDGE = 64
# The least number of candidate pairs a capped search holds at once, however small N x cap is
# (smaller blocks only cost more kernel launches and host reads).
MIN_BLOCK_PAIRS = 1 << 20


class GraphSizeError(ValueError):
    """The radius graph would not fit in the device's memory (a wrong graph.radius or cap)."""


def pair_budget(num_nodes: int, max_num_neighbors: int | None) -> int | None:
    """Candidate pairs a capped search may hold at once: about N x (cap + 1); None without a cap
    (the output itself is then every pair within r)."""
    if max_num_neighbors is None:
        return None
    return max(num_nodes * (max_num_neighbors + 1), MIN_BLOCK_PAIRS)


def edges_fit(num_edges: int, device: torch.device) -> bool:
    """Whether ``num_edges`` radius-graph edges fit in ``device``'s free memory."""
    return num_edges * GRAPH_BYTES_PER_EDGE <= free_memory(device)


def check_edges_fit(num_edges: int, *, num_nodes: int, radius: float, max_num_neighbors: int | None,
                    device: torch.device, exact: bool) -> None:
    """Refuse, before anything is allocated, a radius graph of ``num_edges`` edges (``exact``:
    counted, else an upper bound) that would not fit in ``device``'s free memory."""
    need = num_edges * GRAPH_BYTES_PER_EDGE
    free = free_memory(device)
    if need <= free:
        return
    cap = f"max_num_neighbors={max_num_neighbors}" if max_num_neighbors is not None else "no max_num_neighbors"
    per_node = num_edges / max(num_nodes, 1)
    raise GraphSizeError(
        f"radius graph: r={radius:g} with {cap} gives {'' if exact else 'up to '}{num_edges:,} edges for "
        f"{num_nodes:,} nodes ({per_node:,.0f} per node), about {_gib(need)} GiB, but {device} has "
        f"{_gib(free)} GiB free; lower graph.radius (are its units the data's?), set a lower "
        "graph.max_num_neighbors, or a smaller data.batch_size"
    )


def _gib(num_bytes: int) -> str:
    return f"{num_bytes / 2**30:.2f}"
