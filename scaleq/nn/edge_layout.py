"""Edges sorted by receiver (CSR), built once per model forward and shared by its layers."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


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
