"""scaleq: E(n)-equivariant graph networks on large geometric graphs.

The Python API (docs/api.md) is :mod:`scaleq.api`; its names are reachable from here too
(``scaleq.load_run``), imported on first use so that ``import scaleq`` stays cheap."""

from __future__ import annotations

import importlib
from typing import Any

API = ("Config", "LoadedRun", "RunRollout", "RunSummary", "load_config", "load_run", "rollout_from_run", "train")


def __getattr__(name: str) -> Any:
    if name in API:
        return getattr(importlib.import_module("scaleq.api"), name)
    raise AttributeError(f"module 'scaleq' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *API])
