"""Run a stack of layers, optionally under activation (gradient) checkpointing.

With ``every = k > 0`` each run of k consecutive layers becomes one checkpointed segment: its
activations are dropped after the forward pass and recomputed during backward, so memory grows
with L / k segments instead of L layers, for about one extra forward pass of compute.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

State = tuple[Tensor, ...]
Layer = Callable[..., State]


def run_layers(layers: Sequence[Layer], state: State, every: int = 0) -> State:
    """Apply ``layers`` in order to the tuple ``state``; each layer maps a state to a new state."""
    if every <= 0 or not torch.is_grad_enabled():
        for layer in layers:
            state = layer(*state)
        return state
    for start in range(0, len(layers), every):
        segment = layers[start : start + every]
        state = checkpoint(_run_segment, segment, *state, use_reentrant=False)
    return state


def _run_segment(segment: Sequence[Layer], *state: Tensor) -> State:
    for layer in segment:
        state = layer(*state)
    return state
