"""DeepMind "Learning to Simulate" datasets (Water-3D and the 2-D sets) into scaleq stores.

A dataset directory holds ``{train,valid,test}.tfrecord`` and ``metadata.json``. Each record is a
``tf.SequenceExample``:

    context:       key            int64       the trajectory's id
                   particle_type  bytes       int64 little endian [N]
    feature_lists: position       bytes/step  float32 [N, D], T + 1 steps (T = sequence_length)
                   step_context   bytes/step  float32 [C], only when metadata has context_mean

The protobuf wire format is parsed here by hand (a few dozen lines; no TensorFlow, no generated
code), so every surprise (unknown key, wrong type, wrong size) becomes an error naming the file
and the record. Conversion streams: one record, one trajectory in memory at a time.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from scaleq.sources.tfrecord import TFRecordError, read_records
from scaleq.store.format import StoreAttrs, StoreError, Trajectory, default_provenance
from scaleq.store.staging import staged_dataset
from scaleq.store.writer import StoreWriter

SPLITS = ("train", "valid", "test")
CONTEXT_KEYS = ("key", "particle_type")
SEQUENCE_KEYS = ("position", "step_context")

# Wire types of the protobuf encoding.
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
# Feature's oneof: field number -> kind.
_FEATURE_KINDS = {1: "bytes", 2: "float", 3: "int64"}


class _WireError(ValueError):
    """Malformed protobuf bytes (turned into a TFRecordError with the file and record)."""


@dataclass(frozen=True)
class Feature:
    """One tf.train.Feature: ``kind`` is 'bytes', 'float' or 'int64'; ``values`` a list of
    bytes (bytes_list, as memoryviews into the record) or a 1-D array (float32 / int64)."""

    kind: str
    values: list[memoryview] | np.ndarray


# -- protobuf wire format ------------------------------------------------------------------------


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise _WireError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= 64:
            raise _WireError("varint longer than 10 bytes")


def _fields(buf: memoryview) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value): an int for varints, a memoryview for everything else."""
    pos = 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if wire == _VARINT:
            value, pos = _varint(buf, pos)
        elif wire in (_I64, _I32):
            size = 8 if wire == _I64 else 4
            value, pos = buf[pos : pos + size], pos + size
        elif wire == _LEN:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + size], pos + size
        else:
            raise _WireError(f"unsupported wire type {wire} (field {number})")
        if pos > len(buf):
            raise _WireError(f"field {number} runs past the end of its message")
        yield number, wire, value


def _feature(buf: memoryview) -> Feature:
    kind, values = None, None
    for number, wire, value in _fields(buf):
        if number not in _FEATURE_KINDS or wire != _LEN:
            continue  # unknown fields are skipped, as protobuf parsers do
        kind = _FEATURE_KINDS[number]
        if kind == "bytes":
            # memoryviews into the record: a 96 MB Water-3D trajectory is not copied here
            values = [v for n, w, v in _fields(value) if n == 1 and w == _LEN]
        elif kind == "float":
            parts = [np.frombuffer(v, "<f4") for n, w, v in _fields(value) if n == 1]  # packed or not
            values = np.concatenate(parts) if parts else np.zeros(0, np.float32)
        else:
            ints: list[int] = []
            for n, w, v in _fields(value):
                if n == 1 and w == _VARINT:
                    ints.append(v)
                elif n == 1 and w == _LEN:  # packed
                    p = 0
                    while p < len(v):
                        item, p = _varint(v, p)
                        ints.append(item)
            values = np.array([i - (1 << 64) if i >= 1 << 63 else i for i in ints], dtype=np.int64)
    if kind is None:
        return Feature("bytes", [])  # an empty Feature (no kind set)
    return Feature(kind, values)  # type: ignore[arg-type]


def _map_entries(buf: memoryview) -> Iterator[tuple[str, memoryview]]:
    """Entries of a map<string, Message> field 1 of ``buf``."""
    for number, wire, entry in _fields(buf):
        if number != 1 or wire != _LEN:
            continue
        key, value = "", memoryview(b"")
        for n, w, v in _fields(entry):
            if n == 1 and w == _LEN:
                key = bytes(v).decode("utf-8", errors="replace")
            elif n == 2 and w == _LEN:
                value = v
        yield key, value


