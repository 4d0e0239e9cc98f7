"""Atomic writes: every file and directory scaleq writes either appears whole or not at all.

A writer fills ``.<name>.tmp-<pid>`` next to the target, flushes and fsyncs it, renames it over
the target (``os.replace`` is atomic within a filesystem) and fsyncs the directory, so a crash or
a full disk leaves the previous file intact and at worst a temporary that
:func:`remove_stale_temporaries` clears on the next start. Directories (a Zarr store, a dataset's
splits) are written the same way: whole into a sibling named with the writer's pid, swapped into
place by :func:`replace_dir`; :func:`remove_orphans` clears what a killed writer left. This module
imports nothing from scaleq, so every package (data, train, distributed, rollout, bench, eval) may use it; so do the
shared writers built on it: CSV tables (:func:`write_rows`) and PNG figures (:func:`save_figure`).
"""

from __future__ import annotations

import contextlib
import csv
import errno
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

TMP_MARKER = ".tmp-"


def temporary_path(path: Path) -> Path:
    """Where a write to ``path`` by this process is staged: ``.<name>.tmp-<pid>``."""
    return path.with_name(f".{path.name}{TMP_MARKER}{os.getpid()}")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb", *, before_replace: Callable[[], None] | None = None,
                 **open_args: Any) -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``path`` for writing; on success fsync it and rename it over
    ``path``. An exception inside the block removes the temporary and leaves ``path`` untouched.
    ``before_replace`` runs between the fsync and the rename (scaleq.digests records a digest there).

    Libraries that wrap write errors (torch.save turns ENOSPC/EFBIG into a RuntimeError, "unexpected
    pos") are unwrapped here: a failed write surfaces as the OSError that caused it, naming ``path``.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(target)
    try:
        with open(tmp, mode, **open_args) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, target)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        cause = _os_error_in_chain(err)
        if cause is not None and (cause is not err or cause.filename in (None, str(tmp))):
            # name the file the user knows (a failed flush on close names none, torch names none)
            raise OSError(cause.errno, cause.strerror or str(cause), str(target)) from err
        raise
    _fsync_directory(target.parent)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(text)


def atomic_copy(source: str | os.PathLike[str], path: str | os.PathLike[str]) -> None:
    """Copy the file ``source`` to ``path`` atomically (contents and modification time)."""
    with open(source, "rb") as src, atomic_write(path, "wb") as dst:
        shutil.copyfileobj(src, dst)
    shutil.copystat(source, path)


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` atomically: a crash leaves the previous checkpoint, never a half-written one."""
    import torch  # here, so that this module stays importable without torch

    with atomic_write(path, "wb") as f:
        torch.save(obj, f)


def write_rows(rows: list[dict[str, Any]], path: str | os.PathLike[str], columns: Sequence[str] | None = None) -> None:
    """CSV of ``rows``; columns are ``columns`` (other keys left out) or the union of the rows'
    keys in first-seen order. Written to a temporary file, then renamed into place."""
    fields = list(columns) if columns is not None else list(dict.fromkeys(k for row in rows for k in row))
    with atomic_write(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def save_figure(fig: Any, png: str | os.PathLike[str]) -> None:
    """Save a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt  # only for those who draw

    fig.tight_layout()
    try:
        with atomic_write(png) as f:
            fig.savefig(f, format="png", dpi=120)
    finally:
        plt.close(fig)


def remove_stale_temporaries(directory: str | os.PathLike[str]) -> list[Path]:
    """Remove ``.<name>.tmp-<pid>`` files in ``directory`` whose writer process no longer exists
    (what a writer killed mid-write leaves); live writers' temporaries stay. Returns what went."""
    removed = []
    folder = Path(directory)
    if not folder.is_dir():
        return removed
    for tmp in folder.glob(f".*{TMP_MARKER}*"):
        pid = tmp.name.rsplit(TMP_MARKER, 1)[1]
        if tmp.is_file() and pid.isdigit() and not process_exists(int(pid)):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            removed.append(tmp)
    return removed


def remove_orphans(parent: Path, prefix: str) -> None:
    """Remove ``<parent>/<prefix><pid>`` directories whose writer process no longer exists: what a
    writer killed mid-write (SIGKILL, power loss) leaves behind. Live writers' ones stay."""
    for path in parent.glob(f"{prefix}*"):
        pid = path.name[len(prefix) :]
        if pid.isdigit() and not process_exists(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def replace_dir(src: Path, dst: Path) -> None:
    """Move a finished directory into place; an existing one is swapped out, then removed."""
    old = dst.with_name(f"{dst.name}.old-{os.getpid()}")
    if dst.exists():
        os.replace(dst, old)
    os.replace(src, dst)
    shutil.rmtree(old, ignore_errors=True)


def process_exists(pid: int) -> bool:
    """Whether a process with this id runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _os_error_in_chain(err: BaseException) -> OSError | None:
    """The first OSError with an errno among ``err``, its cause and its context."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno is not None:
            return current
        current = current.__cause__ or current.__context__
    return None


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable (POSIX needs an fsync of the directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.EBADF):  # filesystems that cannot fsync a directory
            raise
    finally:
        os.close(fd)
