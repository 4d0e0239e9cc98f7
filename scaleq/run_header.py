"""The block a run prints before its first epoch: what it trains, on what, where, and how.

A run that says nothing about its data until it ends is a run whose surprises are found hours
later (a store made earlier with other sizes, a resume that started afresh, the wrong device).
So every run states, in one short block: the model and its parameter count, each split's
trajectories and samples and where they came from (generated now, or an existing store), the
device, engine and ranks, the output directory and the resume point if any.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from torch import nn

from scaleq.config import Config


def parameter_count(model: nn.Module) -> int:
    """Trainable parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def run_header(
    config: Config,
    model: nn.Module,
    sizes: Mapping[str, tuple[int, int]],
    origin: str,
    *,
    device: str,
    world_size: int,
    run_dir: Path,
    resume_point: str | None,
) -> str:
    """The header's lines. ``sizes``: {split: (trajectories, samples)}; ``origin``: 'generated
    now' or 'existing store'; ``resume_point``: e.g. 'epoch 3 (checkpoints/last.pt)', None for a
    fresh start."""
    options = ", ".join(f"{k}={v}" for k, v in config.model.options.items())
    split_text = ", ".join(f"{split} {_count(traj, 'trajectory', 'trajectories')} / {_count(samples, 'sample', 'samples')}"
                           for split, (traj, samples) in sizes.items())
    engine = config.engine.kind
    if config.engine.graph_parallel > 1:
        engine += f", graph_parallel {config.engine.graph_parallel}"
    lines = [
        f"model    {config.model.name} ({options or 'defaults'}): {parameter_count(model):,} parameters",
        f"data     {config.data.path} ({origin}): {split_text}",
        f"device   {device}, engine {engine}, {world_size} rank{'s' if world_size != 1 else ''}, "
        f"batch {config.data.batch_size} per rank, {config.train.epochs} epochs",
        f"output   {run_dir}",
        f"resume   {resume_point}" if resume_point is not None else "resume   no (a new run)",
    ]
    return "\n".join(lines)


def _count(n: int, one: str, many: str) -> str:
    return f"{n:,} {one if n == 1 else many}"
