"""What an autograd graph is made of: the backward nodes behind a tensor, by name.

Used to check that a model's forward has no advanced-index gathers (``x[index]``), whose
backward (``IndexBackward0``) sorts the indices and accumulates duplicates serially on CUDA: the
worst case when every node of a graph reads the same per-graph row. ``index_select`` (backward
``index_add_``) or a sorted-segment gather are the forms to use.
"""

from __future__ import annotations

from collections import Counter

from torch import Tensor


def backward_nodes(output: Tensor) -> list[object]:
    """Every distinct node of the autograd graph behind ``output`` (each visited once)."""
    if output.grad_fn is None:
        return []
    seen: dict[int, object] = {}
    stack = [output.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen[id(node)] = node
        stack.extend(next_node for next_node, _ in node.next_functions)
    return list(seen.values())


def backward_node_names(output: Tensor) -> Counter[str]:
    """How often each kind of backward node (``IndexBackward0``, ``AddmmBackward0``, ...) occurs."""
    return Counter(node.name() for node in backward_nodes(output))


def index_gathers(output: Tensor) -> list[tuple[tuple[int, ...], int]]:
    """(shape of the source, rows read) of every advanced-index gather (``IndexBackward0``) on
    the way to ``output``: ``z[batch]`` with z [B, C, D] and batch [N] gives ((B, C, D), N)."""
    found = []
    for node in backward_nodes(output):
        if node.name() == "IndexBackward0":
            shape = tuple(int(d) for d in node._saved_self_sym_sizes)  # type: ignore[attr-defined]
            indices = [t for t in node._saved_indices if t is not None]  # type: ignore[attr-defined]
            found.append((shape, max((int(t.numel()) for t in indices), default=0)))
    return found
