"""A scheduler's notice to stop (SIGTERM; SIGUSR1, which SLURM's ``--signal`` sends): finish the
step, write one checkpoint, exit with :data:`EXIT_PREEMPTED`.

SLURM, Kubernetes and spot instances send SIGTERM (or a chosen signal) and SIGKILL 30-120 s
later. While :func:`handlers` is active the signal only sets a flag. The loop asks
:func:`requested` after every optimizer step (never inside an accumulation window) and after every
epoch's checkpoint; with several ranks the flags are combined over all ranks (one tiny host-side
all-reduce per step, :meth:`Engine.any_rank`, which never waits for the GPU), so one rank told to
stop stops them all at the same step. Then every rank takes part in writing ``last.pt`` (the same checkpoint as ``train.checkpoint_every_steps`` writes) and the run
raises :class:`Preempted`, which the CLI turns into exit code 75 (EX_TEMPFAIL: "try again";
a requeue script can tell it from 1, a failure, and 2, wrong input). ``--resume`` then continues
bit for bit, as from any mid-epoch checkpoint.

How long it takes: the rest of the step in progress, one all-reduce, one checkpoint; when the
signal comes during validation, the rest of that pass too.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

from scaleq.distributed.engine import Engine

EXIT_PREEMPTED = 75  # sysexits.h EX_TEMPFAIL
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(Exception):
    """The run stopped at a scheduler's request after writing its checkpoint; resume it."""

    stops_all_ranks = True  # every rank raises it at the same step: not a failure to report to the others


_received: list[str] = []


def _on_signal(signum: int, frame: FrameType | None) -> None:
    if not _received:
        print(f"{signal.Signals(signum).name}: stopping after this step with a checkpoint", flush=True)
    _received.append(signal.Signals(signum).name)


@contextlib.contextmanager
def handlers() -> Iterator[None]:
    """SIGTERM and SIGUSR1 set the preemption flag while the block runs (main thread only: a loop
    in another thread, as in some Ray workers, keeps the default handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received.clear()
    previous = {sig: signal.signal(sig, _on_signal) for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def requested(engine: Engine) -> bool:
    """Whether any rank was told to stop (a host-side collective when there are several ranks)."""
    return engine.any_rank(bool(_received))


def signal_names() -> str:
    return ", ".join(dict.fromkeys(_received)) or "a peer rank's signal"
