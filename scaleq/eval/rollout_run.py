"""A finished run's rollout, end to end: load it, roll the model and the Linear baseline out on
some trajectories of a split, and write rollout.csv, rollout.png (metrics over the horizon),
rollout_frames.png (a grid of frames) and an animation of one trajectory."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from scaleq.data.dataset import TrajectoryDataset
from scaleq.eval.loading import load_run
from scaleq.rollout.animation import animate, default_format, frame_grid
from scaleq.rollout.metrics import (
    HorizonMetrics,
    plot_metrics,
    summary_line,
    write_metrics_csv,
)
from scaleq.rollout.rollout import (
    Reference,
    Rollout,
)
from scaleq.run_directory import BEST, RunDirectory

DEFAULT_STEPS = 20
COLOUR_FEATURES = ("charge", "type", "element")  # the first of these a store has colours the particles


@dataclass
class RolloutOutputs:
    metrics: HorizonMetrics
    summary: str
    csv: Path
    plot: Path
    grid: Path | None
    animation: Path | None


def rollout_from_run(
    run_dir: str | os.PathLike[str],
    *,
    split: str = "test",
    trajectories: Sequence[int] | None = None,
    steps: int | None = None,
    start_frame: int | None = None,
    out: str | os.PathLike[str] | None = None,
    checkpoint: str = BEST,
    device: str = "cpu",
    animation: str = "auto",
    max_particles: int | None = None,
    fps: int = 4,
) -> RolloutOutputs:
    """Roll out ``run_dir``'s model (``checkpoints/<checkpoint>``) on ``trajectories`` of ``split``
    (default: the first three the split has, or fewer: an MD store holds one) from ``start_frame`` (default: the earliest the run's velocity allows) for ``steps`` steps of
    the run's delta (default: as many as fit, at most 20), and write the outputs to ``out``
    (default ``<run_dir>/rollout_<split>``). ``animation``: 'auto' (MP4 when available, else GIF),
    'mp4', 'gif' or 'none'; it shows the first of ``trajectories``."""
    loaded = load_run(run_dir, checkpoint=checkpoint, device=device)
    config = loaded.config
    result = loaded.rollout(trajectories, split=split, steps=steps, start_frame=start_frame)
    ref, model_run, metrics, baseline_name = result.reference, result.model, result.metrics, result.baseline_name
    dataset, steps, start = loaded.datasets[split], ref.steps, ref.start_frame

    folder = Path(out) if out is not None else RunDirectory(loaded.run_dir).rollout(split)
    name = config.model.name
    csv = write_metrics_csv(metrics, folder / "rollout.csv")
    plot = plot_metrics(metrics, folder / "rollout.png", name=name, baseline_name=baseline_name)
    summary = (f"{config.name} ({name}), {split} trajectories {ref.trajectories} from frame {start}, "
               f"{steps} steps of {ref.delta} frames: " + summary_line(metrics, name=name, baseline_name=baseline_name))
    grid = movie = None
    pred, true, colours, cmap, colour_name = first_trajectory(ref, model_run, dataset)
    title = f"{config.name}: {split} trajectory {ref.trajectories[0]}"
    grid = frame_grid(pred, true, folder / "rollout_frames.png", grid_steps(steps), colours=colours, cmap=cmap,
                      max_particles=max_particles, title=title, model_name=name, colour_name=colour_name)
    if animation != "none":
        kind = default_format() if animation == "auto" else animation
        frames = [f"step {k} (frame {ref.start_frame + k * ref.delta})" for k in range(steps + 1)]
        movie = animate(pred, true, folder / f"rollout.{kind}", colours=colours, cmap=cmap, fps=fps,
                        max_particles=max_particles, labels=frames, title=title, model_name=name)
    return RolloutOutputs(metrics, summary, csv, plot, grid, movie)


def first_trajectory(ref: Reference, run: Rollout, dataset: TrajectoryDataset) -> tuple[torch.Tensor, torch.Tensor,
                                                                             torch.Tensor, str, str | None]:
    """Predicted and true frames of the first trajectory, what colours its particles (the
    model's clusters when it has them, else the store's charge, type or element), its colour map
    and the colours' name (None: no colour)."""
    nodes = ref.batch == 0
    pred, true = run.pos[:, nodes], ref.pos[:, nodes]
    if run.labels is not None:
        return pred, true, run.labels[:, nodes].double(), "tab20", "cluster"
    store = dataset.store
    names = list(store.attrs.feature_names)
    chosen = next((n for n in COLOUR_FEATURES if n in names), names[0] if names else None)
    if chosen is None:
        return pred, true, torch.zeros(int(nodes.sum())), "coolwarm", None
    values = torch.from_numpy(store.node_features(ref.trajectories[0])[:, names.index(chosen)].copy())
    return pred, true, values.double(), "coolwarm" if chosen == "charge" else "tab10", chosen


def grid_steps(steps: int) -> list[int]:
    """Up to five steps to show: 0, the summary steps that exist, and the last."""
    chosen = [0] + [k for k in (1, 5, 10, 20) if k < steps] + [steps]
    chosen = sorted(set(chosen))
    if len(chosen) > 5:
        chosen = chosen[:4] + [steps]
    return chosen

