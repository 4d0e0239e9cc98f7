"""Engine: how a training step is taken (backward, optimizer step, reductions, checkpoints).

The training loop talks only to this interface, so the same loop runs as one process, under DDP
or under DeepSpeed.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn


class Engine(ABC):
    device: torch.device
    rank: int = 0
    world_size: int = 1
    precision: str = "fp32"
    # Set by a launcher (Ray) to hear of every end-of-epoch checkpoint: (path, metrics).
    on_checkpoint: Callable[[Path, dict[str, Any]], None] | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @abstractmethod
    def wrap(self, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> nn.Module:
        """Take ownership of model and optimizer; returns the module to call in the loop."""

    @abstractmethod
    def backward(self, loss: Tensor) -> None: ...

    @abstractmethod
    def step(self) -> None:
        """Clip (if configured), step the optimizer, zero the gradients."""

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

    def checkpoint_saved(self, path: Path, metrics: dict[str, Any]) -> None:
        """Called on every rank after the end-of-epoch checkpoint ``path`` is complete."""
        if self.on_checkpoint is not None:
            self.on_checkpoint(path, metrics)

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
