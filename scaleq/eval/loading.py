"""A finished run, loaded the way it was trained: its config.yaml, its datasets, the model that
config builds (scaleq.models.build_model) and the weights of one of its checkpoints (torch or
DeepSpeed format, scaleq.train.checkpoint.load_weights). Every evaluation tool starts here.

    run = load_run("runs/eghn_protein")            # checkpoints/best.pt
    run.model(batch)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from scaleq.config import Config, load_config
from scaleq.data.dataset import TrajectoryDataset
from scaleq.data.splits import open_datasets
from scaleq.models import build_model, check_buildable
from scaleq.run_directory import BEST, RunDirectory
from scaleq.train.checkpoint import CheckpointError, load_weights


@dataclass
class LoadedRun:
    run_dir: Path
    config: Config
    model: nn.Module  # in eval mode, on the device asked for
    datasets: dict[str, TrajectoryDataset]  # train, valid, test, as the run opened them
    checkpoint: Path


def load_run(run_dir: str | os.PathLike[str], *, checkpoint: str = BEST,
             device: str | torch.device = "cpu") -> LoadedRun:
    """Config, datasets and trained model of ``run_dir`` (``checkpoints/<checkpoint>``)."""
    run = Path(run_dir)
    paths = RunDirectory(run)
    config_path = paths.config
    if not config_path.is_file():
        raise CheckpointError(f"{config_path}: not found ({run} is not a run directory, or the run never started)")
    config = check_buildable(load_config(config_path))
    state = load_weights(run, checkpoint)
    datasets = open_datasets(config)
    model = build_model(config, datasets["train"])
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        detail = str(err).strip().splitlines()
        raise CheckpointError(f"{paths.checkpoint(checkpoint)}: does not fit the model that {config_path} "
                              f"builds ({detail[1].strip() if len(detail) > 1 else detail[0]})") from None
    return LoadedRun(run, config, model.to(device).eval(), datasets, paths.checkpoint(checkpoint))
