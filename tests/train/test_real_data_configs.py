"""The Water-3D and protein configs train end to end on converted data (cut to a few samples)."""

import math
from pathlib import Path

import pytest
from MDAnalysisTests.datafiles import DCD, PSF

from scaleq.config import ConfigError, load_config
from scaleq.data.splits import open_datasets
from scaleq.run import run
from scaleq.sources.md import convert_md
from scaleq.sources.water3d import convert_water3d
from scaleq.sources.water3d_writer import random_raw_trajectories, water3d_metadata, write_water3d_source

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SHORT = ["train.epochs=1", "train.eval_every=1", "train.progress=false", "data.num_workers=0", "model.hidden=8",
         "model.layers=2", "data.max_train_samples=4", "data.max_eval_samples=2"]


@pytest.mark.slow
def test_water3d_config_on_converted_tfrecords(tmp_path):
    trajs = random_raw_trajectories(4, 25, [300, 250, 280, 260], seed=1)
    write_water3d_source(tmp_path / "src", {"train": trajs[:2], "valid": trajs[2:3], "test": trajs[3:]},
                         water3d_metadata(steps=25))
    convert_water3d(tmp_path / "src", tmp_path / "water3d")
    config = load_config(CONFIGS / "egnn_water3d.yaml",
                         [f"data.path={tmp_path / 'water3d'}", f"out_dir={tmp_path / 'runs'}", "data.batch_size=2", *SHORT])
    assert (config.data.delta, config.data.starts_per_trajectory, config.graph.radius) == (20, 15, 0.035)
    datasets = open_datasets(config)
    assert len(datasets["train"]) == 4 and datasets["train"].num_node_features == 2  # [|v|, type / max type]
    assert datasets["train"].index[:, 1].max() <= 25 - 20  # start frames whose target t + 20 exists
    summary = run(config)
    assert math.isfinite(summary.test_mse) and summary.test_mse > 0


@pytest.mark.slow
def test_protein_config_on_converted_adk(tmp_path):
    convert_md(PSF, DCD, tmp_path / "adk")
    config = load_config(CONFIGS / "egnn_protein.yaml",
                         [f"data.path={tmp_path / 'adk'}", f"out_dir={tmp_path / 'runs'}", "data.batch_size=1", *SHORT,
                          "data.max_train_samples=2", "data.max_eval_samples=1"])
    datasets = open_datasets(config)
    assert [len(datasets[s].index) for s in ("train", "valid", "test")] == [2, 1, 1]
    assert datasets["train"].num_node_features == 2  # [|v|, charge / max charge]
    summary = run(config)
    assert math.isfinite(summary.test_mse) and summary.test_mse > 0
    assert "node_features:\n  - charge" in (Path(summary.run_dir) / "config.yaml").read_text()


def test_node_features_must_be_distinct(tmp_path):
    with pytest.raises(ConfigError, match="data.node_features must be a non-empty list of distinct names"):
        load_config(CONFIGS / "egnn_protein.yaml", ["data.node_features=[charge, charge]"])
