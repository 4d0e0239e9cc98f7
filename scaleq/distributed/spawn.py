"""Ranks on one machine without a launcher: fresh processes, each with the environment torchrun
would have given it. The multi-rank tests and the graph-parallel benchmark start their ranks so."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import torch


def rank_env(rank: int, world_size: int, port: int) -> None:
    """What torchrun would have set for this rank."""
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1",
    )
    torch.set_num_threads(1)


def spawn(fn: Callable[..., None], world_size: int, *args: Any, timeout: float = 300.0) -> None:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` fresh processes; raise if one fails
    or if they are not all done after ``timeout`` seconds (a hung collective must not hang CI)."""
    context = torch.multiprocessing.spawn(fn, args=(world_size, *args), nprocs=world_size, join=False)
    deadline = time.monotonic() + timeout
    while not context.join(timeout=1.0):
        if time.monotonic() > deadline:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
            raise TimeoutError(f"{world_size} ranks of {fn.__name__} not done after {timeout:.0f} s")
