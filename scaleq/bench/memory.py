"""Peak memory, the one way every benchmark measures it: :func:`peak_memory` around the code
measured, on the device it runs on.

CUDA: the allocator's peak (``torch.cuda.max_memory_allocated``, reset on entry) over what was
allocated on entry. CPU: the process's peak resident set (Linux: /proc's VmHWM, reset on entry
through clear_refs; elsewhere the peak so far, ``ru_maxrss``, which only bounds the growth from
below) over its resident set on entry. On the CPU the peak never falls within a process, so a
benchmark that compares several measurements runs each in a fresh process. With ``children``
(DataLoader workers), the CPU figure is instead the summed proportional set size (PSS: shared
pages counted once) of this process and its children, polled every 0.1 s."""

from __future__ import annotations

import contextlib
import os
import resource
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from scaleq.device_memory import proc_bytes

if TYPE_CHECKING:  # torch is imported when a measurement starts: a parent that only spawns trials stays light
    import torch

MB = 2**20


@dataclass
class PeakMemory:
    """What :func:`peak_memory` measured: bytes in use on entry (``base``) and the peak since
    (``peak``, filled in on exit; :meth:`so_far` reads it earlier)."""

    device: torch.device
    base: int = 0
    peak: int = 0

    @property
    def growth(self) -> int:
        """Bytes the measured code needed at its peak above what was in use on entry."""
        return max(0, self.peak - self.base)

    @property
    def growth_mb(self) -> float:
        return self.growth / MB

    @property
    def peak_mb(self) -> float:
        return self.peak / MB

    def so_far(self) -> int:
        """The peak since entry, read now (e.g. after the first of several steps)."""
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device)
        return _peak_resident_bytes()


@contextlib.contextmanager
def peak_memory(device: torch.device | str = "cpu", *, children: bool = False) -> Iterator[PeakMemory]:
    """Measure the peak memory of the ``with`` block on ``device`` (see the module docstring)::

        with peak_memory(device) as memory:
            step()
        print(memory.growth_mb)
    """
    import torch

    device = torch.device(device)
    measured = PeakMemory(device)
    if children and device.type == "cpu":
        with _polled_tree_pss(measured):
            yield measured
        return
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        measured.base = torch.cuda.memory_allocated(device)
    else:
        _reset_peak_resident()  # so the peak is the block's, not the imports' before it
        measured.base = _resident_bytes()
    try:
        yield measured
    finally:
        measured.peak = measured.so_far()


def _resident_bytes() -> int:
    """Current resident set size."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _reset_peak_resident() -> None:
    """Set the peak resident size (VmHWM) to the current one (Linux; elsewhere a no-op)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak_resident_bytes() -> int:
    """Peak resident set size since the last :func:`_reset_peak_resident`."""
    peak = proc_bytes("/proc/self/status", "VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@contextlib.contextmanager
def _polled_tree_pss(measured: PeakMemory, interval: float = 0.1) -> Iterator[None]:
    """Fill ``measured`` with the summed PSS of this process and its children: on entry, and the
    largest seen by a polling thread until exit."""
    import psutil

    def tree_pss() -> int:
        me, total = psutil.Process(), 0
        for proc in [me, *me.children(recursive=True)]:
            try:
                info = proc.memory_full_info()
                total += getattr(info, "pss", info.rss)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return total

    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            measured.peak = max(measured.peak, tree_pss())
            stop.wait(interval)

    measured.base = measured.peak = tree_pss()
    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
