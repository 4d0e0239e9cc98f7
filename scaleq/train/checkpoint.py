"""What a checkpoint holds besides model and optimizer, and how it is written atomically."""

from __future__ import annotations

import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch


@dataclass
class TrainState:
    """Where training stands: enough, with model and optimizer, to continue exactly."""

    epoch: int = 0  # the epoch in progress (or the next one, when batch_in_epoch == 0)
    batch_in_epoch: int = 0  # batches of ``epoch`` already trained on
    step: int = 0  # optimizer steps so far
    best_val_mse: float = float("inf")
    best_epoch: int = -1
    test_mse_at_best: float = float("nan")
    epochs_without_improvement: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file in the same directory, fsync, then rename over ``path``:
    a crash leaves the previous checkpoint intact, never a half-written one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
