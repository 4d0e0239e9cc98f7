"""EGHN on the real adenylate kinase (AdK) trajectory that MDAnalysisTests ships (adk.psf +
adk_dims.dcd: 98 frames, 855 backbone atoms), converted with the project's MD converter."""

from pathlib import Path

import pytest
from MDAnalysisTests import datafiles

from scaleq.config import config_from_dict
from scaleq.eval.clusters import cluster_plot_from_run
from scaleq.run import run
from scaleq.sources import md
from scaleq.train.metrics import read_metrics


@pytest.mark.slow
def test_short_eghn_training_on_adk_beats_linear(tmp_path):
    data = tmp_path / "adk"
    md.convert_md(datafiles.PSF, datafiles.DCD, data, selection="backbone")
    # The published task (backbone, t -> t + 15, bonds as E-Pool's local graph, connectivity
    # weight 2), cut to two short epochs on 2 cores: contact radius 6 A instead of 10 A (a third
    # of the edges), a narrow model and 16 training samples. Three epochs are too few for the
    # published initialisation (test MSE 59 against Linear's 0.29): the model starts at the input
    # moved with its clusters, with row-normalised cluster edges (scaleq's two named options).
    config = config_from_dict({
        "name": "eghn_adk",
        "out_dir": str(tmp_path / "runs"),
        "data": {"path": str(data), "delta": 15, "velocity": "backward", "batch_size": 8, "max_train_samples": 16},
        "graph": {"kind": "radius", "radius": 6.0, "max_num_neighbors": 128, "local": "bonds"},
        "model": {"name": "eghn", "hidden": 16, "clusters": 5, "interaction_layers": 2, "pooling_layers": 1,
                  "decoder_layers": 1, "start_at_input": True, "cluster_edge_attr": "row_normalised"},
        "loss": {"connectivity_weight": 2.0},
        "train": {"epochs": 3, "lr": 1e-3, "eval_every": 1, "progress": False},
    })
    summary = run(config)
    losses = [float(r["train_loss"]) for r in read_metrics(Path(summary.run_dir) / "metrics.csv") if r["train_loss"]]
    assert losses[-1] < losses[0]
    assert summary.test_mse < summary.linear_test_mse
    png = cluster_plot_from_run(summary.run_dir, tmp_path / "adk_clusters.png")
    assert png.stat().st_size > 10_000
