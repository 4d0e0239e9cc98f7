"""The parts of the training loss, listed once: each one's name, the ``loss:`` key that weighs it
and the model output it reads.

Torch-free and importing nothing of scaleq, so that :mod:`scaleq.losses` (which computes the
parts) and :func:`scaleq.models.build.check_model_fits` (which refuses a weight on a part the
model cannot feed, before a run makes anything) read the same table; models may not import the
losses, and the losses may not be what a model check depends on.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LossTerm:
    """One part of the training loss: its name (logged as ``train_<name>``), the LossConfig field
    that weighs it (None: always on, weight 1) and the model output it needs (None: "pos" only)."""

    name: str
    weight_key: str | None = None
    needs_output: str | None = None


LOSS_TERMS = (
    LossTerm("mse"),
    LossTerm("mmd", "mmd_weight", "virtual_pos"),  # FastEGNN: virtual nodes among the real ones
    LossTerm("connectivity", "connectivity_weight", "pooled_adjacency"),  # EGHN: clusters follow bonds
)
LOSS_PARTS = tuple(term.name for term in LOSS_TERMS)