def parse_sequence_example(data: bytes) -> tuple[dict[str, Feature], dict[str, list[Feature]]]:
    """A serialized tf.train.SequenceExample as (context features, feature lists)."""
    context: dict[str, Feature] = {}
    sequences: dict[str, list[Feature]] = {}
    for number, wire, value in _fields(memoryview(data)):
        if wire != _LEN:
            continue
        if number == 1:
            context.update((k, _feature(v)) for k, v in _map_entries(value))
        elif number == 2:
            for key, feature_list in _map_entries(value):
                sequences[key] = [_feature(v) for n, w, v in _fields(feature_list) if n == 1 and w == _LEN]
    return context, sequences


# -- Learning to Simulate records ----------------------------------------------------------------


@dataclass(frozen=True)
class Metadata:
    """What the converter needs from metadata.json (``raw`` keeps all of it)."""

    dim: int
    dt: float
    sequence_length: int | None
    has_context: bool
    raw: dict[str, Any]

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Metadata:
        path = Path(path)
        if not path.is_file():
            raise StoreError(f"{path}: metadata file not found (expected metadata.json next to the tfrecords)")
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise StoreError(f"{path}: not valid JSON: {err}") from None
        if not isinstance(raw, dict):
            raise StoreError(f"{path}: expected a JSON object")
        for key in ("dim", "dt"):
            if key not in raw:
                raise StoreError(f"{path}: key '{key}' is missing")
        dim, dt = raw["dim"], raw["dt"]
        if not isinstance(dim, int) or dim < 1:
            raise StoreError(f"{path}: key 'dim' must be a positive integer, got {dim!r}")
        if not isinstance(dt, int | float) or not dt > 0:
            raise StoreError(f"{path}: key 'dt' must be a positive number, got {dt!r}")
        bounds = raw.get("bounds")
        if bounds is not None and (len(bounds) != dim or any(len(b) != 2 for b in bounds)):
            raise StoreError(f"{path}: key 'bounds' must be {dim} pairs [low, high], got {bounds!r}")
        seq = raw.get("sequence_length")
        return cls(dim=dim, dt=float(dt), sequence_length=None if seq is None else int(seq),
                   has_context="context_mean" in raw, raw=raw)


@dataclass(frozen=True)
class Record:
    """One decoded trajectory. Shapes: particle_type [N] int64, positions [T + 1, N, D] float32,
    step_context [T + 1, C] float32 or None."""

    key: int | None
    particle_type: np.ndarray
    positions: np.ndarray
    step_context: np.ndarray | None


def decode_record(data: bytes, meta: Metadata, where: str) -> Record:
    """Decode and check one record against the metadata; errors start with ``where``."""
    try:
        context, sequences = parse_sequence_example(data)
    except _WireError as err:
        raise TFRecordError(f"{where}: not a valid tf.SequenceExample ({err})") from None
    allowed_sequences = SEQUENCE_KEYS if meta.has_context else ("position",)
    for key in context:
        if key not in CONTEXT_KEYS:
            raise TFRecordError(f"{where}: unknown context feature key {key!r} (expected {list(CONTEXT_KEYS)})")
    for key in sequences:
        if key not in allowed_sequences:
            hint = " (step_context needs context_mean in metadata.json)" if key == "step_context" else ""
            raise TFRecordError(f"{where}: unknown feature list key {key!r} (expected {list(allowed_sequences)}){hint}")

    key = None
    if "key" in context:
        feat = context["key"]
        if feat.kind != "int64" or len(feat.values) != 1:
            raise TFRecordError(f"{where}: context 'key' must be one int64, got {feat.kind} x {len(feat.values)}")
        key = int(feat.values[0])
    particle_type = _single_bytes(context.get("particle_type"), "context 'particle_type'", where, "<i8")
    num_nodes = particle_type.shape[0]
    if num_nodes == 0:
        raise TFRecordError(f"{where}: context 'particle_type' is empty (no particles)")

    steps = sequences.get("position")
    if not steps:
        raise TFRecordError(f"{where}: feature list 'position' is missing or empty")
    if meta.sequence_length is not None and len(steps) != meta.sequence_length + 1:
        raise TFRecordError(
            f"{where}: feature list 'position' has {len(steps)} steps, expected sequence_length + 1 = "
            f"{meta.sequence_length + 1} from metadata.json"
        )
    frame_values = num_nodes * meta.dim
    positions = np.empty((len(steps), num_nodes, meta.dim), np.float32)
    for t, feat in enumerate(steps):
        frame = _single_bytes(feat, f"feature list 'position' step {t}", where, "<f4")
        if frame.shape[0] != frame_values:
            raise TFRecordError(
                f"{where}: feature list 'position' step {t} holds {frame.shape[0]} float32 values, expected "
                f"{num_nodes} particles x dim {meta.dim} = {frame_values} (particle_type and metadata.json)"
            )
        positions[t] = frame.reshape(num_nodes, meta.dim)

    step_context = None
    if meta.has_context:
        ctx_steps = sequences.get("step_context")
        if not ctx_steps or len(ctx_steps) != len(steps):
            raise TFRecordError(
                f"{where}: feature list 'step_context' has {len(ctx_steps or [])} steps, expected {len(steps)} "
                "(metadata.json has context_mean)"
            )
        rows = [_single_bytes(f, f"feature list 'step_context' step {t}", where, "<f4") for t, f in enumerate(ctx_steps)]
        if len({r.shape[0] for r in rows}) != 1:
            raise TFRecordError(f"{where}: feature list 'step_context' steps differ in length")
        step_context = np.stack(rows)
    return Record(key=key, particle_type=particle_type, positions=positions, step_context=step_context)


