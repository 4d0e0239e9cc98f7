"""Validation and test features are scaled by the training split's statistics."""

import numpy as np
import pytest
import torch

from scaleq.config import config_from_dict
from scaleq.data.dataset import SampleSpec, TrajectoryDataset
from scaleq.data.splits import open_datasets
from scaleq.store.format import StoreAttrs, StoreError, Trajectory
from scaleq.store.writer import write_store


def store_with_features(path, features):
    rng = np.random.default_rng(0)
    n = len(features)
    trajectory = Trajectory(positions=rng.normal(size=(6, n, 3)).astype(np.float32),
                            node_features=np.asarray(features, dtype=np.float32).reshape(n, -1))
    return write_store(path, StoreAttrs(kind="synthetic", dim=3, dt=0.1, feature_names=["charge"]), [trajectory])


def test_another_split_is_scaled_by_the_training_statistics(tmp_path):
    train = store_with_features(tmp_path / "train.zarr", [2.0, -1.0, 1.0])  # max |charge| 2
    valid = store_with_features(tmp_path / "valid.zarr", [4.0, 1.0, -1.0])  # max |charge| 4
    spec = SampleSpec(delta=2)
    own = TrajectoryDataset(valid, spec)
    shared = TrajectoryDataset(valid, spec, scale_from=train)
    np.testing.assert_allclose(own[0].h[:, 1].numpy(), [1.0, 0.25, -0.25])
    np.testing.assert_allclose(shared[0].h[:, 1].numpy(), [2.0, 0.5, -0.5])  # the same charge, the same feature
    np.testing.assert_allclose(TrajectoryDataset(train, spec)[0].h[:, 1].numpy(), [1.0, -0.5, 0.5])


def test_splits_of_different_widths_are_refused(tmp_path):
    train = store_with_features(tmp_path / "train.zarr", [[1.0, 2.0], [1.0, 1.0]])
    valid = store_with_features(tmp_path / "valid.zarr", [1.0, 2.0])
    with pytest.raises(StoreError, match="the splits do not come from one dataset"):
        TrajectoryDataset(valid, SampleSpec(delta=2), scale_from=train)


def test_a_run_scales_every_split_like_the_training_split(tmp_path):
    for split, features in (("train", [2.0, 1.0]), ("valid", [8.0, 1.0]), ("test", [0.5, 0.25])):
        store_with_features(tmp_path / f"{split}.zarr", features)
    config = config_from_dict({"data": {"path": str(tmp_path), "delta": 2}})
    datasets = open_datasets(config)
    for split in ("train", "valid", "test"):
        torch.testing.assert_close(datasets[split].feature_scale, torch.tensor([2.0]))
