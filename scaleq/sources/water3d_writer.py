"""Small "Learning to Simulate" datasets in exactly the published format: the tests' sources, the
store `make gpu-check` converts with data_prep/water3d.py as a user converts the real download, and
the sample a user can try the Water-3D path on without the download
(``python data_prep/water3d.py --write-sample DIR``, :func:`write_sample_source`).

The records are encoded by the real ``protobuf`` library from message descriptors equal to
TensorFlow's ``feature.proto`` / ``example.proto`` (package ``tensorflow``), so the hand-written
parser in :mod:`scaleq.sources.water3d` is checked against an independent encoder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from scaleq.sources.tfrecord import write_records

_F = descriptor_pb2.FieldDescriptorProto


def _message_classes() -> dict[str, Any]:
    proto = descriptor_pb2.FileDescriptorProto(name="scaleq_tf_example.proto", package="tensorflow", syntax="proto3")

    def message(name: str, fields: list[tuple[str, int, int, int, str | None]], oneof: str | None = None
                ) -> descriptor_pb2.DescriptorProto:
        msg = proto.message_type.add(name=name)
        if oneof:
            msg.oneof_decl.add(name=oneof)
        for fname, number, ftype, label, type_name in fields:
            f = msg.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                f.type_name = type_name
            if oneof:
                f.oneof_index = 0
        return msg

    rep, opt = _F.LABEL_REPEATED, _F.LABEL_OPTIONAL
    message("BytesList", [("value", 1, _F.TYPE_BYTES, rep, None)])
    message("FloatList", [("value", 1, _F.TYPE_FLOAT, rep, None)])
    message("Int64List", [("value", 1, _F.TYPE_INT64, rep, None)])
    message("Feature", [("bytes_list", 1, _F.TYPE_MESSAGE, opt, ".tensorflow.BytesList"),
                        ("float_list", 2, _F.TYPE_MESSAGE, opt, ".tensorflow.FloatList"),
                        ("int64_list", 3, _F.TYPE_MESSAGE, opt, ".tensorflow.Int64List")], oneof="kind")
    for outer, value_type in (("Features", "Feature"), ("FeatureLists", "FeatureList")):
        if value_type == "FeatureList":
            message("FeatureList", [("feature", 1, _F.TYPE_MESSAGE, rep, ".tensorflow.Feature")])
        fname = "feature" if outer == "Features" else "feature_list"
        msg = message(outer, [(fname, 1, _F.TYPE_MESSAGE, rep, f".tensorflow.{outer}.{fname.title().replace('_', '')}Entry")])
        entry = msg.nested_type.add(name=f"{fname.title().replace('_', '')}Entry")
        entry.options.map_entry = True
        entry.field.add(name="key", number=1, type=_F.TYPE_STRING, label=opt)
        entry.field.add(name="value", number=2, type=_F.TYPE_MESSAGE, label=opt, type_name=f".tensorflow.{value_type}")
    message("SequenceExample", [("context", 1, _F.TYPE_MESSAGE, opt, ".tensorflow.Features"),
                                ("feature_lists", 2, _F.TYPE_MESSAGE, opt, ".tensorflow.FeatureLists")])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    names = ("Feature", "SequenceExample")
    return {n: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tensorflow.{n}")) for n in names}


_CLASSES: dict[str, Any] = {}


def tf_classes() -> dict[str, Any]:
    """protobuf classes ``Feature`` and ``SequenceExample`` (built once)."""
    if not _CLASSES:
        _CLASSES.update(_message_classes())
    return _CLASSES


@dataclass
class RawTrajectory:
    """One record's content. Shapes: particle_type [N] int64, positions [T + 1, N, D] float32,
    step_context [T + 1, C] float32 or None; extra_context / extra_sequences add features (for
    bad-input tests)."""

    key: int
    particle_type: np.ndarray
    positions: np.ndarray
    step_context: np.ndarray | None = None
    extra_context: dict[str, bytes] = field(default_factory=dict)
    extra_sequences: dict[str, list[bytes]] = field(default_factory=dict)


def encode_sequence_example(traj: RawTrajectory) -> bytes:
    """Serialize as the Learning to Simulate datasets do (``tf.train.SequenceExample``)."""
    example = tf_classes()["SequenceExample"]()
    context = example.context.feature
    context["key"].int64_list.value.append(int(traj.key))
    context["particle_type"].bytes_list.value.append(np.asarray(traj.particle_type, "<i8").tobytes())
    for name, raw in traj.extra_context.items():
        context[name].bytes_list.value.append(raw)
    lists = example.feature_lists.feature_list
    for frame in np.asarray(traj.positions, "<f4"):
        lists["position"].feature.add().bytes_list.value.append(frame.tobytes())
    if traj.step_context is not None:
        for row in np.asarray(traj.step_context, "<f4"):
            lists["step_context"].feature.add().bytes_list.value.append(row.tobytes())
    for name, steps in traj.extra_sequences.items():
        for raw in steps:
            lists[name].feature.add().bytes_list.value.append(raw)
    return example.SerializeToString()


def random_raw_trajectories(count: int, steps: int, nodes: list[int] | int, dim: int = 3, seed: int = 0,
                            context: int = 0) -> list[RawTrajectory]:
    """Random trajectories of ``steps`` + 1 frames (values awkward for float rounding on purpose)."""
    rng = np.random.default_rng(seed)
    sizes = nodes if isinstance(nodes, list) else [nodes] * count
    out = []
    for k, n in enumerate(sizes[:count]):
        pos = (rng.random((1, n, dim)) + np.cumsum(rng.normal(scale=1e-3, size=(steps + 1, n, dim)), 0)).astype(np.float32)
        out.append(RawTrajectory(
            key=k,
            particle_type=rng.choice(np.array([0, 3, 5]), n).astype(np.int64),
            positions=pos,
            step_context=rng.normal(size=(steps + 1, context)).astype(np.float32) if context else None,
        ))
    return out


def water3d_metadata(dim: int = 3, steps: int = 10, context: int = 0) -> dict[str, Any]:
    """metadata.json as published (Water-3D's keys; values of a small test set)."""
    meta: dict[str, Any] = {
        "bounds": [[0.1, 0.9]] * dim,
        "sequence_length": steps,
        "default_connectivity_radius": 0.035,
        "dim": dim,
        "dt": 0.005,
        "vel_mean": [0.0] * dim,
        "vel_std": [0.001] * dim,
        "acc_mean": [0.0] * dim,
        "acc_std": [0.0001] * dim,
    }
    if context:
        meta["context_mean"] = [0.0] * context
        meta["context_std"] = [1.0] * context
    return meta


def write_water3d_source(root: Path, splits: dict[str, list[RawTrajectory]], metadata: dict[str, Any]) -> Path:
    """Write ``root/{split}.tfrecord`` and ``root/metadata.json``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "metadata.json").write_text(json.dumps(metadata))
    for split, trajs in splits.items():
        write_records(root / f"{split}.tfrecord", (encode_sequence_example(t) for t in trajs))
    return root


SAMPLE_SPLITS = {"train": 2, "valid": 1, "test": 1}  # trajectories per split of the sample source


def write_sample_source(root: Path, *, particles: int = 300, steps: int = 30, seed: int = 0) -> Path:
    """A small Water-3D-format source at ``root`` ({train,valid,test}.tfrecord, metadata.json):
    random-walk particles (not water: a format sample) of Water-3D's three particle types in its
    unit box, ``steps`` + 1 frames each, so data_prep/water3d.py and configs/water3d.yaml can be
    tried in a minute."""
    trajectories = random_raw_trajectories(sum(SAMPLE_SPLITS.values()), steps, particles, seed=seed)
    splits, first = {}, 0
    for split, count in SAMPLE_SPLITS.items():
        splits[split], first = trajectories[first:first + count], first + count
    return write_water3d_source(root, splits, water3d_metadata(steps=steps))
