"""The optional parts of scaleq and the one line that names the extra a missing part comes with.

DeepSpeed, Ray and MDAnalysis are needed only by their engine, launcher and converter, so they are
extras (``pip install 'scaleq[deepspeed]'``, ``[ray]``, ``[md]``; ``make setup`` installs them
all). Code that needs one calls :func:`require` first: without the package it raises
:class:`MissingExtra`, which the command line reports as one line (exit status 2).
"""

from __future__ import annotations

import importlib

# extra (as pyproject.toml names it) -> the module it installs
EXTRAS = {"deepspeed": "deepspeed", "ray": "ray", "md": "MDAnalysis"}


class MissingExtra(ImportError):
    """An optional part of scaleq is used but not installed; the message names the extra."""


def require(extra: str, needed_by: str) -> None:
    """Import the module of ``extra``, or raise :class:`MissingExtra` naming the extra to install
    and ``needed_by`` (what asked for it, e.g. "engine.kind: deepspeed")."""
    module = EXTRAS[extra]
    try:
        importlib.import_module(module)
    except ImportError as err:
        raise MissingExtra(
            f"{needed_by} needs {module}, which is not installed ({err}): pip install 'scaleq[{extra}]'"
        ) from None
