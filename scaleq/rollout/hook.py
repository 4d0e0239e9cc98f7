"""``train.rollout_every``: a short rollout of one validation trajectory at the end of an epoch.

:func:`scaleq.run.run` hands the loop a :class:`RolloutEveryEpochs` as an ``on_epoch_end``
callback; the loop calls it with what changes per epoch (model, step, TensorBoard writer) and this
module never imports the loop."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from scaleq.data.dataset import TrajectoryDataset
from scaleq.graph.builder import GraphBuilder
from scaleq.rollout.metrics import SUMMARY_STEPS, horizon_metrics, plot_metrics, write_metrics_csv
from scaleq.rollout.rollout import linear_baseline, max_steps, reference, rollout
from scaleq.run_directory import RunDirectory
from scaleq.sample_options import first_input_frame


class EpochEndLike(Protocol):
    """The fields of the loop's ``EpochEnd`` this hook reads (``scaleq.train.trainer.EpochEnd``)."""

    epoch: int
    step: int
    model: nn.Module
    engine: Any  # scaleq.distributed.Engine: device, autocast, is_main
    tensorboard: Any | None


@dataclass
class RolloutEveryEpochs:
    """Every ``every`` epochs, :func:`rollout_during_training` on ``dataset`` (the validation split)."""

    every: int
    dataset: TrajectoryDataset
    graph: GraphBuilder
    run_dir: Path
    model_name: str
    steps: int = 20

    def __call__(self, end: EpochEndLike) -> None:
        if end.epoch % self.every == 0:
            engine = end.engine
            rollout_during_training(
                end.model, self.dataset, self.graph, RunDirectory(self.run_dir).rollouts, epoch=end.epoch, step=end.step,
                device=engine.device, autocast=engine.autocast, is_main=engine.is_main,
                model_name=self.model_name, tensorboard=end.tensorboard, steps=self.steps,
            )


def rollout_during_training(
    model: nn.Module,
    dataset: TrajectoryDataset,
    graph: GraphBuilder,
    folder: Path,
    *,
    epoch: int,
    step: int,
    device: torch.device,
    autocast: Any,
    is_main: bool,
    model_name: str,
    tensorboard: Any | None = None,
    steps: int = 20,
) -> None:
    """Roll ``model`` out on trajectory 0 of ``dataset`` from its earliest start frame (up to
    ``steps`` steps), and on the main rank write ``<folder>/epoch_<E>.csv`` and a small
    ``<folder>/epoch_<E>.png`` (MSE over the horizon, model against the Linear baseline) and
    TensorBoard scalars (rollout/mse_step_k) and the figure, at optimizer step ``step``, the one the
    other curves use. Every rank runs the model (a sharded engine needs all of them); nothing is trained."""
    start = first_input_frame(dataset.spec.velocity)
    horizon = min(steps, max_steps(dataset, [0], start))
    if horizon < 1:
        return
    ref = reference(dataset, [0], start, horizon)
    model_run = rollout(model, ref, graph, device=device, autocast=autocast)
    baseline, baseline_name = linear_baseline()  # Linear's t is fitted only when the run ends
    base_run = rollout(baseline, ref, graph, device=device)
    if not is_main:
        return
    metrics = horizon_metrics(ref, model_run, base_run)
    write_metrics_csv(metrics, folder / f"epoch_{epoch:04d}.csv")
    png = plot_metrics(metrics, folder / f"epoch_{epoch:04d}.png", name=model_name,
                       baseline_name=baseline_name, small=True)
    if tensorboard is not None:
        for row in metrics.rows[1:]:
            if row["step"] in SUMMARY_STEPS or row["step"] == horizon:
                tensorboard.add_scalar(f"rollout/mse_step_{row['step']}", row["mse"], step)
        import matplotlib.image

        image = matplotlib.image.imread(png)[..., :3]
        tensorboard.add_image("rollout/valid_0", image, step, dataformats="HWC")
