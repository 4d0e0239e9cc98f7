"""Is Triton here, and how do its kernels run? The one answer every kernel asks: the fused
message-passing kernels (``scaleq.nn.triton_edges``), the cell list's pair search
(``scaleq.graph.cell_list_kernels``) and the benchmarks' environment line.

Triton is optional: CUDA builds of torch bring it; on a CPU its kernels run only in Triton's
interpreter, which ``TRITON_INTERPRET=1`` selects when it is set before triton is first imported
(the tests set it in their conftest)."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class TritonStatus:
    installed: bool
    version: str | None  # None when not installed
    interpreted: bool  # kernels run in Triton's CPU interpreter (and only there)

    def runs_on(self, device: torch.device) -> bool:
        """Whether a kernel can run on tensors of ``device``: compiled on CUDA, interpreted on the CPU."""
        if not self.installed:
            return False
        return self.interpreted if device.type == "cpu" else device.type == "cuda" and not self.interpreted


def triton_status() -> TritonStatus:
    """Whether triton imports, its version, and whether it runs interpreted (as triton itself
    decided when it was imported: its runtime knob where it has one, Triton >= 3.4; the variable
    otherwise)."""
    version = _version()
    if version is None:
        return TritonStatus(installed=False, version=None, interpreted=False)
    import triton

    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        interpreted = bool(knobs.runtime.interpret)
    else:
        interpreted = os.environ.get("TRITON_INTERPRET", "0") == "1"
    return TritonStatus(installed=True, version=version, interpreted=interpreted)


@functools.cache
def _version() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return str(triton.__version__)
