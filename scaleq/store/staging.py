"""All-or-nothing writing of a dataset directory (``<out>/{train,valid,test}.zarr``).

Converters write every split into a hidden staging directory next to the final stores and move
them into place only when all splits are complete, so a bad record in ``test`` leaves neither a
new ``train.zarr`` nor a half-written one behind, and existing stores are untouched on failure.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from scaleq.io import remove_orphans, replace_dir
from scaleq.store.format import StoreError


@contextmanager
def staged_dataset(
    out_dir: str | os.PathLike[str], splits: Sequence[str], overwrite: bool = False
) -> Iterator[dict[str, Path]]:
    """Yield staging paths ``{split: path}`` to write stores into; on success they replace
    ``<out_dir>/<split>.zarr``. Existing stores are refused unless ``overwrite``."""
    out = Path(out_dir)
    final = {split: out / f"{split}.zarr" for split in splits}
    if not overwrite:
        for path in final.values():
            if path.exists():
                raise StoreError(f"{path}: a store already exists here (pass overwrite / --overwrite to replace it)")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    remove_orphans(out, ".staging-")
    stage = out / f".staging-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    try:
        yield {split: stage / f"{split}.zarr" for split in splits}
        for split, path in final.items():
            replace_dir(stage / f"{split}.zarr", path)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        if created and out.exists() and not any(out.iterdir()):
            out.rmdir()  # a failed first conversion leaves no empty directory either
