"""THE on-disk format of scaleq: a versioned Zarr v3 store of trajectories.

One store holds S trajectories (one split of a dataset: ``train.zarr``, ``valid.zarr``, ...).
Trajectories may differ in frame count T_s and node count N_s, so per-frame arrays are stored
"ragged" like PyG batches: the frames of trajectory s are consecutive blocks of N_s rows.

    positions       float32 [R, D]   R = sum_s T_s * N_s; frame t of trajectory s is rows
                                     row_offset_s + t * N_s ... + N_s
    velocities      float32 [R, D]   optional, same rows as positions
    node_features   float32 [M, F]   M = sum_s N_s; static per-node features (charge, type, ...)
    edge_index      int64   [Q, 2]   optional static edges (bonds) as (source j, target i) pairs,
                                     numbered locally within their trajectory
    edge_attr       float32 [Q, Fe]  optional, one row per static edge
    trajectories    int64   [S, 6]   per trajectory: row_offset, num_frames, num_nodes,
                                     node_offset, edge_offset, num_edges

Root attributes: ``format`` and ``version`` (checked on open), ``kind``, ``dim``, ``dt`` (time
between stored frames), ``frame_stride``, ``default_radius``, ``bounds``, ``feature_names``,
``edge_feature_names``, ``provenance`` (source, command, seed), ``extra`` (source-specific
metadata) and ``statistics`` (computed while writing, so training never scans the data).

Chunks hold whole frames when every trajectory has the same N (one frame per chunk once a frame
is 64 KiB or more); shards group many chunks into one file. Writes go to a temporary sibling
directory that is renamed into place only when the store is complete.

Version 2 (this one) ends every array's codec chain with Zarr v3's ``crc32c`` codec, after the
compressor: each stored chunk carries the CRC-32C of its compressed bytes, checked by every read
(and the shard indexes carry theirs, as Zarr writes them), so damaged bytes become an error
naming the store, array and chunk, never data. Version 1 stores (no chunk checksums) still open,
with a warning and the command that adds them (``python -m scaleq.verify --add-checksums``).
"""

from __future__ import annotations

import datetime
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np

FORMAT_NAME = "scaleq-trajectories"
FORMAT_VERSION = 2
# versions this scaleq opens; 1 is version 2 without the chunk checksums
READABLE_VERSIONS = (1, 2)

# Columns of the ``trajectories`` table.
ROW_OFFSET, NUM_FRAMES, NUM_NODES, NODE_OFFSET, EDGE_OFFSET, NUM_EDGES = range(6)


class StoreError(ValueError):
    """A store (or data meant for one) is missing, malformed or inconsistent."""


class StoreWarning(UserWarning):
    """A store opens, but something about it deserves the user's attention (no chunk checksums)."""


@dataclass(frozen=True, kw_only=True)
class StoreAttrs:
    """What a store says about its data (everything but the arrays and the statistics)."""

    kind: str  # "nbody", "water3d", "md", "synthetic", ...
    dim: int
    dt: float  # time between two stored frames, in the source's units
    frame_stride: int = 1  # stored frames are every frame_stride-th frame of the source
    default_radius: float | None = None
    bounds: list[list[float]] | None = None  # [D][2] lower, upper
    feature_names: list[str] = field(default_factory=list)
    edge_feature_names: list[str] = field(default_factory=list)
    provenance: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.dim < 1:
            raise StoreError(f"store attribute 'dim' must be >= 1, got {self.dim}")
        if not self.dt > 0:
            raise StoreError(f"store attribute 'dt' must be > 0, got {self.dt}")
        if self.frame_stride < 1:
            raise StoreError(f"store attribute 'frame_stride' must be >= 1, got {self.frame_stride}")


@dataclass(frozen=True)
class Trajectory:
    """One trajectory in memory, as a converter hands it to :class:`StoreWriter`.

    Shapes:
        positions: [T, N, D]; velocities: [T, N, D] or None; node_features: [N, F];
        edge_index: [2, E] (row 0 source j, row 1 target i) or None; edge_attr: [E, Fe] or None.
    """

    positions: np.ndarray
    node_features: np.ndarray
    velocities: np.ndarray | None = None
    edge_index: np.ndarray | None = None
    edge_attr: np.ndarray | None = None


def default_provenance(source: str, seed: int | None = None) -> dict[str, Any]:
    """Provenance for a store written by the current command."""
    return {
        "source": source,
        "command": " ".join(sys.argv),
        "seed": seed,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
