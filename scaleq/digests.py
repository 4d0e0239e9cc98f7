"""SHA-256 digests written beside files: ``<file>.sha256``, in ``sha256sum`` format.

A checkpoint file and its digest are two files, and no filesystem renames two files at once, so
the digest is written first and names both the new file and the one it replaces:

1. the new file is written to its temporary (hashed while it is written, so no second read);
2. ``<file>.sha256`` is replaced atomically by two lines: the new digest, then the current one;
3. the temporary is renamed over the file (:func:`scaleq.io.atomic_write`);
4. ``<file>.sha256`` is replaced by the new digest alone.

A crash between any two steps leaves a file that matches one of the recorded digests, so a
``kill -9`` while a checkpoint is written never turns a whole checkpoint into a "damaged" one;
and a file that matches neither line is damaged. After step 4 the sidecar is what
``sha256sum -c last.pt.sha256`` checks. This module imports nothing from scaleq but io.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from scaleq.io import atomic_write, atomic_write_text

SUFFIX = ".sha256"
_BLOCK = 1 << 20


class DigestError(ValueError):
    """A file does not match the SHA-256 digest recorded beside it: it is damaged."""


def digest_path(path: Path) -> Path:
    """Where the digest of ``path`` is recorded: ``<path>.sha256``."""
    return path.with_name(path.name + SUFFIX)


def sha256_file(path: Path) -> str:
    """The SHA-256 of the file ``path``, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def recorded(path: Path) -> list[str] | None:
    """The digests recorded for ``path`` (newest first), or None when it has no digest file."""
    sidecar = digest_path(path)
    try:
        text = sidecar.read_text(encoding="ascii")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as err:
        raise DigestError(f"{sidecar}: the digest file cannot be read ({type(err).__name__}); {path} cannot be "
                          "checked, treat it as damaged") from None
    digests = [line.split()[0].lower() for line in text.splitlines() if line.strip()]
    if not digests or any(len(d) != 64 or not all(c in "0123456789abcdef" for c in d) for d in digests):
        raise DigestError(f"{sidecar}: not a SHA-256 digest file (damaged); {path} cannot be checked, treat it as damaged")
    return digests


def verify(path: Path) -> bool:
    """Check ``path`` against its recorded digest: True when it matches, False when it has none
    (written before checkpoints carried digests); :class:`DigestError` naming the file when it
    does not match."""
    expected = recorded(path)
    if expected is None:
        return False
    actual = sha256_file(path)
    if actual not in expected:
        raise DigestError(f"{path}: SHA-256 {actual[:16]}... does not match the digest recorded in "
                          f"{digest_path(path).name} ({expected[0][:16]}...): the file is damaged")
    return True


class _Hashing:
    """A writable file that hashes what passes through it (torch.save needs ``write`` only)."""

    def __init__(self, file: IO[bytes]) -> None:
        self.file = file
        self.hash = hashlib.sha256()

    def write(self, data: Any) -> int:
        self.hash.update(data)
        return self.file.write(data)

    def flush(self) -> None:
        self.file.flush()


def write_with_digest(path: str | os.PathLike[str], fill: Callable[[Any], None]) -> str:
    """Write ``path`` atomically with ``fill(file)`` and record its digest beside it (see the
    module docstring for the order that keeps the two consistent through a crash). Returns the digest."""
    target = Path(path)
    hashing: _Hashing | None = None

    def record() -> None:  # step 2, between the temporary's fsync and its rename
        assert hashing is not None
        new = hashing.hash.hexdigest()
        lines = [new] + [d for d in _current_digests(target) if d != new]
        atomic_write_text(digest_path(target), "".join(f"{d}  {target.name}\n" for d in lines))

    with atomic_write(target, "wb", before_replace=record) as f:
        hashing = _Hashing(f)
        fill(hashing)
    digest = hashing.hash.hexdigest()
    atomic_write_text(digest_path(target), f"{digest}  {target.name}\n")
    return digest


def atomic_torch_save_with_digest(obj: Any, path: str | os.PathLike[str]) -> str:
    """``torch.save`` atomically, with the file's SHA-256 recorded beside it."""
    import torch  # here, so that this module stays importable without torch

    return write_with_digest(path, lambda f: torch.save(obj, f))


def copy_with_digest(source: Path, path: Path) -> None:
    """Copy ``source`` (and its recorded digest, when it has one) to ``path`` in the same
    crash-safe order as a fresh write; the copy is checked against the source's digest."""
    if recorded(source) is None:
        from scaleq.io import atomic_copy

        atomic_copy(source, path)
        return
    verify(source)
    with open(source, "rb") as src:
        write_with_digest(path, lambda dst: shutil.copyfileobj(src, dst))
    shutil.copystat(source, path)


def record_digest(path: Path) -> str:
    """Hash an existing file (a DeepSpeed shard, written by DeepSpeed) and record its digest."""
    digest = sha256_file(path)
    atomic_write_text(digest_path(path), f"{digest}  {path.name}\n")
    return digest


def _current_digests(path: Path) -> list[str]:
    """The digests the file at ``path`` may have now: those recorded for it (at most two; after a
    crash between steps 2 and 3 the second is the file's), none when there is no file or no digest."""
    if not path.exists():
        return []
    try:
        return (recorded(path) or [])[:2]
    except DigestError:
        return []
