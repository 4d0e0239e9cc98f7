"""Every path of a run directory, named here once.

A run writes under ``<out_dir>/<name>/``::

    config.yaml          the resolved config: what reruns, resumes and evaluations load
    checkpoints/         last.pt (every epoch), best.pt (best validation); DeepSpeed adds <name>.ds/
    metrics.csv          one row per logged step or epoch
    loss_curves.png      the training and validation MSE per epoch
    summary.json         the test MSEs and the baselines', written when the run ends
    tensorboard/         the same scalars as metrics.csv, plus rollout figures
    rollouts/            the short validation rollouts of ``train.rollout_every``
    rollout_<split>/     what ``launch/rollout.py`` writes for a finished run
    clusters_<split>_<index>.png   what ``launch/plot_clusters.py`` draws for EGHN

Every module asks a :class:`RunDirectory` for these paths instead of spelling the names
(``tests/test_run_directory.py`` fails on a literal name anywhere else). This module imports
nothing from scaleq, so the loop, the launchers, rollouts and evaluation tools may all use it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CONFIG = "config.yaml"
CHECKPOINTS = "checkpoints"
LAST, BEST = "last.pt", "best.pt"  # the newest state, and the best-validation one
METRICS = "metrics.csv"
LOSS_CURVES = "loss_curves.png"
SUMMARY = "summary.json"
TENSORBOARD = "tensorboard"
ROLLOUTS = "rollouts"
# every name above: what no other module may spell out
NAMES = (CONFIG, CHECKPOINTS, LAST, BEST, METRICS, LOSS_CURVES, SUMMARY, TENSORBOARD, ROLLOUTS)
CHECKPOINT_NAMES = {"last": LAST, "best": BEST}  # what --resume-from and the launchers call them


@dataclass(frozen=True)
class RunDirectory:
    """The paths of the run in ``path`` (nothing is created or read here)."""

    path: Path

    def __init__(self, path: str | os.PathLike[str]) -> None:
        object.__setattr__(self, "path", Path(path))

    @property
    def config(self) -> Path:
        return self.path / CONFIG

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    def checkpoint(self, name: str) -> Path:
        """``checkpoints/<file>`` for a file name (``last.pt``), or for 'last' / 'best'."""
        return self.checkpoints / CHECKPOINT_NAMES.get(name, name)

    @property
    def last(self) -> Path:
        return self.checkpoints / LAST

    @property
    def best(self) -> Path:
        return self.checkpoints / BEST

    @property
    def metrics(self) -> Path:
        return self.path / METRICS

    @property
    def loss_curves(self) -> Path:
        return self.path / LOSS_CURVES

    @property
    def summary(self) -> Path:
        return self.path / SUMMARY

    @property
    def tensorboard(self) -> Path:
        return self.path / TENSORBOARD

    @property
    def rollouts(self) -> Path:
        """The rollouts made during training, one folder per epoch inside."""
        return self.path / ROLLOUTS

    def rollout(self, split: str) -> Path:
        """The folder of the rollout of a finished run on ``split``."""
        return self.path / f"rollout_{split}"

    def clusters(self, split: str, index: int) -> Path:
        """The figure of EGHN's clusters on sample ``index`` of ``split``."""
        return self.path / f"clusters_{split}_{index}.png"

    def outputs(self) -> str:
        """What a run leaves here, for the line that ends a run."""
        return f"{CONFIG}, {METRICS}, {LOSS_CURVES}, {TENSORBOARD}/, {CHECKPOINTS}/, {SUMMARY}"
