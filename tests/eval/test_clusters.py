import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest
import torch

from scaleq.config import config_from_dict
from scaleq.eval.clusters import plot_clusters
from scaleq.run import run
from scaleq.train.metrics import read_metrics
from tests.support.stores import tiny_nbody_dataset

ROOT = Path(__file__).resolve().parents[2]


def test_plot_clusters_writes_a_png(tmp_path):
    g = torch.Generator().manual_seed(0)
    pos = torch.cumsum(torch.randn(40, 3, generator=g), 0)
    s = torch.softmax(torch.randn(40, 4, generator=g) * 3, -1)
    bonds = torch.stack([torch.arange(39), torch.arange(1, 40)])
    path = plot_clusters(pos, s, tmp_path / "sub" / "c.png", bonds=bonds)
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 100 and image.shape[1] > 100
    assert image[..., :3].std() > 0.01  # not blank
    plot_clusters(pos[:, :2], s, tmp_path / "flat.png")
    with pytest.raises(ValueError, match="assignments must be"):
        plot_clusters(pos, s[:10], tmp_path / "bad.png")


@pytest.mark.slow
def test_tiny_eghn_run_trains_and_its_clusters_can_be_plotted(tmp_path):
    data = tiny_nbody_dataset(tmp_path / "nbody", train=48, valid=16, test=16)
    config = config_from_dict({
        "name": "eghn_tiny",
        "out_dir": str(tmp_path / "runs"),
        "data": {"path": str(data), "input_frame": 30, "delta": 10, "velocity": "store", "batch_size": 16},
        "graph": {"kind": "complete", "local": "knn", "local_k": 2},
        "model": {"name": "eghn", "hidden": 16, "clusters": 2, "interaction_layers": 2, "pooling_layers": 1,
                  "decoder_layers": 1},
        "loss": {"connectivity_weight": 0.5},
        "train": {"epochs": 12, "lr": 3e-3, "eval_every": 3, "progress": False},
    })
    summary = run(config)
    rows = read_metrics(Path(summary.run_dir) / "metrics.csv")
    losses = [float(r["train_loss"]) for r in rows]
    validation = [float(r["val_mse"]) for r in rows if r["val_mse"]]
    assert losses[-1] < losses[0]
    assert validation[-1] < 0.5 * validation[0]  # it learns (12 epochs are too few to beat Linear)
    out = tmp_path / "clusters.png"
    result = subprocess.run([sys.executable, "launch/plot_clusters.py", "--run", summary.run_dir, "--out", str(out)],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert matplotlib.image.imread(out).shape[0] > 100
    missing = subprocess.run([sys.executable, "launch/plot_clusters.py", "--run", str(tmp_path / "nowhere")],
                             cwd=ROOT, capture_output=True, text=True)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
