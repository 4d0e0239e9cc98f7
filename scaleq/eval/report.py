"""Tables that benchmarks and diagnostics write: CSV files, written atomically."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scaleq.io import atomic_write


def write_rows(rows: list[dict[str, Any]], path: Path, columns: Sequence[str] | None = None) -> None:
    """CSV of ``rows``; columns are ``columns`` (other keys left out) or the union of the rows'
    keys in first-seen order. Written to a temporary file, then renamed into place."""
    fields = list(columns) if columns is not None else list(dict.fromkeys(k for row in rows for k in row))
    with atomic_write(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
