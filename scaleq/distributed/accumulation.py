"""Gradient accumulation windows: which micro-batches share one optimizer step.

With ``engine.gradient_accumulation`` = A, the micro-batches of an epoch are cut into windows of A
consecutive micro-batches, counted from the epoch's first. When A does not divide the epoch's n
micro-batches, the last window is shorter (n mod A): it is still stepped at the end of the epoch,
and each of its micro-batches weighs 1 / (n mod A) instead of 1 / A, so every optimizer step
follows the mean loss of the micro-batches it saw. No gradient is carried into the next epoch.
This is what Hugging Face Accelerate (``sync_with_dataloader``), the Transformers Trainer and
Lightning do at the end of a data loader; DeepSpeed on its own knows no epochs and would carry the
leftover micro-batches into the next epoch's first window, so our DeepSpeed engine sets its
accumulation boundary from this window instead.

Checkpoints are written only between windows (the engines refuse otherwise), so a checkpoint never
holds half a window's gradients and a resume starts a fresh window where it left off: at a window
boundary of the uninterrupted run, which continues exactly as that run did.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class AccumulationWindow:
    """Where the engine stands in its accumulation window. Without :meth:`start_epoch` (an engine
    driven outside the training loop) every window has ``size`` micro-batches."""

    size: int  # A: micro-batches per optimizer step
    epoch_batches: int | None = None  # micro-batches in the epoch in progress (None: not announced)
    done: int = 0  # micro-batches of that epoch stepped through so far
    position: int = 0  # of which, in the window in progress (its accumulated gradients are pending)

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"gradient accumulation must be >= 1, got {self.size}")

    def start_epoch(self, batches: int, done: int = 0) -> None:
        """An epoch of ``batches`` micro-batches begins, or continues after ``done`` of them (a
        resume); a window starts here."""
        if self.position:
            # the previous epoch's last window was never stepped: its gradients would leak into this one
            raise RuntimeError(
                f"a new epoch starts with {self.position} micro-batch(es) of an accumulation window pending"
            )
        if not 0 <= done <= batches:
            raise ValueError(f"{done} of {batches} micro-batches done: not a position in the epoch")
        self.epoch_batches, self.done = batches, done

    @property
    def length(self) -> int:
        """Micro-batches in the window in progress: ``size``, or fewer for the epoch's last one."""
        start = self.done - self.position
        if self.epoch_batches is None or start >= self.epoch_batches:
            return self.size
        return min(self.size, self.epoch_batches - start)

    @property
    def closing(self) -> bool:
        """The next micro-batch is the last of its window: its backward syncs, its step steps."""
        return self.position + 1 >= self.length

    def advance(self) -> bool:
        """One micro-batch is through (``engine.step``); True when it closed its window."""
        closed = self.closing
        self.done += 1
        self.position = 0 if closed else self.position + 1
        return closed

    def require_boundary(self, action: str) -> None:
        """Raise unless no gradient is pending, e.g. before writing a checkpoint, which holds none."""
        if self.position:
            raise RuntimeError(
                f"cannot {action} after {self.position} of {self.length} micro-batches of an accumulation "
                "window: their gradients are in no checkpoint; the loop saves only between windows"
            )
