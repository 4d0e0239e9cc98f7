"""A run owns its directory: created atomically, locked while the run lives, cleaned up if the
run fails before it has saved anything.

A fresh run makes ``<out_dir>/<name>`` with an ``mkdir`` that fails when the directory exists, and
falls back to ``<name>-<timestamp>`` (then ``-2``, ``-3``, ...), so two runs started together never
share a directory. Every run then holds an exclusive ``flock`` on the directory itself (no lock
file: nothing is added to the directory, and the lock dies with the process, so a killed run never
leaves a stale lock); a second process resuming the same directory is refused. Temporaries of
writers that died mid-write (``.<file>.tmp-<pid>``) are removed when a run starts.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import os
import shutil
from pathlib import Path

from scaleq.io import remove_stale_temporaries
from scaleq.run_directory import CONFIG, SUMMARY, RunDirectory

# Temporaries of earlier scaleq versions, named without the writer's pid: only a run that holds the
# directory's lock may remove them (no live writer can own them then).
LEGACY_TEMPORARIES = tuple(f".{name}.tmp" for name in (CONFIG, SUMMARY))


class RunDirError(RuntimeError):
    """The run directory cannot be made, or another live run owns it."""


class RunClaim:
    """A claimed run directory (its paths: :attr:`run_dir`); :meth:`release` when the run ends,
    :meth:`abandon` when it fails."""

    def __init__(self, path: Path, created: bool, created_out_dir: bool) -> None:
        self.path = path
        self.created = created  # made by this run: removed again if it fails before any checkpoint
        self.created_out_dir = created_out_dir
        self._fd: int | None = None

    @property
    def run_dir(self) -> RunDirectory:
        return RunDirectory(self.path)

    def lock(self) -> None:
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunDirError(
                f"{self.path}: another running process is training in this run directory; wait for it to "
                "finish, or start a new run (without --resume) to get a directory of its own"
            ) from None
        self._fd = fd

    def has_checkpoint(self) -> bool:
        folder = self.run_dir.checkpoints
        return folder.is_dir() and any(not p.name.startswith(".") for p in folder.iterdir())

    def abandon(self) -> None:
        """The run failed: remove what it made if it never saved a checkpoint; otherwise keep the
        directory (it can be resumed) and drop only dead writers' temporaries."""
        if self.created and not self.has_checkpoint():
            shutil.rmtree(self.path, ignore_errors=True)
            if self.created_out_dir:
                with contextlib.suppress(OSError):  # only if nothing else is in it
                    self.path.parent.rmdir()
        else:
            remove_dead_temporaries(self.path)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None


def remove_dead_temporaries(run_dir: Path) -> None:
    """Temporaries that writers killed mid-write left in a run directory and its checkpoints
    (call with the directory's lock held)."""
    for folder in (run_dir, RunDirectory(run_dir).checkpoints):
        remove_stale_temporaries(folder)
    for name in LEGACY_TEMPORARIES:
        with contextlib.suppress(FileNotFoundError):
            (run_dir / name).unlink()


def claim_run_dir(out_dir: str | os.PathLike[str], name: str, *, resume: bool,
                  path: Path | None = None) -> RunClaim:
    """Create (or, when resuming or given ``path``, open) the run directory and lock it.

    Fresh runs get a directory no other run has: ``<out_dir>/<name>`` when it does not exist yet,
    else ``<name>-<timestamp>[-k]``. Resumed runs use ``<out_dir>/<name>`` (made if missing)."""
    base = Path(out_dir)
    if base.exists() and not base.is_dir():
        raise RunDirError(f"out_dir {base}: is a file, expected a directory for the runs")
    created_out_dir = not base.exists()
    try:
        base.mkdir(parents=True, exist_ok=True)
        if path is not None or resume:
            target = path if path is not None else base / name
            created = not target.exists()
            target.mkdir(parents=True, exist_ok=True)
        else:
            target = _make_fresh(base, name)
            created = True
    except OSError as err:
        where = err.filename or base
        raise RunDirError(
            f"out_dir {base}: cannot create the run directory ({where}: {err.strerror or err})"
        ) from None
    claim = RunClaim(target, created, created_out_dir)
    claim.lock()
    remove_dead_temporaries(target)
    return claim


def _make_fresh(base: Path, name: str) -> Path:
    """mkdir that fails if the directory exists is the atomic "this one is mine"."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    candidates = [name, f"{name}-{stamp}", *(f"{name}-{stamp}-{k}" for k in range(2, 1000))]
    for candidate in candidates:
        try:
            (base / candidate).mkdir()
        except FileExistsError:
            continue
        return base / candidate
    raise RunDirError(f"out_dir {base}: no free run directory name for {name!r}")
