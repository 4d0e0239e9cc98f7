"""Checkpoint files load as data, never as code.

Every checkpoint scaleq reads goes through :func:`load_checkpoint_file`: first the file's SHA-256
is checked against the digest recorded beside it (:mod:`scaleq.digests`), then it is unpickled by
torch's ``weights_only`` unpickler, which builds tensors, numbers, strings and plain containers
(dict, list, tuple, set, OrderedDict) and nothing else. A file whose pickle asks for any other
type or function (``os.system``, a class of someone's module) is refused with
:class:`UnsafeFileError`, naming the file and what it wanted to create, before anything from it
runs.

What scaleq stores is plain by construction (states as tensors, lists and dicts). Allow-listed
beyond that, explicitly:

- NumPy arrays of numbers (``numpy.ndarray``, ``numpy.dtype``, ``_reconstruct``), so that the
  NumPy RNG state of checkpoints written before it was stored as a tensor still loads. These
  globals rebuild an array from its bytes; an array of Python objects would need further globals
  for its elements, which stay refused.
- The types DeepSpeed writes into its own files, passed in by the DeepSpeed readers
  (:data:`scaleq.distributed.deepspeed_checkpoint.deepspeed_safe_globals`).
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scaleq import digests


class UnsafeFileError(ValueError):
    """A file asks the unpickler to create something that is not data; it was not loaded."""


def _numpy_globals() -> list[Any]:
    core = getattr(np, "_core", None) or np.core  # NumPy 2 renamed np.core
    return [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


NUMPY_GLOBALS: list[Any] = _numpy_globals()
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def safe_load(path: Path, *, map_location: Any = "cpu", allowed: Sequence[Any] = (), mmap: bool = False) -> Any:
    """``torch.load`` with the ``weights_only`` unpickler, ``allowed`` globals added (see the
    module docstring); :class:`UnsafeFileError` for a file that needs anything else. ``mmap``
    maps tensor storages instead of reading them (a check that the pickle is data, reading little)."""
    try:
        with torch.serialization.safe_globals([*NUMPY_GLOBALS, *allowed]):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        wanted = refused_global(err)
        if wanted is None:
            raise
        raise UnsafeFileError(
            f"{path}: refused: loading it would create '{wanted}', which is not checkpoint data (tensors, "
            "numbers, strings, plain containers); nothing from the file was run"
        ) from None


def refused_global(err: BaseException) -> str | None:
    """The type or function torch's ``weights_only`` unpickler refused to create, from its message."""
    text = str(err)
    if "Weights only load failed" not in text:
        return None
    match = _GLOBAL.search(text)
    if match:
        return match[1]
    if "Unsupported operand" in text:  # not a pickle at all (damaged or foreign bytes): unreadable, not unsafe
        return None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[1][:120] if len(lines) > 1 else "an object that is not data"


def load_checkpoint_file(
    path: Path, *, map_location: Any = "cpu", allowed: Sequence[Any] = (),
    on_missing_digest: Callable[[Path], None] | None = None,
) -> Any:
    """Verify ``path`` against its digest (:class:`scaleq.digests.DigestError` when it differs),
    then :func:`safe_load` it. A file without a digest (written before checkpoints carried one)
    loads, and ``on_missing_digest(path)`` is told."""
    if not digests.verify(path) and on_missing_digest is not None:
        on_missing_digest(path)
    return safe_load(path, map_location=map_location, allowed=allowed)


def check_file(path: Path, allowed: Sequence[Any] = ()) -> bool:
    """What a load would refuse, found without reading the tensors: the digest (read whole) and
    the pickle (tensor storages only mapped). Raises :class:`scaleq.digests.DigestError` or
    :class:`UnsafeFileError`; other damage raises what torch raises. True when a digest was checked,
    False when the file has none."""
    verified = digests.verify(path)
    safe_load(path, allowed=allowed, mmap=True)
    return verified
