"""DeepSpeed's compiled-on-first-use ("JIT") ops: which ones our engine can meet, and one clear
line when building one fails.

The engine avoids them where it can: its optimizer is torch's Adam/AdamW (fused on CUDA), not
DeepSpeed's FusedAdam, so ZeRO 0-3, bf16 autocast and activation checkpointing build nothing.
Two remain:

- ``cpu_adam`` (DeepSpeed's CPU Adam) with ``engine.offload_optimizer``: ZeRO-Offload refuses a
  torch optimizer. Building it needs ninja and a C++ compiler; on a CUDA machine DeepSpeed's
  builder also reads ``TORCH_CUDA_ARCH_LIST``.
- ``deepspeed_shm_comm`` on a CPU-only machine (DeepSpeed's CPU accelerator builds it in
  ``init_distributed`` for its shared-memory all-reduce; g++ only, cached under
  ``$TORCH_EXTENSIONS_DIR``). The CUDA accelerator has no such op.
"""

from __future__ import annotations

import contextlib
import io
import sys
from collections.abc import Iterator
from types import TracebackType


def _op_name(error: BaseException) -> str | None:
    """The NAME of the DeepSpeed op builder whose frames raised ``error`` (or its causes), if any."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        tb: TracebackType | None = current.__traceback__
        while tb is not None:
            if "op_builder" in tb.tb_frame.f_code.co_filename:
                builder = tb.tb_frame.f_locals.get("self")
                return str(getattr(builder, "NAME", "unknown"))
            tb = tb.tb_next
        current = current.__cause__ or current.__context__
    return None


# the install-time switch that compiles an op once, with DeepSpeed, instead of on first use
PREBUILD = {"cpu_adam": "DS_BUILD_CPU_ADAM=1", "deepspeed_shm_comm": "DS_BUILD_SHM_COMM=1"}


def build_failure_message(op: str, error: BaseException, device_type: str) -> str:
    """One line: which op, why, and what to do."""
    text = str(error).strip()
    cause = f"{type(error).__name__}: {text.splitlines()[0].rstrip('.') if text else ''}"
    needs = "ninja and a C++ compiler" + (", nvcc, and TORCH_CUDA_ARCH_LIST entries like 9.0 (no letter suffix such as 9.0a)"
                                          if device_type == "cuda" and op != "deepspeed_shm_comm" else "")
    prebuilt = (f"install DeepSpeed with {PREBUILD.get(op, 'DS_BUILD_OPS=1')} (pip install --no-build-isolation deepspeed) "
                "so the op is compiled once at install time")
    if op == "cpu_adam":
        fix = f"set engine.offload_optimizer=false (torch's Adam, nothing to compile), or {prebuilt}"
    else:
        fix = f"make {needs} available, or {prebuilt}"
    return f"DeepSpeed could not compile its '{op}' op on first use ({cause}); it needs {needs}. Fix: {fix}"


@contextlib.contextmanager
def explain_op_build_failures(device_type: str) -> Iterator[None]:
    """Turn a failed DeepSpeed op build inside the block into one RuntimeError naming the op, the
    cause and the fix; any other error passes unchanged."""
    try:
        yield
    except Exception as error:
        op = _op_name(error)
        if op is None:
            raise
        raise RuntimeError(build_failure_message(op, error, device_type)) from error


@contextlib.contextmanager
def without_build_notices() -> Iterator[None]:
    """Standard output of the block, less DeepSpeed's "DeepSpeed <op> built successfully" lines.

    DeepSpeed's CPU accelerator loads its shm op in ``init_distributed`` on every rank and prints
    that line each time, built or loaded from the cache: it tells the user nothing. Everything
    else the block prints is passed on, also when it raises."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured):
            yield
    finally:
        kept = [line for line in captured.getvalue().splitlines(keepends=True)
                if not (line.startswith("DeepSpeed ") and line.rstrip().endswith(" built successfully"))]
        sys.stdout.write("".join(kept))
