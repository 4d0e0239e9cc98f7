"""A finished run, loaded the way it was trained: its config.yaml, its datasets, the model that
config builds (scaleq.models.build_model) and the weights of one of its checkpoints (torch or
DeepSpeed format, scaleq.train.checkpoint.load_weights). Every evaluation tool starts here, and
so does a notebook (docs/api.md):

    import scaleq
    run = scaleq.load_run("runs/default")          # checkpoints/best.pt
    pos = run.predict(run.datasets["test"][0])     # [N, D]: the graph is built inside, as in training
    run.metrics("test")                            # {"mse": ..., "linear_mse": ..., ...}
    result = run.rollout([0], steps=5)             # the model on its own predictions

A relative ``data.path`` in the saved config is read against the directory the run was started
in (found from ``out_dir``: ``<started>/<out_dir>/<name>``), so the run loads from anywhere.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch_geometric.data import Batch, Data

from scaleq.config import Config, load_config
from scaleq.data.dataset import ShardedSampler, TrajectoryDataset, make_loader
from scaleq.data.splits import open_datasets
from scaleq.graph.builder import GraphBuilder
from scaleq.models import build_model, check_buildable
from scaleq.models.baselines import ConstantVelocity, LinearDynamics
from scaleq.rollout.metrics import HorizonMetrics, horizon_metrics
from scaleq.rollout.rollout import Reference, Rollout, linear_baseline, max_steps, reference, rollout
from scaleq.run_directory import BEST, RunDirectory
from scaleq.sample_options import first_input_frame
from scaleq.train.checkpoint import CheckpointError, load_weights

DEFAULT_ROLLOUT_TRAJECTORIES = 3  # rollouts default to the first three trajectories a split has (or fewer)
DEFAULT_ROLLOUT_STEPS = 20


@dataclass
class RunRollout:
    """A rollout of a loaded run against the truth and the Linear baseline.

    Shapes: ``model.pos``, ``baseline.pos``, ``reference.pos``: [K+1, N, D] (K steps of the run's
    delta; the trajectories' nodes one after another, ``reference.batch`` [N] says whose)."""

    reference: Reference
    model: Rollout
    baseline: Rollout
    baseline_name: str
    metrics: HorizonMetrics  # per step: position MSE (+ energy drift for N-body, RMSD for MD)


@dataclass
class LoadedRun:
    run_dir: Path
    config: Config  # data.path resolved (see the module's docstring)
    model: nn.Module  # in eval mode, on ``device``
    datasets: dict[str, TrajectoryDataset]  # train, valid, test, as the run opened them
    checkpoint: Path
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))

    @property
    def graph(self) -> GraphBuilder:
        """How the run built each batch's graph (its ``graph`` section)."""
        return GraphBuilder.from_config(self.config.graph)

    @torch.no_grad()
    def predict(self, samples: Data | Sequence[Data] | Batch) -> Tensor:
        """Predicted positions at the run's horizon for one sample, a list of samples or a batch
        (e.g. ``run.datasets["test"][0]``); the graph is built here as in training.

        Shapes: -> [N, D] (the samples' nodes one after another), on the CPU
        """
        batch = self._batch(samples)
        return self.model(batch)["pos"].cpu()

    @torch.no_grad()
    def metrics(self, split: str = "test", batch_size: int | None = None) -> dict[str, float]:
        """Position MSE (mean over nodes and axes) of the model, the Linear baseline (the run's
        fitted t, when summary.json has it) and constant velocity on every sample of ``split``."""
        dataset = self._split(split)
        sampler = ShardedSampler(len(dataset), shuffle=False, seed=0, rank=0, world_size=1, pad=False)
        size = batch_size or self.config.data.eval_batch_size or self.config.data.batch_size
        models: dict[str, nn.Module] = {"mse": self.model, "constant_velocity_mse": ConstantVelocity()}
        time = fitted_linear_time(self.run_dir)
        if time is not None:
            models["linear_mse"] = LinearDynamics(time=time)
        sums = dict.fromkeys(models, 0.0)
        count = 0
        for batch in make_loader(dataset, size, sampler, 0):
            batch = self._batch(batch)
            for key, model in models.items():
                sums[key] += float(((model.to(self.device)(batch)["pos"] - batch.target) ** 2).sum())
            count += batch.target.numel()
        return {key: value / count for key, value in sums.items()}

    @torch.no_grad()
    def rollout(self, trajectories: Sequence[int] | None = None, *, split: str = "test", steps: int | None = None,
                start_frame: int | None = None) -> RunRollout:
        """Roll the model out on its own predictions on ``trajectories`` of ``split`` (default: the
        first three the split has, or fewer) from ``start_frame`` (default: the earliest the run's
        velocity allows) for ``steps`` steps of the run's delta (default: what fits, at most 20)."""
        dataset = self._split(split)
        trajectories = default_trajectories(dataset) if trajectories is None else list(trajectories)
        start = first_input_frame(dataset.spec.velocity) if start_frame is None else start_frame
        if steps is None:
            steps = max(min(DEFAULT_ROLLOUT_STEPS, max_steps(dataset, trajectories, start)), 1)
        ref = reference(dataset, trajectories, start, steps)
        model_run = rollout(self.model, ref, self.graph, device=self.device)
        baseline, baseline_name = linear_baseline(fitted_linear_time(self.run_dir))
        base_run = rollout(baseline, ref, self.graph, device=self.device)
        return RunRollout(ref, model_run, base_run, baseline_name, horizon_metrics(ref, model_run, base_run))

    def _split(self, split: str) -> TrajectoryDataset:
        if split not in self.datasets:
            raise ValueError(f"split must be one of {sorted(self.datasets)}, got {split!r}")
        return self.datasets[split]

    def _batch(self, samples: Data | Sequence[Data] | Batch) -> Batch:
        if isinstance(samples, Batch):
            batch = samples
        elif isinstance(samples, Data):
            batch = Batch.from_data_list([samples])
        else:
            batch = Batch.from_data_list(list(samples))
        return self.graph(batch.to(self.device), training=False)


