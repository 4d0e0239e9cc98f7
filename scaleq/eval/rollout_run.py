"""A finished run's rollout, end to end: load it, roll the model and the Linear baseline out on
some trajectories of a split, and write rollout.csv, rollout.png (metrics over the horizon),
rollout_frames.png (a grid of frames) and an animation of one trajectory."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from scaleq.data.dataset import TrajectoryDataset
from scaleq.eval.loading import load_run
from scaleq.graph.builder import GraphBuilder
from scaleq.rollout.animation import animate, default_format, frame_grid
from scaleq.rollout.metrics import (
    HorizonMetrics,
    horizon_metrics,
    plot_metrics,
    summary_line,
    write_metrics_csv,
)
from scaleq.rollout.rollout import (
    Reference,
    Rollout,
    linear_baseline,
    max_steps,
    reference,
    rollout,
)
from scaleq.run_directory import BEST, RunDirectory
from scaleq.sample_options import first_input_frame

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
    trajectories: Sequence[int] = (0, 1, 2),
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
    from ``start_frame`` (default: the earliest the run's velocity allows) for ``steps`` steps of
    the run's delta (default: as many as fit, at most 20), and write the outputs to ``out``
    (default ``<run_dir>/rollout_<split>``). ``animation``: 'auto' (MP4 when available, else GIF),
    'mp4', 'gif' or 'none'; it shows the first of ``trajectories``."""
    loaded = load_run(run_dir, checkpoint=checkpoint, device=device)
    config = loaded.config
    if split not in loaded.datasets:
        raise ValueError(f"split must be one of {sorted(loaded.datasets)}, got {split!r}")
    dataset = loaded.datasets[split]
    start = first_input_frame(dataset.spec.velocity) if start_frame is None else start_frame
    if steps is None:
        steps = max(min(DEFAULT_STEPS, max_steps(dataset, trajectories, start)), 1)  # none fit: reference() says why
    ref = reference(dataset, list(trajectories), start, steps)
    graph = GraphBuilder.from_config(config.graph)
    model_run = rollout(loaded.model, ref, graph, device=device)
    baseline, baseline_name = linear_baseline(fitted_linear_time(loaded.run_dir))
    base_run = rollout(baseline, ref, graph, device=device)
    metrics = horizon_metrics(ref, model_run, base_run)

    folder = Path(out) if out is not None else RunDirectory(loaded.run_dir).rollout(split)
    name = config.model.name
    csv = write_metrics_csv(metrics, folder / "rollout.csv")
    plot = plot_metrics(metrics, folder / "rollout.png", name=name, baseline_name=baseline_name)
    summary = (f"{config.name} ({name}), {split} trajectories {list(trajectories)} from frame {start}, "
               f"{steps} steps of {ref.delta} frames: " + summary_line(metrics, name=name, baseline_name=baseline_name))
    grid = movie = None
    pred, true, colours, cmap = first_trajectory(ref, model_run, dataset)
    title = f"{config.name}: {split} trajectory {ref.trajectories[0]}"
    grid = frame_grid(pred, true, folder / "rollout_frames.png", grid_steps(steps), colours=colours, cmap=cmap,
                      max_particles=max_particles, title=title, model_name=name)
    if animation != "none":
        kind = default_format() if animation == "auto" else animation
        frames = [f"step {k} (frame {ref.start_frame + k * ref.delta})" for k in range(steps + 1)]
        movie = animate(pred, true, folder / f"rollout.{kind}", colours=colours, cmap=cmap, fps=fps,
                        max_particles=max_particles, labels=frames, title=title, model_name=name)
    return RolloutOutputs(metrics, summary, csv, plot, grid, movie)


def first_trajectory(ref: Reference, run: Rollout, dataset: TrajectoryDataset) -> tuple[torch.Tensor, torch.Tensor,
                                                                             torch.Tensor, str]:
    """Predicted and true frames of the first trajectory, and what colours its particles:
    the model's clusters when it has them, else the store's charge, type or element."""
    nodes = ref.batch == 0
    pred, true = run.pos[:, nodes], ref.pos[:, nodes]
    if run.labels is not None:
        return pred, true, run.labels[:, nodes].double(), "tab20"
    store = dataset.store
    names = list(store.attrs.feature_names)
    chosen = next((n for n in COLOUR_FEATURES if n in names), names[0] if names else None)
    if chosen is None:
        return pred, true, torch.zeros(int(nodes.sum())), "coolwarm"
    values = torch.from_numpy(store.node_features(ref.trajectories[0])[:, names.index(chosen)].copy())
    return pred, true, values.double(), "coolwarm" if chosen == "charge" else "tab10"


def grid_steps(steps: int) -> list[int]:
    """Up to five steps to show: 0, the summary steps that exist, and the last."""
    chosen = [0] + [k for k in (1, 5, 10, 20) if k < steps] + [steps]
    chosen = sorted(set(chosen))
    if len(chosen) > 5:
        chosen = chosen[:4] + [steps]
    return chosen


def fitted_linear_time(run_dir: Path) -> float | None:
    """Linear's t fitted on the run's training split (``summary.json``), None for an unfinished run."""
    summary = RunDirectory(run_dir).summary
    if not summary.is_file():
        return None
    return json.loads(summary.read_text()).get("linear_time")
