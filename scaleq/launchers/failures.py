"""What a failed run tells its user: one line, and an exit code that says whose move it is.

2: the input is wrong (config, data, checkpoint, run directory, a graph that cannot fit, an optional
part not installed), nothing was left behind; 1: the run failed while running (disk full, file-size limit, I/O error, the loss
or the metrics became NaN). The plain CLI and the Ray launcher's driver both go through here, so a
failure reads the same however the run was launched.
"""

from __future__ import annotations

from scaleq.config import ConfigError
from scaleq.digests import DigestError
from scaleq.extras import MissingExtra
from scaleq.graph.memory import GraphSizeError
from scaleq.safe_load import UnsafeFileError
from scaleq.store.format import StoreError
from scaleq.train.checkpoint import CheckpointError
from scaleq.train.run_dir import RunDirError

# DigestError and UnsafeFileError: a checkpoint that is damaged, or that would run code (scaleq.safe_load);
# MissingExtra: an optional part (DeepSpeed, Ray, MDAnalysis) used without its extra installed
USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, StoreError, CheckpointError, RunDirError, GraphSizeError,
                                                DigestError, UnsafeFileError, MissingExtra)
RUN_FAILURES: tuple[type[BaseException], ...] = (OSError, FloatingPointError)


def exit_code(err: BaseException) -> int | None:
    """2 for a user error, 1 for a run failure, None for anything else (a bug: let it raise)."""
    if isinstance(err, USER_ERRORS):
        return 2
    if isinstance(err, RUN_FAILURES):
        return 1
    return None


def one_line(err: BaseException) -> str:
    """The reason of ``err`` as one line. Errors raised in DataLoader workers arrive re-raised with
    the worker's whole traceback as message; their last line is the original message."""
    text = str(err).strip()
    if text.startswith("Caught ") and "Original Traceback" in text:
        last = text.splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    if isinstance(err, OSError) and err.filename and err.strerror and not text.startswith("Caught "):
        text = f"{err.filename}: {err.strerror}"
    return " ".join(text.split())
