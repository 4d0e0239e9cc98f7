"""Engine: how a training step is taken (backward, optimizer step, reductions, checkpoints).

The training loop talks only to this interface, so the same loop runs as one process, under DDP
or under DeepSpeed.

Graph parallelism (``engine.graph_parallel`` = R > 1) is the engine's business too: the ranks form
a grid of graph-parallel groups (R consecutive ranks each) x data-parallel groups. The loop asks
the engine for its sampler shard (``data_rank`` of ``data_world_size``: the same for the R ranks
of a group) and for each batch's graph (:meth:`Engine.prepare_batch`): this rank's share of every
graph, with ``batch.halo`` attached.

Gradient accumulation is the engine's too (:mod:`scaleq.distributed.accumulation`): the loop
announces each epoch (:meth:`Engine.start_epoch`), runs every micro-batch's forward and backward
inside :meth:`Engine.micro_batch`, and learns from :meth:`Engine.step` whether the optimizer
stepped.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch_geometric.data import Batch

from scaleq.distributed.accumulation import AccumulationWindow
from scaleq.distributed.halo import split_batch
from scaleq.distributed.process_group import Ranks, graph_parallel_group, host_group
from scaleq.graph.builder import GraphBuilder


class Engine(ABC):
    device: torch.device
    rank: int = 0
    world_size: int = 1
    precision: str = "fp32"
    graph_parallel: int = 1  # R: ranks that share each graph
    graph_group: Any = None  # this rank's graph-parallel process group (None when R = 1)
    host_group: Any = None  # gloo over all ranks, for host-side flags, where the default group is NCCL
    window: AccumulationWindow  # set by each engine from its gradient_accumulation

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def data_rank(self) -> int:
        """Which data-parallel group this rank is in: the sampler shard it reads."""
        return self.rank // self.graph_parallel

    @property
    def data_world_size(self) -> int:
        """How many data-parallel groups there are: the number of sampler shards."""
        return self.world_size // self.graph_parallel

    def form_groups(self, graph_parallel: int) -> None:
        """Form the graph-parallel groups and the host group (collective: every rank calls it once,
        after joining)."""
        self.graph_group = graph_parallel_group(Ranks(self.rank, self.world_size), graph_parallel)
        self.graph_parallel = graph_parallel
        self.host_group = host_group(self.device, self.world_size)

    def any_rank(self, flag: bool) -> bool:
        """Whether any rank passes True. A host-side all-reduce (gloo, CPU tensors): unlike a
        reduction of a device tensor read back with ``.item()``, it does not wait for the device to
        finish the work queued so far, so a check every step costs one small message, not a stall."""
        if self.world_size == 1:
            return flag
        votes = torch.tensor([int(flag)], dtype=torch.int32)
        dist.all_reduce(votes, group=self.host_group)
        return bool(votes.item())

    def prepare_batch(self, batch: Batch, graph: GraphBuilder, *, training: bool = True) -> Batch:
        """Move ``batch`` to the device and build its graph there; under graph parallelism, keep
        this rank's share of every graph and attach ``batch.halo``."""
        batch = batch.to(self.device, non_blocking=True)
        if self.graph_group is None:
            return graph(batch, training=training)
        return split_batch(batch, graph, self.graph_group, training=training)

    @abstractmethod
    def wrap(self, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> nn.Module:
        """Take ownership of model and optimizer; returns the module to call in the loop."""

    def start_epoch(self, batches: int, done: int = 0) -> None:
        """An epoch of ``batches`` micro-batches on this rank begins (or resumes after ``done``):
        accumulation windows restart here and the epoch's last one is stepped with its last
        micro-batch, however short. Every rank announces the same numbers."""
        self.window.start_epoch(batches, done)

    def micro_batch(self) -> contextlib.AbstractContextManager[None]:
        """Wraps the forward and backward of one micro-batch, so that gradients are exchanged
        between ranks only in the window's last backward (DDP decides in the forward pass). Without
        it every backward exchanges them: the same step, more communication."""
        return contextlib.nullcontext()

    @abstractmethod
    def backward(self, loss: Tensor) -> None:
        """Accumulate the gradient of ``loss``, weighted 1 / (micro-batches in its window)."""

    @abstractmethod
    def step(self) -> bool:
        """After each micro-batch's backward. At the end of its accumulation window: clip (if
        configured), step the optimizer, zero the gradients, and return True; else False."""

    @abstractmethod
    def save(self, path: Path, extra: dict[str, Any]) -> None:
        """Write model, optimizer and ``extra`` atomically to ``path``."""

    @abstractmethod
    def load(self, path: Path) -> dict[str, Any]:
        """Restore model and optimizer from ``path``; returns ``extra``."""

    @property
    @abstractmethod
    def module(self) -> nn.Module:
        """The bare model (unwrapped), e.g. for evaluation with another batch size."""

    def all_reduce_sum(self, values: Tensor) -> Tensor:
        """Sum over ranks (identity for one process)."""
        return values

    def barrier(self) -> None:  # noqa: B027 - nothing to wait for in one process
        """Wait until every rank gets here (e.g. while rank 0 prepares the data)."""

    def broadcast_object(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (identity for one process)."""
        return value

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """bf16 autocast for the forward pass when asked; coordinates stay fp32 in the models."""
        if self.precision == "bf16":
            with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16):
                yield
        else:
            yield

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release process groups and the like."""
