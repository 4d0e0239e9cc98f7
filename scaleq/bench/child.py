"""Benchmarks run each measurement in a child process (its own peak memory; an out-of-memory kill
ends only it). When a child fails, the reader needs why: this module runs one and turns a failure
into its exit cause and the last lines of its stderr."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import subprocess
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from queue import Empty
from typing import Any

# what PyTorch, Triton, CUDA and the C++ runtime print when an allocation fails
OUT_OF_MEMORY_MARKS = ("out of memory", "can't allocate memory", "outofmemoryerror", "memoryerror", "cannot allocate memory", "std::bad_alloc")


@dataclass(frozen=True)
class ChildResult:
    """A finished child: ``stdout`` when it succeeded, else ``cause`` (a few words) and ``error``
    (the cause, then the last lines of its stderr)."""

    stdout: str
    returncode: int | None  # None: it ran out of time and was killed
    error: str | None
    cause: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def exit_cause(returncode: int | None, stderr: str, timeout_s: float | None = None) -> str:
    """A few words: 'out of memory', 'killed by signal 9 (SIGKILL ...)', 'error exit code 1', 'timed out'."""
    if returncode is None:
        return f"timed out after {timeout_s:.0f} s" if timeout_s is not None else "timed out"
    if any(mark in stderr.lower() for mark in OUT_OF_MEMORY_MARKS):
        return f"out of memory (exit code {returncode})"
    if returncode < 0:
        number = -returncode
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = "unknown signal"
        hint = "; on Linux usually the kernel's out-of-memory killer" if number == signal.SIGKILL else ""
        return f"killed by signal {number} ({name}{hint})"
    return f"error exit code {returncode}"


def stderr_tail(stderr: str, lines: int = 12) -> str:
    """The last ``lines`` non-empty lines of ``stderr``, each indented by 4 spaces."""
    kept = [line for line in stderr.splitlines() if line.strip()][-lines:]
    return "\n".join(f"    {line}" for line in kept) if kept else "    (stderr was empty)"


def describe_failure(returncode: int | None, stderr: str, timeout_s: float | None = None, lines: int = 12) -> str:
    """The exit cause on one line, then stderr's last lines."""
    return f"{exit_cause(returncode, stderr, timeout_s)}; last lines of its stderr:\n{stderr_tail(stderr, lines)}"


def run_child(cmd: Sequence[str], *, env: Mapping[str, str] | None = None, timeout_s: float = 3600,
              lines: int = 12) -> ChildResult:
    """Run ``cmd``, capturing its output; never raises for the child's own failure. The child
    leads a process group of its own, so a timeout ends it and everything it started (a launcher's
    ranks, a pool's workers), and what they printed until then is kept."""
    process = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=None if env is None else dict(env), start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        return ChildResult(stdout, None, describe_failure(None, stderr, timeout_s, lines), exit_cause(None, stderr, timeout_s))
    finally:
        if process.poll() is None:  # interrupted: take the group down with us
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    if process.returncode != 0:
        return ChildResult(stdout, process.returncode, describe_failure(process.returncode, stderr, lines=lines),
                           exit_cause(process.returncode, stderr))
    return ChildResult(stdout, 0, None)


def _send_result(queue: Any, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    try:
        queue.put((True, fn(*args)))
    except BaseException as error:  # the child's traceback goes to the shared stderr
        traceback.print_exc()
        queue.put((False, f"{type(error).__name__}: {error}"))
        raise SystemExit(1) from None


def call_in_spawned_process(fn: Callable[..., Any], *args: Any, timeout_s: float = 3600,
                            env: Mapping[str, str] | None = None) -> Any:
    """``fn(*args)`` in a fresh ``spawn`` process (``fn`` importable, arguments picklable); its
    return value. A child that raises, dies (out-of-memory kill, signal) or hangs raises a
    RuntimeError with its exit cause here, instead of waiting forever as a Pool does. ``env``:
    variables set while the child starts (read by e.g. glibc at its start-up)."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_send_result, args=(queue, fn, args))
    saved = {key: os.environ.get(key) for key in (env or {})}
    os.environ.update(env or {})
    try:
        process.start()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                ok, value = queue.get(timeout=1.0)
                break
            except Empty:
                if process.is_alive() and time.monotonic() < deadline:
                    continue
                try:  # it may have sent its result just before it ended
                    ok, value = queue.get(timeout=1.0)
                    break
                except Empty:
                    timed_out = process.is_alive()
                    process.kill()
                    process.join()
                    cause = f"timed out after {timeout_s:.0f} s" if timed_out else exit_cause(process.exitcode, "")
                    raise RuntimeError(f"{getattr(fn, '__name__', fn)} in a child process: {cause}") from None
    finally:
        process.join(timeout=30)
    if not ok:
        raise RuntimeError(f"{getattr(fn, '__name__', fn)} in a child process failed: {value} (traceback above)")
    return value
