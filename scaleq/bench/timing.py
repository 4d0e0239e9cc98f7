"""One timer for every benchmark: the milliseconds of a call, measured the same way everywhere.

On CUDA a pair of CUDA events around the call (the GPU's own clock: what the kernels took, without
the host's launch jitter); elsewhere ``perf_counter`` around the call. Work still queued on the
device when the timer starts is waited for first, so one call's time never includes another's.
Benchmarks whose step spans several ranks (scaling, graph parallelism) time the step between two
barriers with ``perf_counter`` instead: what they measure is the slowest rank, not one device.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (nothing to wait for on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def call_ms(fn: Callable[[], Any], device: torch.device) -> float:
    """Milliseconds of one call of ``fn`` on ``device``."""
    synchronize(device)
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    started = time.perf_counter()
    fn()
    return 1000 * (time.perf_counter() - started)


def time_ms(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int = 1, budget_s: float = 20.0) -> float:
    """Median milliseconds of ``repeats`` calls after ``warmup`` untimed ones (fewer calls once the
    timed ones pass ``budget_s``: a 30 s brute-force search is timed once)."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    for _ in range(repeats):
        times.append(call_ms(fn, device))
        if sum(times) > 1000 * budget_s:
            break
    return statistics.median(times)
