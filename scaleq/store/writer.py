"""The one writer of the store format (:mod:`scaleq.store.format`): validates each trajectory,
computes the statistics while writing, and writes atomically (into ``<path>.partial-<pid>``,
renamed into place when complete)."""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import zarr
import zarr.codecs

from scaleq.io import remove_orphans, replace_dir
from scaleq.store.format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    NUM_FRAMES,
    NUM_NODES,
    StoreAttrs,
    StoreError,
    Trajectory,
)
from scaleq.store.reader import TrajectoryStore, open_store

_TARGET_CHUNK_BYTES = 64 * 1024
_DEFAULT_CHUNKS_PER_SHARD = 64


def _columns(values: np.ndarray) -> np.ndarray:
    """[..., D] values as a contiguous [D, M] array: reductions over its rows are ~10x faster than
    over axis 0 of [M, D] (a Water-3D trajectory's statistics take ~0.3 s instead of ~4 s)."""
    return np.ascontiguousarray(values.reshape(-1, values.shape[-1]).T)


class _RunningMoments:
    """Streaming per-axis mean and std (float64 sums; enough for float32 data)."""

    def __init__(self, dim: int) -> None:
        self.count = 0
        self.sum = np.zeros(dim)
        self.sum_sq = np.zeros(dim)

    def add(self, values: np.ndarray) -> None:
        columns = _columns(values)
        self.count += columns.shape[1]
        self.sum += columns.sum(1, dtype=np.float64)
        self.sum_sq += np.einsum("ij,ij->i", columns, columns, dtype=np.float64)

    def result(self) -> dict[str, list[float]] | None:
        if self.count == 0:
            return None
        mean = self.sum / self.count
        var = np.maximum(self.sum_sq / self.count - mean * mean, 0.0)
        return {"mean": mean.tolist(), "std": np.sqrt(var).tolist()}


class StoreStatistics:
    """The statistics a store records, accumulated one trajectory at a time: by the writer, and
    again by ``python -m scaleq.verify`` from the stored data, to compare."""

    def __init__(self, dim: int) -> None:
        self.displacement = _RunningMoments(dim)
        self.acceleration = _RunningMoments(dim)
        self.velocity = _RunningMoments(dim)
        self.pos_min = np.full(dim, np.inf)
        self.pos_max = np.full(dim, -np.inf)
        self.feature_max_abs: np.ndarray | None = None

    def add(self, pos: np.ndarray, vel: np.ndarray | None, feats: np.ndarray) -> None:
        """One trajectory. Shapes: pos [T, N, D]; vel [T, N, D] or None; feats [N, F]."""
        if vel is not None:
            self.velocity.add(vel)
        columns = _columns(pos)
        self.pos_min = np.minimum(self.pos_min, columns.min(1))
        self.pos_max = np.maximum(self.pos_max, columns.max(1))
        del columns
        if pos.shape[0] >= 2:
            disp = np.diff(pos, axis=0)
            self.displacement.add(disp)
            if pos.shape[0] >= 3:
                self.acceleration.add(np.diff(disp, axis=0))
        max_abs = np.abs(feats).max(axis=0) if feats.shape[0] else np.zeros(feats.shape[1])
        self.feature_max_abs = max_abs if self.feature_max_abs is None else np.maximum(self.feature_max_abs, max_abs)

    def result(self, table: np.ndarray) -> dict[str, Any]:
        """The ``statistics`` attribute, given the store's ``trajectories`` table."""
        nodes = table[:, NUM_NODES]
        return {
            "num_trajectories": int(table.shape[0]),
            "num_frames_total": int(table[:, NUM_FRAMES].sum()),
            "num_nodes": {"min": int(nodes.min()), "max": int(nodes.max()), "mean": float(nodes.mean())},
            "position": {"min": self.pos_min.tolist(), "max": self.pos_max.tolist()},
            # Per-frame differences, as "Learning to Simulate" stores vel/acc statistics.
            "displacement": self.displacement.result(),
            "acceleration": self.acceleration.result(),
            "velocity": self.velocity.result(),
            "node_features_max_abs": (self.feature_max_abs if self.feature_max_abs is not None else np.zeros(0)).tolist(),
        }


