"""Edges sorted by receiver (CSR), built once per model forward and shared by its layers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from scaleq.nn.segments import Segments


class Chunk(NamedTuple):
    """Edges ``edges`` (a slice of the sorted edges) are exactly all edges of receivers ``receivers``."""

    edges: slice
    receivers: slice


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
        one_per_receiver: edge i runs into receiver i (:meth:`per_node`): gathers at and sums
            over receivers are the identity.
    """

    source: Tensor
    target: Tensor
    ptr: Tensor
    edge_attr: Tensor
    edge_shift: Tensor | None
    num_nodes: int
    one_per_receiver: bool = False
    # per-layout decisions and host-side chunk bounds, computed once (:meth:`cached`)
    _cache: dict[Any, Any] = field(default_factory=dict, init=False, compare=False, repr=False)

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
            source=source.index_select(0, order), target=target.index_select(0, order), ptr=ptr,
            edge_attr=edge_attr.index_select(0, order),
            edge_shift=None if edge_shift is None else edge_shift.index_select(0, order), num_nodes=num_nodes,
        )

    @staticmethod
    def from_batch(batch: Any, num_nodes: int) -> EdgeLayout:  # noqa: ANN401 (a PyG Batch or alike)
        """The receiver-sorted edges of ``batch`` (with ``edge_shift`` when the graph is periodic)."""
        return EdgeLayout.build(batch.edge_index, num_nodes, batch.edge_attr, getattr(batch, "edge_shift", None))

    @staticmethod
    def per_node(group: Tensor, num_groups: int) -> EdgeLayout:
        """One edge per node i, from its group ``group[i]`` (e.g. its graph) into i: per-node work
        that reads per-group tensors (sources) and may sum per group (FastEGNN's virtual nodes).

        Shapes:
            group: [N] in [0, num_groups)
        """
        n = group.shape[0]
        nodes = torch.arange(n, device=group.device)
        return EdgeLayout(source=group, target=nodes, ptr=torch.arange(n + 1, device=group.device),
                          edge_attr=torch.zeros(n, 0, device=group.device), edge_shift=None, num_nodes=n,
                          one_per_receiver=True)

    @property
    def num_edges(self) -> int:
        return int(self.source.shape[0])

    def segments(self) -> Segments:
        """The sorted edges as segments of receivers (for :func:`scaleq.nn.segments.segment_sum`)."""
        return Segments(self.target, self.ptr, self.num_nodes)

    def cached(self, key: Any, make: Callable[[], Any]) -> Any:  # noqa: ANN401
        """``make()`` once per layout and ``key``: every layer sharing the layout, and a
        checkpointed layer's recomputation, see the same value."""
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def chunks(self, size: int) -> list[Chunk]:
        """Consecutive runs of whole receivers with about ``size`` edges each (more only where
        one receiver has more), covering every receiver. Computed once per size: the only host
        read of the layout (one device sync on CUDA), none per chunk.
        """
        if size < 1:
            raise ValueError(f"a chunk needs at least one edge, got {size}")
        return self.cached(("chunks", size), lambda: _receiver_chunks(self.ptr.cpu().numpy(), size))

    def chunk_segments(self, chunk: Chunk) -> Segments:
        """The edges of ``chunk`` as segments of its receivers (indices local to the chunk)."""
        receivers = chunk.receivers
        return Segments(self.target[chunk.edges] - receivers.start,
                        self.ptr[receivers.start : receivers.stop + 1] - chunk.edges.start,
                        receivers.stop - receivers.start)

    def degree(self, dtype: torch.dtype) -> Tensor:
        """In-degree of every receiver, at least 1 (so means over no edges are 0). Shapes: -> [N, 1]."""
        return (self.ptr[1:] - self.ptr[:-1]).clamp(min=1).to(dtype).unsqueeze(-1)


def _receiver_chunks(ptr: np.ndarray, size: int) -> list[Chunk]:
    """Greedy: each chunk takes receivers while its edges stay within ``size`` (at least one)."""
    num_nodes = len(ptr) - 1
    chunks, first = [], 0
    while True:
        last = int(np.searchsorted(ptr, ptr[first] + size, side="right")) - 1  # ptr[last] <= ptr[first] + size
        last = min(max(last, first + 1), num_nodes)
        chunks.append(Chunk(slice(int(ptr[first]), int(ptr[last])), slice(first, last)))
        if last >= num_nodes:
            return chunks
        first = last
