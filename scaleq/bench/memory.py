"""Resident memory of this process, for the CPU benchmarks: the current size, and the peak since
the last reset (Linux: /proc's VmHWM, reset through clear_refs; elsewhere the process's peak so
far, ``ru_maxrss``, which only bounds the growth from below)."""

from __future__ import annotations

import os
import resource


def resident_bytes() -> int:
    """Current resident set size."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak_resident() -> None:
    """Set the peak resident size (VmHWM) to the current one (Linux; elsewhere a no-op)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_resident_bytes() -> int:
    """Peak resident set size since the last :func:`reset_peak_resident`."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
