"""When one rank fails, the others stop too, within a stated time, with one line naming it.

A gloo or NCCL collective waits for a missing peer until the process group's timeout (30 minutes
by default), and a rank that fails while the group is being formed leaves the others inside
``init_process_group`` for as long. Every rank therefore runs a small watch thread on the job's
rendezvous store (the TCPStore at MASTER_ADDR:MASTER_PORT, through a connection of its own):

- A rank that fails with an error (also while joining) writes ``failed`` = "rank R on HOST
  (ADDRESS): <the error's first line>" before it exits; the first report wins. Every watch reads
  that key every :data:`HEARTBEAT_S` seconds, so the other ranks stop within about
  ``HEARTBEAT_S`` (2 s) of the report.
- A rank that dies without a word (SIGKILL, OOM killer, its host lost) stops its heartbeat. Each
  rank watches the next one in a ring (O(ranks) store operations per beat in all, not O(ranks^2))
  and reports it as failed when its counter has not moved for ``timeout_s`` (default
  :data:`PEER_TIMEOUT_S`); the other ranks then stop as above.
- A store that cannot be reached for ``timeout_s`` means the master's node is gone: the rank stops.

A stopping rank prints ``error: <the report>; stopping rank R on HOST`` on stderr and exits with
code 1 at once (``os._exit``: its main thread may be blocked inside a collective). Checkpoints are
written atomically, so none is left half-written. A rank that ends normally marks itself done, and
nobody reports it when its heartbeat then stops.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from datetime import timedelta

import torch.distributed as dist

HEARTBEAT_S = 2.0
PEER_TIMEOUT_S = 60.0
EXIT_CODE = 1


class PeerWatch:
    """The watch thread of one rank (see the module docstring)."""

    def __init__(self, rank: int, world_size: int, address: str, timeout_s: float = PEER_TIMEOUT_S) -> None:
        self.rank, self.world_size, self.timeout_s = rank, world_size, timeout_s
        self.me = f"rank {rank} on {socket.gethostname()} ({address})"
        self.prefix = f"scaleq-watch/{os.environ.get('TORCHELASTIC_RUN_ID', '')}/{_start()}/"
        self.store = dist.TCPStore(
            os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
            timeout=timedelta(seconds=max(timeout_s, 10.0)), wait_for_workers=False,
        )
        self.store.set(self._key(f"who/{rank}"), self.me)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scaleq-peer-watch", daemon=True)

    def _key(self, name: str) -> str:
        return self.prefix + name

    def start(self) -> PeerWatch:
        self._thread.start()
        return self

    def report_failure(self, err: BaseException) -> None:
        """Tell the other ranks that this one fails with ``err`` (the first report stays)."""
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        try:
            self.store.compare_set(self._key("failed"), "", f"{self.me} failed: {first}")
        except Exception:  # noqa: BLE001 - the store may be gone with the master; the others time out
            pass

    def finish(self, err: BaseException | None) -> None:
        """This rank ends: with ``err`` (reported) or normally (marked done); the thread stops."""
        self._stopped.set()
        if err is not None:
            self.report_failure(err)
        else:
            try:
                self.store.set(self._key(f"done/{self.rank}"), "1")
            except Exception:  # noqa: BLE001 - the master may already have ended
                pass

    def _stop_rank(self, report: str) -> None:
        if self._stopped.is_set():
            return
        print(f"error: {report}; stopping {self.me}", file=sys.stderr, flush=True)
        os._exit(EXIT_CODE)

    def _run(self) -> None:
        watched = (self.rank + 1) % self.world_size
        beat, seen, moved, reached = 0, b"", time.monotonic(), time.monotonic()
        while not self._stopped.wait(HEARTBEAT_S):
            now = time.monotonic()
            try:
                beat += 1
                self.store.set(self._key(f"beat/{self.rank}"), str(beat))
                if self.store.check([self._key("failed")]):
                    self._stop_rank(self.store.get(self._key("failed")).decode())
                reached = now
                if watched == self.rank or self.store.check([self._key(f"done/{watched}")]):
                    continue
                value = self.store.get(self._key(f"beat/{watched}")) if self.store.check(
                    [self._key(f"beat/{watched}")]) else b""
                if value != seen:
                    seen, moved = value, now
                elif now - moved > self.timeout_s:
                    who = self._who(watched)
                    self.store.compare_set(self._key("failed"), "",
                                           f"{who} sent no heartbeat for {self.timeout_s:.0f} s (killed, or its host lost)")
                    self._stop_rank(self.store.get(self._key("failed")).decode())
            except Exception:  # noqa: BLE001 - the store is unreachable: the master's node may be gone
                if self._stopped.is_set():
                    return
                if now - reached > self.timeout_s:
                    self._stop_rank(f"the rendezvous store at {os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} "
                                    f"(the master's node) did not answer for {self.timeout_s:.0f} s")

    def _who(self, rank: int) -> str:
        key = self._key(f"who/{rank}")
        return self.store.get(key).decode() if self.store.check([key]) else f"rank {rank}"


def _start() -> str:
    """Names one start of the workers, the same on every rank: the watch's keys of an earlier start
    (a ``failed`` report above all) must not reach the next. torchrun's agent store outlives a
    restart of the workers (TORCHELASTIC_USE_AGENT_STORE=True): then the restart count, the same on
    every rank as long as the agents stay. With TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 every start
    gets a fresh store, and the restart count is left out: an agent started again (a lost node that
    returns) counts from 0 while the others count on (pytorch/pytorch#135712)."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        return os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return "fresh"


_WATCH: PeerWatch | None = None


def start_watch(rank: int, world_size: int, address: str, timeout_s: float = PEER_TIMEOUT_S) -> PeerWatch:
    global _WATCH
    _WATCH = PeerWatch(rank, world_size, address, timeout_s).start()
    return _WATCH


def finish_watch(err: BaseException | None) -> None:
    """End this process's watch (if any): report ``err``, or mark the rank done."""
    global _WATCH
    if _WATCH is not None:
        _WATCH.finish(err)
        _WATCH = None
