"""How much memory a device has free, and the one reader of Linux's /proc memory fields: for the
block's "auto" path (scaleq.nn.block_options), the radius graph's size check
(scaleq.graph.memory) and the peak-memory helper (scaleq.bench.memory)."""

from __future__ import annotations

import os
import resource

import torch


def free_memory(device: torch.device) -> int:
    """Bytes a new tensor on ``device`` can take now. CUDA: the driver's free memory plus what
    torch's allocator holds unused. CPU: the system's available memory (``MemAvailable``: free
    plus reclaimable page cache), but no more than the address-space and data limits
    (RLIMIT_AS, RLIMIT_DATA) leave above the process's current size."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    available = proc_bytes("/proc/meminfo", "MemAvailable")
    if available is None:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    used = proc_bytes("/proc/self/status", "VmSize") or 0  # what RLIMIT_AS counts
    for limit in (resource.RLIMIT_AS, resource.RLIMIT_DATA):
        soft, _ = resource.getrlimit(limit)
        if soft != resource.RLIM_INFINITY:
            available = min(available, max(soft - used, 0))
    return available


def proc_bytes(path: str, field: str) -> int | None:
    """A ``kB`` field of a /proc file (``/proc/self/status``'s ``VmHWM``, ``/proc/meminfo``'s
    ``MemAvailable``, ...) in bytes; None where the file or the field is missing (not Linux)."""
    try:
        with open(path) as lines:
            for line in lines:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
