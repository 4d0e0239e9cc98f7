"""One reader of Linux's /proc memory fields, for the peak-memory helper (scaleq.bench.memory) and
the radius graph's free-memory check (scaleq.data.graph_memory)."""

from __future__ import annotations


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
