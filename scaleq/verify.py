"""Check a store or a run directory end to end: ``python -m scaleq.verify PATH [PATH ...]``.

    python -m scaleq.verify data/nbody/train.zarr          # one store
    python -m scaleq.verify data/nbody                     # every *.zarr store in a dataset folder
    python -m scaleq.verify runs/egnn_nbody                # a run: config.yaml and every checkpoint
    python -m scaleq.verify --add-checksums data/old.zarr  # give a version 1 store its chunk checksums

A store: its schema (what opening it checks), every chunk of every array read and its CRC-32C
checked, every float finite, and the recorded statistics recomputed from the data. A run
directory: its config.yaml, and every checkpoint file (each DeepSpeed shard too) checked against
its SHA-256 digest and unpickled as data only. One line per problem, then a summary; exit 0 only
when everything is whole (notes, such as a store without checksums, do not fail it), 1 when
something is damaged, 2 when PATH is neither a store nor a run directory.

``--add-checksums`` rewrites a version 1 store as version 2, chunk by chunk into a sibling
directory that replaces the store only when complete (the store is read in full first: data
that cannot be read is refused, not certified).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr
import zarr.codecs

from scaleq.digests import SUFFIX, recorded
from scaleq.io import remove_orphans, replace_dir
from scaleq.run_directory import RunDirectory
from scaleq.store.format import FORMAT_VERSION, StoreError
from scaleq.store.reader import TrajectoryStore, open_store
from scaleq.store.writer import StoreStatistics


@dataclass
class Report:
    """What a check found: problems (the thing is damaged) and notes (it is whole, but see)."""

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)

    def extend(self, other: Report) -> None:
        self.problems += other.problems
        self.notes += other.notes
        self.checked += other.checked


# -- stores ---------------------------------------------------------------------------------------


def verify_store(path: Path) -> Report:
    """Schema, every chunk (checksum and finiteness) and the statistics of one store."""
    report = Report(checked=[f"store {path}"])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the version note is ours to print, once
            store = open_store(path)
    except StoreError as err:
        report.problems.append(str(err))
        return report
    if not store.checksums:
        report.notes.append(f"{path}: store format version {store.version} carries no chunk checksums: damage cannot "
                            f"be detected; add them with: python -m scaleq.verify --add-checksums {path}")
    else:
        for name, array in store.arrays.items():
            if not _has_crc32c(array):
                report.problems.append(f"{path}: array '{name}' has no crc32c codec, which format version "
                                       f"{store.version} requires")
    damaged = False
    for name, array in store.arrays.items():
        rows = array.chunks[0]
        for c in range(math.ceil(array.shape[0] / rows)):
            where = slice(c * rows, min((c + 1) * rows, array.shape[0]))
            try:
                block = store._read(array, name, where)
            except StoreError as err:
                report.problems.append(str(err))
                damaged = True
                continue
            if block.dtype.kind == "f" and not np.isfinite(block).all():
                report.problems.append(f"{path}: array '{name}', {store.describe_rows(name, where)}: "
                                       f"{int((~np.isfinite(block)).sum())} values are NaN or infinite")
                damaged = True
    if not damaged:  # statistics of data that reads back whole
        report.problems += _statistics_problems(store)
    return report


def _has_crc32c(array: zarr.Array) -> bool:
    return any(isinstance(codec, zarr.codecs.Crc32cCodec) for codec in array.compressors)


def _statistics_problems(store: TrajectoryStore) -> list[str]:
    """Each recorded statistic that differs from the one recomputed from the stored data."""
    statistics = StoreStatistics(store.attrs.dim)
    for s in range(store.num_trajectories):
        traj = store.read_trajectory(s)
        statistics.add(traj.positions, traj.velocities, traj.node_features)
    recomputed = statistics.result(store.table)
    problems = []
    for key, value in recomputed.items():
        saved = store.statistics.get(key)
        if not _close(saved, value):
            problems.append(f"{store.path}: statistic '{key}' is {_short(saved)} in the store's attributes, "
                            f"{_short(value)} recomputed from its data")
    return problems


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if a is None or b is None:
        return a is b
    try:
        return bool(np.allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float), rtol=1e-6, atol=1e-12))
    except (TypeError, ValueError):
        return a == b


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def add_checksums(path: Path) -> str:
    """Rewrite the version 1 store ``path`` as version 2 (crc32c on every chunk), atomically; the
    one-line outcome. Raises StoreError when the store is not version 1 or cannot be read whole."""
    store = open_store(path) if _version(path) == FORMAT_VERSION else None
    if store is not None:
        return f"{path}: already format version {FORMAT_VERSION} (chunks carry checksums); nothing to do"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        store = open_store(path)
    tmp = path.with_name(f"{path.name}.partial-{os.getpid()}")
    remove_orphans(path.parent, f"{path.name}.partial-")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        source = zarr.open_group(str(path), mode="r")
        target = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        for name, array in store.arrays.items():
            copy = target.create_array(
                name, shape=array.shape, dtype=array.dtype, chunks=array.chunks, shards=array.shards,
                compressors=[*array.compressors, zarr.codecs.Crc32cCodec()], fill_value=array.fill_value,
            )
            step = (array.shards or array.chunks)[0]
            for start in range(0, array.shape[0], step):  # whole shards at a time: memory stays bounded
                where = slice(start, min(start + step, array.shape[0]))
                copy[where] = store._read(array, name, where)
        target.attrs.update({**dict(source.attrs), "version": FORMAT_VERSION})
        replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return f"{path}: rewritten as format version {FORMAT_VERSION}: every chunk now carries a CRC-32C checksum"


def _version(path: Path) -> Any:
    try:
        return dict(zarr.open_group(str(path), mode="r").attrs).get("version")
    except Exception as err:  # not a group: open_store says why
        raise StoreError(f"{path}: not a readable Zarr group ({type(err).__name__})") from None


# -- run directories ------------------------------------------------------------------------------


def verify_run(path: Path) -> Report:
    """config.yaml, and every checkpoint file (DeepSpeed shards included): digest and safe loading."""
    from scaleq.config import ConfigError, load_config
    from scaleq.train.checkpoint import checkpoint_problem

    report = Report(checked=[f"run {path}"])
    try:
        load_config(RunDirectory(path).config)
    except (ConfigError, OSError) as err:
        report.problems.append(f"{RunDirectory(path).config}: {err}" if str(path) not in str(err) else str(err))
    checkpoints = sorted(RunDirectory(path).checkpoints.glob("*.pt"))
    if not checkpoints:
        report.notes.append(f"{path}: no checkpoints yet")
    for checkpoint in checkpoints:
        report.checked.append(f"checkpoint {checkpoint}")
        problem = checkpoint_problem(checkpoint)
        if problem is not None:
            report.problems.append(problem)
        for file in [checkpoint, *_shards(checkpoint)]:
            if recorded(file) is None:
                report.notes.append(f"{file}: carries no SHA-256 digest (written before checkpoints had one): "
                                    "damage to it cannot be detected")
    return report


def _shards(checkpoint: Path) -> Iterator[Path]:
    folder = checkpoint.with_name(checkpoint.name + ".ds")
    if folder.is_dir():
        yield from sorted(p for p in folder.rglob("*.pt") if not p.name.endswith(SUFFIX))


# -- the command ----------------------------------------------------------------------------------


def verify_path(path: Path) -> Report:
    """A store, a dataset folder of stores, or a run directory."""
    if (path / "zarr.json").is_file():
        return verify_store(path)
    if RunDirectory(path).config.is_file():  # a run directory is recognised by its config
        return verify_run(path)
    stores = sorted(p for p in path.glob("*.zarr") if p.is_dir()) if path.is_dir() else []
    if not stores:
        raise StoreError(f"{path}: neither a store (zarr.json), a folder of stores (*.zarr) nor a run directory "
                         f"({RunDirectory(path).config.name})")
    report = Report()
    for store in stores:
        report.extend(verify_store(store))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scaleq.verify", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", type=Path, nargs="+", metavar="PATH", help="store, dataset folder or run directory")
    parser.add_argument("--add-checksums", action="store_true",
                        help="rewrite version 1 stores in place (atomically) with a checksum on every chunk")
    args = parser.parse_args(argv)
    if args.add_checksums:
        try:
            for path in args.paths:
                print(add_checksums(path), flush=True)
        except StoreError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        return 0
    report = Report()
    try:
        for path in args.paths:
            report.extend(verify_path(path))
    except StoreError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for line in report.problems:
        print(f"damaged: {line}")
    for line in report.notes:
        print(f"note: {line}")
    verdict = "whole" if not report.problems else f"{len(report.problems)} problem(s)"
    print(f"verify: {verdict} ({len(report.checked)} checked: {_count(report.checked)}; {len(report.notes)} note(s))")
    return 0 if not report.problems else 1


def _count(checked: list[str]) -> str:
    kinds: dict[str, int] = {}
    for item in checked:
        kind = item.split(" ", 1)[0]
        kinds[kind] = kinds.get(kind, 0) + 1
    return ", ".join(f"{n} {kind}{'s' if n > 1 else ''}" for kind, n in kinds.items())


if __name__ == "__main__":
    sys.exit(main())