def default_trajectories(dataset: TrajectoryDataset) -> list[int]:
    """The first :data:`DEFAULT_ROLLOUT_TRAJECTORIES` trajectories of ``dataset``'s store, or all
    it has (a molecular-dynamics store holds one)."""
    return list(range(min(DEFAULT_ROLLOUT_TRAJECTORIES, dataset.store.num_trajectories)))


def fitted_linear_time(run_dir: Path) -> float | None:
    """Linear's t fitted on the run's training split (``summary.json``), None for an unfinished run."""
    summary = RunDirectory(run_dir).summary
    if not summary.is_file():
        return None
    return json.loads(summary.read_text()).get("linear_time")


def started_in(run_dir: Path, config: Config) -> Path:
    """The directory the run was started in: ``run_dir`` is ``<started>/<out_dir>/<name>`` (for
    a relative ``out_dir``; an absolute one says nothing, and the current directory is used)."""
    out_dir = Path(config.out_dir)
    if out_dir.is_absolute():
        return Path.cwd()
    return run_dir.resolve().parents[len(out_dir.parts)] if len(run_dir.resolve().parents) > len(out_dir.parts) \
        else Path.cwd()


def resolve_data_path(run_dir: Path, config: Config) -> Config:
    """``config`` with a relative ``data.path`` made absolute: against the current directory when
    the data is there, else against the directory the run was started in."""
    path = Path(config.data.path)
    if path.is_absolute() or path.exists():
        return dataclasses.replace(config, data=dataclasses.replace(config.data, path=str(path.resolve())))
    return dataclasses.replace(config, data=dataclasses.replace(config.data,
                                                                path=str(started_in(run_dir, config) / path)))


def load_run(run_dir: str | os.PathLike[str], *, checkpoint: str = BEST,
             device: str | torch.device = "cpu") -> LoadedRun:
    """Config, datasets and trained model of ``run_dir`` (``checkpoints/<checkpoint>``)."""
    run = Path(run_dir)
    paths = RunDirectory(run)
    config_path = paths.config
    if not config_path.is_file():
        raise CheckpointError(f"{config_path}: not found ({run} is not a run directory, or the run never started)")
    config = resolve_data_path(run, check_buildable(load_config(config_path)))
    state = load_weights(run, checkpoint)
    datasets = open_datasets(config)
    model = build_model(config, datasets["train"])
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        detail = str(err).strip().splitlines()
        raise CheckpointError(f"{paths.checkpoint(checkpoint)}: does not fit the model that {config_path} "
                              f"builds ({detail[1].strip() if len(detail) > 1 else detail[0]})") from None
    device = torch.device(device)
    return LoadedRun(run, config, model.to(device).eval(), datasets, paths.checkpoint(checkpoint), device)
