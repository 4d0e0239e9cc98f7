"""One seed for every random number generator a run draws from: Python's, NumPy's and torch's
(CPU and every CUDA device). Two runs with the same config and seed on the same machine then give
the same numbers."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch (``manual_seed`` seeds CUDA too)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
