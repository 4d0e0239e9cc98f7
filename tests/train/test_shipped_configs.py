"""Every shipped config trains on its own kind of data, cut only in data size and epochs: three
seeds each, every logged loss finite. N-body configs generate their (small) dataset as a user's
first run does; protein configs read MDAnalysisTests' AdK files converted; Water-3D configs a
small Water-3D-format source converted."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from MDAnalysisTests.datafiles import DCD, PSF

from scaleq.config import load_config
from scaleq.run import run
from scaleq.sources.md import convert_md
from scaleq.sources.water3d import convert_water3d
from scaleq.sources.water3d_writer import random_raw_trajectories, water3d_metadata, write_water3d_source
from scaleq.train.metrics import read_metrics

pytestmark = pytest.mark.slow

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))
SEEDS = (0, 1, 2)
SHORT = ["train.epochs=2", "train.eval_every=1", "train.progress=false", "data.max_train_samples=8",
         "data.max_eval_samples=4"]
SMALL_GENERATE = ["data.generate.train=8", "data.generate.train_drawn=null", "data.generate.valid=4",
                  "data.generate.test=4"]


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("shipped")
    convert_md(PSF, DCD, root / "adk")
    trajs = random_raw_trajectories(4, 25, [300, 250, 280, 260], seed=1)
    write_water3d_source(root / "src", {"train": trajs[:2], "valid": trajs[2:3], "test": trajs[3:]},
                         water3d_metadata(steps=25))
    convert_water3d(root / "src", root / "water3d")
    return root


@pytest.mark.parametrize("config_file", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_shipped_config_trains_three_seeds_with_finite_losses(config_file, sources, tmp_path):
    shipped = load_config(config_file)
    if shipped.data.generate is not None:  # generated here, small, as a first run would
        data = [f"data.path={sources / ('gen-' + Path(shipped.data.path).name)}", *SMALL_GENERATE]
    elif "water3d" in shipped.data.path:
        data = [f"data.path={sources / 'water3d'}", "data.batch_size=2"]
    else:
        # AdK's 3341 atoms (855 backbone) cost seconds per sample on a CPU: fewer samples
        data = [f"data.path={sources / 'adk'}", "data.batch_size=1", "data.max_train_samples=2",
                "data.max_eval_samples=1"]
    for seed in SEEDS:
        config = load_config(config_file, [*SHORT, *data, f"seed={seed}", f"out_dir={tmp_path / 'runs'}",
                                           f"name=s{seed}"])
        summary = run(config)
        rows = read_metrics(Path(summary.run_dir) / "metrics.csv")
        losses = [float(r[key]) for r in rows for key in ("train_loss", "val_mse") if r[key] != ""]
        assert len(rows) == 2 and all(math.isfinite(v) for v in losses), (config_file.stem, seed, rows)
        assert math.isfinite(summary.test_mse)
