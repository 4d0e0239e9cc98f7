"""Reading a store (:mod:`scaleq.store.format`): validated when opened, arrays read lazily, a
few rows at a time, through a bounded cache of decoded chunks."""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from scaleq.store.format import (
    EDGE_OFFSET,
    FORMAT_NAME,
    FORMAT_VERSION,
    NODE_OFFSET,
    NUM_EDGES,
    NUM_FRAMES,
    NUM_NODES,
    READABLE_VERSIONS,
    ROW_OFFSET,
    StoreAttrs,
    StoreError,
    StoreWarning,
    Trajectory,
)

_REQUIRED_ARRAYS = {"positions": np.float32, "node_features": np.float32, "trajectories": np.int64}
_OPTIONAL_ARRAYS = {"velocities": np.float32, "edge_index": np.int64, "edge_attr": np.float32}


class ChunkCache:
    """Least-recently-used decoded chunks, bounded in bytes: repeated reads of nearby frames
    (small systems, several frames per chunk) skip decompression, while memory stays bounded
    however large the store is."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.size = 0
        self.blocks: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()

    def get(self, key: tuple[str, int]) -> np.ndarray | None:
        block = self.blocks.get(key)
        if block is not None:
            self.blocks.move_to_end(key)
        return block

    def put(self, key: tuple[str, int], block: np.ndarray) -> np.ndarray:
        if block.nbytes <= self.capacity:
            old_block = self.blocks.pop(key, None)
            if old_block is not None:  # a re-put replaces, it does not count twice
                self.size -= old_block.nbytes
            self.blocks[key] = block
            self.size += block.nbytes
            while self.size > self.capacity:
                _, old = self.blocks.popitem(last=False)
                self.size -= old.nbytes
        return block


class TrajectoryStore:
    """A validated, read-only view of a store. Arrays are read lazily, a few rows at a time.

    Picklable: DataLoader workers and Ray workers re-open the Zarr arrays on first use. Reads go
    through a per-process :class:`ChunkCache` of ``cache_bytes``.
    """

    def __init__(self, path: str | os.PathLike[str], cache_bytes: int = 256 * 2**20) -> None:
        self.path = Path(path)
        self.cache = ChunkCache(cache_bytes)
        group = _open_group(self.path)
        try:
            meta = dict(group.attrs)
        except Exception as err:
            raise StoreError(f"{self.path}: the store's attributes cannot be read ({_describe(err)})") from err
        self.version: int = _check_format(self.path, meta)
        self.checksums = self.version >= 2  # chunks carry CRC-32C, checked on every read
        if not self.checksums:
            warnings.warn(f"{self.path}: store format version 1 carries no chunk checksums, so damaged data cannot be "
                          f"detected; add them with: python -m scaleq.verify --add-checksums {self.path}",
                          StoreWarning, stacklevel=2)
        fields = {f.name for f in dataclasses.fields(StoreAttrs)}
        missing = sorted(fields - meta.keys() - {"bounds", "default_radius"})
        if missing:
            raise StoreError(f"{self.path}: missing store attributes {missing}")
        try:
            self.attrs = StoreAttrs(**{k: meta[k] for k in fields if k in meta})
        except TypeError as err:
            raise StoreError(f"{self.path}: malformed store attributes: {err}") from err
        self.statistics: dict[str, Any] = meta.get("statistics") or {}
        self._arrays: dict[str, zarr.Array] | None = None
        self.table = np.zeros((0, 6), np.int64)  # the table names the trajectories of a damaged chunk, once read
        arrays = self._open_arrays(group)
        self.table: np.ndarray = self._read(arrays["trajectories"], "trajectories", slice(None))
        self.has_velocities = "velocities" in arrays
        self.has_edges = "edge_index" in arrays
        self.num_node_features = int(arrays["node_features"].shape[1])
        self.num_edge_features = int(arrays["edge_attr"].shape[1]) if self.has_edges else 0
        self._check_consistency(arrays)

    def _open_arrays(self, group: zarr.Group) -> dict[str, zarr.Array]:
        arrays: dict[str, zarr.Array] = {}
        try:
            names = set(group.array_keys())
        except Exception as err:  # a damaged zarr.json inside the store: zarr raises many types
            what = _unreadable_metadata(self.path) or "the arrays' metadata"
            raise StoreError(f"{self.path}: {what} cannot be read ({_describe(err)})") from err
        for name, dtype in {**_REQUIRED_ARRAYS, **_OPTIONAL_ARRAYS}.items():
            if name not in names:
                if name in _REQUIRED_ARRAYS:
                    raise StoreError(f"{self.path}: array '{name}' is missing")
                continue
            try:
                array = group[name]
            except Exception as err:
                raise StoreError(f"{self.path}: array '{name}' cannot be opened ({_describe(err)})") from err
            if array.dtype != np.dtype(dtype):
                raise StoreError(f"{self.path}: array '{name}' has dtype {array.dtype}, expected {np.dtype(dtype)}")
            if len(array.shape) != 2:
                raise StoreError(f"{self.path}: array '{name}' has shape {list(array.shape)}, expected 2 dimensions")
            arrays[name] = array
        if ("edge_index" in arrays) != ("edge_attr" in arrays):
            raise StoreError(f"{self.path}: arrays 'edge_index' and 'edge_attr' must come together")
        self._arrays = arrays
        return arrays

    def _check_consistency(self, arrays: dict[str, zarr.Array]) -> None:
        dim = self.attrs.dim
        table = self.table
        if table.ndim != 2 or table.shape[1] != 6 or table.shape[0] < 1:
            raise StoreError(f"{self.path}: array 'trajectories' has shape {list(table.shape)}, expected [S >= 1, 6]")
        rows = int((table[:, NUM_FRAMES] * table[:, NUM_NODES]).sum())
        nodes = int(table[:, NUM_NODES].sum())
        edges = int(table[:, NUM_EDGES].sum())
        expected = {"positions": (rows, dim), "velocities": (rows, dim), "node_features": (nodes, None),
                    "edge_index": (edges, 2), "edge_attr": (edges, None)}
        for name, array in arrays.items():
            if name == "trajectories":
                continue
            want_rows, want_cols = expected[name]
            if array.shape[0] != want_rows or (want_cols is not None and array.shape[1] != want_cols):
                cols = "F" if want_cols is None else want_cols
                raise StoreError(
                    f"{self.path}: array '{name}' has shape {list(array.shape)}, expected [{want_rows}, {cols}] "
                    "from the 'trajectories' table"
                )

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_arrays"] = None  # Zarr handles are re-opened in the receiving process.
        state["cache"] = ChunkCache(self.cache.capacity)  # each process fills its own
        return state

    @property
    def arrays(self) -> dict[str, zarr.Array]:
        if self._arrays is None:
            self._open_arrays(_open_group(self.path))
        assert self._arrays is not None
        return self._arrays

    # -- per-trajectory access -------------------------------------------------------------
    @property
    def num_trajectories(self) -> int:
        return int(self.table.shape[0])

    def num_frames(self, s: int) -> int:
        return int(self.table[s, NUM_FRAMES])

    def num_nodes(self, s: int) -> int:
        return int(self.table[s, NUM_NODES])

    def frames(self, s: int, frames: Sequence[int], array: str = "positions") -> np.ndarray:
        """Frames of trajectory s from 'positions' or 'velocities'. Shape: [len(frames), N, D]."""
        offset, num_frames, num_nodes = (int(v) for v in self.table[s, :3])
        for t in frames:
            if not 0 <= t < num_frames:
                raise IndexError(f"{self.path}: frame {t} of trajectory {s} is out of range [0, {num_frames})")
        return np.stack([self.rows(array, offset + t * num_nodes, offset + (t + 1) * num_nodes) for t in frames])

    def rows(self, array: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of a 2-D array, read chunk by chunk through the cache."""
        data = self.arrays[array]
        chunk = data.chunks[0]
        parts = []
        for c in range(start // chunk, (stop - 1) // chunk + 1):
            block = self.cache.get((array, c))
            if block is None:
                block = self.cache.put((array, c), self._read(data, array, slice(c * chunk, (c + 1) * chunk)))
            lo, hi = max(start - c * chunk, 0), min(stop - c * chunk, block.shape[0])
            parts.append(block[lo:hi])
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _read(self, data: zarr.Array, name: str, rows: slice) -> np.ndarray:
        """Rows of one array; a damaged chunk or shard (a CRC-32C that does not match, zstd errors,
        truncated files) becomes a StoreError that names the store, the array, the chunk and what
        it holds (which frames of which trajectories)."""
        try:
            return data[rows]
        except Exception as err:  # codecs and stores raise many types for damaged bytes
            raise StoreError(
                f"{self.path}: array '{name}', {self.describe_rows(name, rows, data)} cannot be read "
                f"({_describe(err)}); the store is damaged: re-create it with data_prep/*.py"
            ) from err

    def describe_rows(self, name: str, rows: slice, data: zarr.Array | None = None) -> str:
        """``chunk c (rows a..b: frames t0..t1 of trajectory s, ...)``: what rows of ``name`` hold."""
        length = (data if data is not None else self.arrays[name]).shape[0]
        chunk_rows = (data if data is not None else self.arrays[name]).chunks[0]
        start, stop = rows.start or 0, min(length if rows.stop is None else rows.stop, length)
        first, last = start // chunk_rows, max(stop - 1, start) // chunk_rows
        chunks = f"chunk {first}" if first == last else f"chunks {first}..{last}"
        held = self._contents(name, start, stop)
        return f"{chunks} (rows {start}..{stop - 1}{': ' + held if held else ''})"

    def _contents(self, name: str, start: int, stop: int) -> str:
        """Which trajectories' frames (or nodes, or edges) rows [start, stop) of ``name`` hold."""
        table = self.table
        if not len(table) or name == "trajectories" or stop <= start:
            return ""
        per_frame = name in ("positions", "velocities")
        column = {"node_features": NODE_OFFSET, "edge_index": EDGE_OFFSET, "edge_attr": EDGE_OFFSET}.get(name, ROW_OFFSET)
        offsets = table[:, column]
        parts = []
        s = max(int(np.searchsorted(offsets, start, side="right")) - 1, 0)
        while s < len(table) and offsets[s] < stop:
            if per_frame:
                nodes = int(table[s, NUM_NODES])
                end = offsets[s] + int(table[s, NUM_FRAMES]) * nodes
                lo, hi = max(start, offsets[s]), min(stop, end)
                if hi > lo:
                    t0, t1 = (lo - offsets[s]) // nodes, (hi - 1 - offsets[s]) // nodes
                    parts.append(f"frame {t0}" if t0 == t1 else f"frames {t0}..{t1}")
                    parts[-1] += f" of trajectory {s}"
            else:
                parts.append(f"trajectory {s}")
            s += 1
        what = {"node_features": "node features of ", "edge_index": "edges of ", "edge_attr": "edges of "}.get(name, "")
        if len(parts) > 3:
            parts = [*parts[:2], f"... ({len(parts) - 2} more)"]
        return what + ", ".join(parts)

    def node_features(self, s: int) -> np.ndarray:
        """Static node features of trajectory s. Shape: [N, F]."""
        start = int(self.table[s, NODE_OFFSET])
        return self.rows("node_features", start, start + self.num_nodes(s))

    def edges(self, s: int) -> tuple[np.ndarray, np.ndarray]:
        """Static edges of trajectory s. Shapes: edge_index [2, E] (local ids), edge_attr [E, Fe]."""
        if not self.has_edges:
            raise StoreError(f"{self.path}: this store has no static edges ('edge_index')")
        start, count = int(self.table[s, EDGE_OFFSET]), int(self.table[s, NUM_EDGES])
        if count == 0:
            return np.zeros((2, 0), np.int64), np.zeros((0, self.num_edge_features), np.float32)
        return self.rows("edge_index", start, start + count).T.copy(), self.rows("edge_attr", start, start + count)

    def read_trajectory(self, s: int) -> Trajectory:
        """The whole of trajectory s in memory (for converters, tests and small stores)."""
        frames = list(range(self.num_frames(s)))
        edge_index, edge_attr = self.edges(s) if self.has_edges else (None, None)
        return Trajectory(
            positions=self.frames(s, frames),
            node_features=self.node_features(s),
            velocities=self.frames(s, frames, "velocities") if self.has_velocities else None,
            edge_index=edge_index,
            edge_attr=edge_attr,
        )


def _describe(err: BaseException) -> str:
    """``Type: first line of the message``, short enough for a one-line error."""
    if "Stored and computed checksum do not match" in str(err):  # zarr's crc32c codec
        return "its CRC-32C checksum does not match: the stored bytes changed since they were written"
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {text[:200]}" if text else type(err).__name__


def _unreadable_metadata(path: Path) -> str | None:
    """Which array's ``zarr.json`` is not valid UTF-8 JSON, if any (to name it in the error)."""
    for meta in sorted(path.glob("*/zarr.json")):
        try:
            json.loads(meta.read_bytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return f"array '{meta.parent.name}' ({meta.relative_to(path)})"
    return None


def _open_group(path: Path) -> zarr.Group:
    if not path.exists():
        raise StoreError(f"{path}: no store here (the path does not exist)")
    try:
        group = zarr.open_group(str(path), mode="r")
    except Exception as err:  # zarr raises several types for "not a group"
        raise StoreError(f"{path}: not a readable Zarr group ({type(err).__name__}: {err})") from err
    return group


def _check_format(path: Path, meta: dict[str, Any]) -> int:
    """The store's format version, when this scaleq reads it."""
    if meta.get("format") != FORMAT_NAME:
        raise StoreError(f"{path}: attribute 'format' is {meta.get('format')!r}, expected {FORMAT_NAME!r}")
    version = meta.get("version")
    if version not in READABLE_VERSIONS:
        raise StoreError(
            f"{path}: store format version {version!r} is not supported (this scaleq reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}, writes {FORMAT_VERSION}); re-create the store with this "
            "version's data_prep scripts"
        )
    return int(version)


def open_store(path: str | os.PathLike[str]) -> TrajectoryStore:
    """Open and validate a store; raises :class:`StoreError` naming the problem."""
    return TrajectoryStore(path)