def _single_bytes(feat: Feature | None, name: str, where: str, dtype: str) -> np.ndarray:
    if feat is None:
        raise TFRecordError(f"{where}: {name} is missing")
    if feat.kind != "bytes" or len(feat.values) != 1:
        raise TFRecordError(f"{where}: {name} must be one bytes value, got {feat.kind} x {len(feat.values)}")
    raw = feat.values[0]
    size = np.dtype(dtype).itemsize
    if len(raw) % size:
        raise TFRecordError(f"{where}: {name} has {len(raw)} bytes, not a multiple of {size} ({np.dtype(dtype)})")
    return np.frombuffer(raw, dtype).astype(dtype[1:])  # native byte order


def read_split(path: str | os.PathLike[str], meta: Metadata) -> Iterator[Record]:
    """Decode the records of one tfrecord file, one at a time."""
    for index, data in enumerate(read_records(path)):
        yield decode_record(data, meta, f"{path}: record {index}")


# -- conversion --------------------------------------------------------------------------------


def convert_water3d(
    src: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    rows_per_chunk: int | None = None,
    chunks_per_shard: int = 64,
    compression: str = "zstd",
    progress: bool = False,
) -> dict[str, Path]:
    """Convert ``src/{train,valid,test}.tfrecord`` + ``metadata.json`` into ``out_dir/<split>.zarr``.

    Node features: the particle type. Metadata goes into the store attributes (dt, bounds,
    default_connectivity_radius as ``default_radius``, dim; everything, including the velocity and
    acceleration statistics, under ``extra['metadata']``); record keys under ``extra['keys']`` and,
    when present, each trajectory's step context under ``extra['step_context']``. All splits are
    written or none (a bad record anywhere leaves no store behind).
    """
    src = Path(src)
    meta = Metadata.load(src / "metadata.json")
    files = {split: src / f"{split}.tfrecord" for split in SPLITS}
    for path in files.values():
        if not path.is_file():
            raise StoreError(f"{path}: tfrecord file not found")
    attrs = StoreAttrs(
        kind="water3d",
        dim=meta.dim,
        dt=meta.dt,
        default_radius=meta.raw.get("default_connectivity_radius"),
        bounds=meta.raw.get("bounds"),
        feature_names=["particle_type"],
        provenance=default_provenance(f"Learning to Simulate tfrecords in {src.resolve()}"),
        extra={"metadata": meta.raw},
    )
    options = {"rows_per_chunk": rows_per_chunk, "chunks_per_shard": chunks_per_shard, "compression": compression}
    with staged_dataset(out_dir, SPLITS, overwrite) as staging:
        for split, path in files.items():
            keys: list[int | None] = []
            contexts: list[list[list[float]]] = []
            with StoreWriter(staging[split], attrs, **options) as writer:
                bar = tqdm(read_split(path, meta), desc=split, unit="traj", disable=not progress)
                for index, record in enumerate(bar):
                    try:
                        writer.add(Trajectory(positions=record.positions, node_features=record.particle_type[:, None]))
                    except StoreError as err:  # name the source record, not the staging store
                        raise StoreError(f"{path}: record {index}: {str(err).split(': ', 1)[-1]}") from None
                    keys.append(record.key)
                    if record.step_context is not None:
                        contexts.append(record.step_context.tolist())
                bar.close()
                if not keys:
                    raise StoreError(f"{path}: no records (an empty split)")
                extra = {**attrs.extra, "keys": keys, **({"step_context": contexts} if meta.has_context else {})}
                writer.attrs = dataclasses.replace(attrs, extra=extra)
    return {split: Path(out_dir) / f"{split}.zarr" for split in SPLITS}