class _AppendBuffer:
    """Collects rows for one array and writes them to Zarr in whole shards."""

    def __init__(self, array: zarr.Array, shard_rows: int) -> None:
        self.array = array
        self.shard_rows = shard_rows
        self.pending: list[np.ndarray] = []
        self.pending_rows = 0
        self.written = 0

    def add(self, rows: np.ndarray) -> None:
        self.pending.append(rows)
        self.pending_rows += rows.shape[0]
        if self.pending_rows >= self.shard_rows:
            self.flush(whole_shards_only=True)

    def flush(self, whole_shards_only: bool = False) -> None:
        if not self.pending_rows:
            return
        rows = np.concatenate(self.pending) if len(self.pending) > 1 else self.pending[0]
        n = (rows.shape[0] // self.shard_rows) * self.shard_rows if whole_shards_only else rows.shape[0]
        if n == 0:
            return
        start, stop = self.written, self.written + n
        self.array.resize((stop, *self.array.shape[1:]))
        self.array[start:stop] = rows[:n]
        self.written = stop
        rest = rows[n:]
        self.pending = [rest] if rest.shape[0] else []
        self.pending_rows = rest.shape[0]


class StoreWriter:
    """Writes a store atomically: into ``<path>.partial-<pid>``, renamed into place on success.

    Use as a context manager; ``add`` one trajectory at a time (memory stays bounded by one
    trajectory plus one shard per array). An exception inside the block removes the partial
    store and leaves any existing store at ``path`` untouched.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        attrs: StoreAttrs,
        *,
        overwrite: bool = False,
        rows_per_chunk: int | None = None,
        chunks_per_shard: int = _DEFAULT_CHUNKS_PER_SHARD,
        compression: str = "zstd",
        checksums: bool = True,
    ) -> None:
        self.path = Path(path)
        # False writes format version 1, as scaleq did before chunks carried checksums (tests of
        # old stores, and the benchmark of what checksums cost)
        self.checksums = checksums
        self.attrs = attrs
        self.overwrite = overwrite
        self.rows_per_chunk = rows_per_chunk
        self.chunks_per_shard = chunks_per_shard
        if compression not in ("zstd", "blosc", "none"):
            raise StoreError(f"compression must be 'zstd', 'blosc' or 'none', got {compression!r}")
        self.compression = compression
        self.tmp_path = self.path.with_name(f"{self.path.name}.partial-{os.getpid()}")
        self._group: zarr.Group | None = None
        self._buffers: dict[str, _AppendBuffer] = {}
        self._table: list[list[int]] = []
        self._has_velocities: bool | None = None
        self._has_edges: bool | None = None
        self._num_features: int | None = None
        self._num_edge_features: int | None = None
        self._statistics = StoreStatistics(attrs.dim)

    # -- context manager -------------------------------------------------------------------
    def __enter__(self) -> StoreWriter:
        if self.path.exists() and not self.overwrite:
            raise StoreError(f"{self.path}: a store already exists here (pass overwrite to replace it)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for leftover in (".partial-", ".old-"):
            remove_orphans(self.path.parent, f"{self.path.name}{leftover}")
        shutil.rmtree(self.tmp_path, ignore_errors=True)
        self._group = zarr.open_group(str(self.tmp_path), mode="w", zarr_format=3)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp_path, ignore_errors=True)
            return
        try:
            self._finish()
        except BaseException:
            shutil.rmtree(self.tmp_path, ignore_errors=True)
            raise

    # -- writing ---------------------------------------------------------------------------
    def add(self, traj: Trajectory) -> None:
        """Validate one trajectory and append it to the store."""
        s = len(self._table)
        pos, vel, feats, edges, edge_attr = self._validated(traj, s)
        if not self._buffers:
            self._create_arrays(pos.shape[1], feats.shape[1], vel is not None, edges, edge_attr)
        num_frames, num_nodes, _ = pos.shape
        row_offset = self._buffers["positions"].written + self._buffers["positions"].pending_rows
        node_offset = self._buffers["node_features"].written + self._buffers["node_features"].pending_rows
        edge_offset, num_edges = 0, 0
        if edges is not None:
            edge_offset = self._buffers["edge_index"].written + self._buffers["edge_index"].pending_rows
            num_edges = edges.shape[1]
            self._buffers["edge_index"].add(np.ascontiguousarray(edges.T))
            self._buffers["edge_attr"].add(edge_attr)
        self._buffers["positions"].add(pos.reshape(-1, pos.shape[2]))
        if vel is not None:
            self._buffers["velocities"].add(vel.reshape(-1, vel.shape[2]))
        self._buffers["node_features"].add(feats)
        self._table.append([row_offset, num_frames, num_nodes, node_offset, edge_offset, num_edges])
        self._statistics.add(pos, vel, feats)

    def _validated(
        self, traj: Trajectory, s: int
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray | None, np.ndarray | None]:
        where = f"{self.path}: trajectory {s}"
        pos = _as_float32(traj.positions, f"{where}, array 'positions'")
        if pos.ndim != 3 or pos.shape[2] != self.attrs.dim or pos.shape[0] < 1 or pos.shape[1] < 1:
            raise StoreError(
                f"{where}, array 'positions': expected shape [T, N, {self.attrs.dim}] with T, N >= 1, "
                f"got {list(pos.shape)}"
            )
        num_frames, num_nodes, _ = pos.shape
        vel = None
        if traj.velocities is not None:
            vel = _as_float32(traj.velocities, f"{where}, array 'velocities'")
            if vel.shape != pos.shape:
                raise StoreError(
                    f"{where}, array 'velocities': expected shape {list(pos.shape)} (as positions), "
                    f"got {list(vel.shape)}"
                )
        feats = _as_float32(traj.node_features, f"{where}, array 'node_features'")
        if feats.ndim != 2 or feats.shape[0] != num_nodes:
            raise StoreError(
                f"{where}, array 'node_features': expected shape [{num_nodes}, F], got {list(feats.shape)}"
            )
        edges = edge_attr = None
        if traj.edge_index is not None:
            edges = np.asarray(traj.edge_index)
            if edges.ndim != 2 or edges.shape[0] != 2 or not np.issubdtype(edges.dtype, np.integer):
                raise StoreError(
                    f"{where}, array 'edge_index': expected integer shape [2, E], got "
                    f"{edges.dtype} {list(edges.shape)}"
                )
            if edges.size and (edges.min() < 0 or edges.max() >= num_nodes):
                raise StoreError(f"{where}, array 'edge_index': node ids must lie in [0, {num_nodes})")
            edges = edges.astype(np.int64)
            raw_attr = traj.edge_attr if traj.edge_attr is not None else np.zeros((edges.shape[1], 0))
            edge_attr = _as_float32(raw_attr, f"{where}, array 'edge_attr'")
            if edge_attr.ndim != 2 or edge_attr.shape[0] != edges.shape[1]:
                raise StoreError(
                    f"{where}, array 'edge_attr': expected shape [{edges.shape[1]}, Fe], "
                    f"got {list(edge_attr.shape)}"
                )
        elif traj.edge_attr is not None:
            raise StoreError(f"{where}: 'edge_attr' given without 'edge_index'")

        # Every trajectory of a store carries the same arrays with the same widths.
        checks = [
            ("velocities", vel is not None, self._has_velocities),
            ("edge_index", edges is not None, self._has_edges),
            ("node_features width", feats.shape[1], self._num_features),
            ("edge_attr width", None if edge_attr is None else edge_attr.shape[1], self._num_edge_features),
        ]
        for name, this, first in checks:
            if first is not None and this != first and s > 0:
                raise StoreError(f"{where}: {name} is {this} here but {first} in trajectory 0")
        self._has_velocities = vel is not None
        self._has_edges = edges is not None
        self._num_features = feats.shape[1]
        self._num_edge_features = None if edge_attr is None else edge_attr.shape[1]
        return pos, vel, feats, edges, edge_attr

    def _create_arrays(
        self,
        num_nodes: int,
        num_features: int,
        has_velocities: bool,
        edges: np.ndarray | None,
        edge_attr: np.ndarray | None,
    ) -> None:
        assert self._group is not None, "StoreWriter must be used as a context manager"
        dim = self.attrs.dim
        rows = self.rows_per_chunk or num_nodes * chunk_frames(num_nodes, dim)
        self._create("positions", (rows, dim), np.float32)
        if has_velocities:
            self._create("velocities", (rows, dim), np.float32)
        self._create("node_features", (max(num_nodes, 1024), num_features), np.float32)
        if edges is not None and edge_attr is not None:
            self._create("edge_index", (16384, 2), np.int64)
            self._create("edge_attr", (16384, edge_attr.shape[1]), np.float32)

    def _create(self, name: str, chunk: tuple[int, int], dtype: type) -> None:
        assert self._group is not None
        shard = (chunk[0] * self.chunks_per_shard, chunk[1])
        array = self._group.create_array(
            name,
            shape=(0, chunk[1]),
            dtype=dtype,
            chunks=chunk,
            shards=shard,
            compressors=compressors(self.compression, self.checksums),
            fill_value=0,
        )
        self._buffers[name] = _AppendBuffer(array, shard[0])

    def _finish(self) -> None:
        if not self._table:
            raise StoreError(f"{self.path}: no trajectories were written")
        assert self._group is not None
        for buffer in self._buffers.values():
            buffer.flush()
        table = np.asarray(self._table, dtype=np.int64)
        self._group.create_array("trajectories", data=table, chunks=table.shape,
                                 compressors=compressors("zstd") if self.checksums else "auto")
        statistics = self._statistics.result(table)
        attrs = dataclasses.asdict(self.attrs)
        if attrs["bounds"] is None:
            attrs["bounds"] = [[lo, hi] for lo, hi in zip(statistics["position"]["min"], statistics["position"]["max"])]
        self._group.attrs.update(
            {"format": FORMAT_NAME, "version": FORMAT_VERSION if self.checksums else 1, **attrs,
             "statistics": statistics}
        )
        replace_dir(self.tmp_path, self.path)


def compressors(name: str, checksums: bool = True) -> list[Any]:
    """The bytes-to-bytes codecs of every array: the compressor, then Zarr v3's crc32c codec,
    which appends the CRC-32C of the compressed chunk and checks it on every read. crc32c rather
    than zstd's own content checksum: it covers every compression choice ('blosc' and 'none'
    too), it is checked before decompression (damaged bytes never reach the decompressor), and it
    is a codec of the Zarr v3 specification, so any Zarr v3 reader checks it as well."""
    chain: list[Any] = []
    if name == "zstd":
        chain.append(zarr.codecs.ZstdCodec(level=3))
    elif name == "blosc":
        chain.append(zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle"))
    if checksums:
        chain.append(zarr.codecs.Crc32cCodec())
    return chain


def _as_float32(values: np.ndarray, where: str) -> np.ndarray:
    array = np.asarray(values)
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise StoreError(f"{where}: expected a numeric array, got dtype {array.dtype}")
    array = array.astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise StoreError(f"{where}: {bad} values are NaN or infinite")
    return array


def write_store(
    path: str | os.PathLike[str],
    attrs: StoreAttrs,
    trajectories: Sequence[Trajectory],
    **writer_options: Any,
) -> TrajectoryStore:
    """Write in-memory trajectories as one store (atomically) and open it."""
    with StoreWriter(path, attrs, **writer_options) as writer:
        for traj in trajectories:
            writer.add(traj)
    return open_store(path)


def chunk_frames(num_nodes: int, dim: int) -> int:
    """Whole frames per chunk: as many as fit 64 KiB, at least one."""
    return max(1, math.floor(_TARGET_CHUNK_BYTES / (num_nodes * dim * 4)))
