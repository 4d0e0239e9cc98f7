"""One training run from a Config: data (generated if missing), model, engine, loop, summary.

It sits above the loop (``scaleq.train``) and hands it what the config asks for at the end of an
epoch (the rollout of ``train.rollout_every``, :mod:`scaleq.rollout.hook`), so the loop imports
neither evaluation nor rollouts."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from scaleq.config import Config, ConfigError, save_config
from scaleq.data.dataset import ShardedSampler, TrajectoryDataset, make_loader
from scaleq.data.splits import DataOrigin, data_as_used, open_datasets, prepare_data, split_sizes
from scaleq.distributed import Engine, engine_from_config
from scaleq.graph.builder import GraphBuilder
from scaleq.io import atomic_write_text
from scaleq.models import build_model, check_buildable
from scaleq.models.baselines import ConstantVelocity, LinearDynamics
from scaleq.rollout.hook import RolloutEveryEpochs
from scaleq.run_directory import CHECKPOINT_NAMES, RunDirectory
from scaleq.run_header import run_header
from scaleq.seeding import seed_everything
from scaleq.train.checkpoint import CheckpointError, checkpoint_problem, fingerprint, nothing_to_resume
from scaleq.train.loop_parts import build_loop_parts
from scaleq.train.run_dir import RunClaim, RunDirError, claim_run_dir
from scaleq.train.trainer import EpochEndCallback, FitResult, Trainer, evaluate


@dataclass
class RunSummary:
    run_dir: str
    model: str
    best_epoch: int  # 1-based, as the epoch lines and metrics.csv count (0: no validation ran)
    best_val_mse: float
    test_mse: float
    linear_test_mse: float  # the papers' Linear: x + v * horizon * t, t fitted on the training split
    linear_time: float  # that t
    constant_velocity_test_mse: float  # x + v * horizon
    epochs_run: int
    stopped_early: bool

    def describe(self) -> str:
        ratio = self.test_mse / self.linear_test_mse if self.linear_test_mse > 0 else float("nan")
        return "\n".join([
            f"run outputs ({RunDirectory(self.run_dir).outputs()}): {self.run_dir}",
            f"test MSE, constant velocity x + v * horizon: {self.constant_velocity_test_mse:.6f}",
            f"test MSE, Linear x + v * horizon * t (t = {self.linear_time:.4f} fitted on the training split): "
            f"{self.linear_test_mse:.6f}",
            f"test MSE {self.model} (best validation epoch {self.best_epoch}): {self.test_mse:.6f}, "
            f"{ratio:.3f} x Linear's {self.linear_test_mse:.6f}",
        ])


def resolve_run_dir(config: Config, resume: bool) -> Path:
    """``<out_dir>/<name>`` when resuming; for a fresh run a directory created here, atomically,
    that no other run has (``<name>`` or ``<name>-<timestamp>``). For launchers that pick the
    directory in one process and train in others (which then pass it to :func:`run`)."""
    claim = claim_run_dir(config.out_dir, config.name, resume=resume)
    claim.release()
    return claim.path


def run(
    config: Config,
    *,
    resume: bool = False,
    engine: Engine | None = None,
    run_dir: Path | None = None,
    resume_from: str | None = None,
    on_epoch_end: Sequence[EpochEndCallback] = (),
    regenerate_data: bool = False,
    resume_or_start: bool = True,
    data_origin: DataOrigin | None = None,
) -> RunSummary:
    """Train ``config``; ``resume`` continues ``<out_dir>/<name>`` from ``last.pt`` (starting afresh
    if there is none), ``resume_from`` from 'last', 'best' or a checkpoint path (which must exist);
    ``regenerate_data`` replaces the stores at ``data.path`` with what ``data.generate`` says;
    ``data_origin``: where the data came from when a launcher prepared it before (Ray's driver).

    ``on_epoch_end``: callbacks of the caller (a launcher's report, say), called before those the
    config asks for. A run owns its directory while it lives (:mod:`scaleq.train.run_dir`); if it fails before any
    checkpoint is written, the directory it created is removed again."""
    config = check_buildable(config)  # a wrong model key fails here, before any data is made or engine started
    owns_engine = engine is None
    try:
        engine = engine or engine_from_config(config)
    except (RuntimeError, ValueError) as err:  # e.g. train.device: cuda without CUDA
        raise ConfigError(f"engine: {err}") from None
    claim: RunClaim | None = None
    trainer: Trainer | None = None
    try:
        origin: DataOrigin = data_origin or "existing store"
        if engine.is_main and data_origin is None:
            origin = prepare_data(config.data, progress=config.train.progress, regenerate=regenerate_data)
        engine.barrier()  # the other ranks open the data once rank 0 has made it
        seed_everything(config.seed)
        datasets = open_datasets(config)
        model = _build_model(config, datasets["train"])
        resume = resume or resume_from is not None
        refused = None
        if engine.is_main:
            try:
                claim = claim_run_dir(config.out_dir, config.name, resume=resume, path=run_dir)
            except RunDirError as err:
                refused = str(err)
        # rank 0's choice, or its refusal: every rank stops then, none waits in a collective
        run_dir, refused = engine.broadcast_object((claim.path if claim is not None else None, refused))
        if refused is not None:
            raise RunDirError(refused)
        parts = build_loop_parts(config, engine, model, datasets)  # the loop is handed what it runs with
        callbacks = [*on_epoch_end, *_epoch_end_callbacks(config, datasets, parts.graph, run_dir)]
        trainer = Trainer(config, engine, model, parts, run_dir, on_epoch_end=callbacks)
        resume_point = _resume(trainer, run_dir, resume_from, resume_or_start) if resume else None
        if engine.is_main:  # after the resume: a failed one leaves the run directory as it was
            save_config(data_as_used(config), RunDirectory(run_dir).config)  # what the run reads, not what was asked
            print(run_header(config, model, split_sizes(datasets), origin, device=str(engine.device),
                             world_size=engine.world_size, run_dir=run_dir, resume_point=resume_point), flush=True)
        result = trainer.fit()
        summary = _summarise(config, engine, trainer, result, run_dir, datasets["train"])
    except BaseException:
        if claim is not None:
            claim.abandon()
        raise
    finally:
        if claim is not None:
            claim.release()
        trainer = None  # the engine closes after the loop (and its wrapped model) is gone
        if owns_engine:
            engine.close()
    return summary


def _epoch_end_callbacks(config: Config, datasets: dict[str, TrajectoryDataset], graph: GraphBuilder,
                         run_dir: Path) -> list[EpochEndCallback]:
    """What the loop calls after each epoch: the short validation rollout of ``train.rollout_every``."""
    if not config.train.rollout_every:
        return []
    return [RolloutEveryEpochs(config.train.rollout_every, datasets["valid"], graph, run_dir, config.model.name)]


def _build_model(config: Config, train_set: TrajectoryDataset) -> Any:
    """The model with its data-derived widths; a constructor's refusal becomes a ConfigError."""
    try:
        return build_model(config, train_set)
    except (ValueError, TypeError, RuntimeError) as err:
        options = ", ".join(f"model.{k}={v}" for k, v in config.model.options.items())
        raise ConfigError(f"model {config.model.name!r} ({options or 'defaults'}) cannot be built: {err}") from None


def _resume(trainer: Trainer, run_dir: Path, resume_from: str | None, or_start: bool = True) -> str | None:
    """Load the checkpoint asked for; where the run continues (None: nothing to resume, a fresh start,
    which only ``or_start`` allows: every rank refuses it together, after they agreed on what they see)."""
    if resume_from is None:
        last = RunDirectory(run_dir).last
        _refuse_different(trainer.engine, last)
        _refuse_unreadable(trainer.engine, last)
        if not trainer.resume():
            if not or_start:
                raise nothing_to_resume(run_dir)
            if trainer.engine.is_main:  # one line, not one per rank
                print(f"nothing to resume in {run_dir}; starting from scratch", flush=True)
            return None
        return f"epoch {trainer.state.epoch + 1}, batch {trainer.state.batch_in_epoch} ({last.relative_to(run_dir)})"
    named = resume_from in CHECKPOINT_NAMES
    path = RunDirectory(run_dir).checkpoint(resume_from) if named else Path(resume_from)
    _refuse_different(trainer.engine, path)
    _refuse_unreadable(trainer.engine, path)
    if not trainer.resume(path):
        raise CheckpointError(f"{path}: no such checkpoint to resume from")
    print(f"resumed from {path}", flush=True)
    return f"epoch {trainer.state.epoch + 1}, batch {trainer.state.batch_in_epoch} ({path})"


def _refuse_different(engine: Engine, path: Path) -> None:
    """Every rank refuses, with the same line, a resume whose ranks see different checkpoints at
    ``path`` (or none): an out_dir on each node's own disk instead of one they share. Resumed, each
    node would continue from its own weights and the ranks would silently disagree."""
    if engine.world_size == 1:
        return
    mine = fingerprint(path)
    reference = engine.broadcast_object(mine)
    differ = int(engine.all_reduce_sum(torch.tensor([float(mine != reference)], device=engine.device)).item())
    if differ:
        raise CheckpointError(
            f"{path}: the ranks see different checkpoints ({differ} of {engine.world_size} ranks do not see rank 0's "
            f"{reference}): checkpoints must live on an out_dir that every node shares (docs/reliability.md)"
        )


def _refuse_unreadable(engine: Engine, path: Path) -> None:
    """Every rank refuses a checkpoint with an unreadable file (a DeepSpeed shard of one rank
    included) together, with the same line; rank 0 looks (see :func:`checkpoint_problem`)."""
    problem = checkpoint_problem(path) if engine.is_main and path.is_file() else None
    problem = engine.broadcast_object(problem)
    if problem is not None:
        raise CheckpointError(problem)


def _summarise(
    config: Config, engine: Engine, trainer: Trainer, result: FitResult, run_dir: Path, train_set: TrajectoryDataset
) -> RunSummary:
    linear = fit_linear(train_set, config, engine).to(engine.device)
    linear_mse = evaluate(linear, trainer.eval_loaders["test"], trainer.graph, engine)
    constant_mse = evaluate(ConstantVelocity(), trainer.eval_loaders["test"], trainer.graph, engine)
    summary = RunSummary(
        run_dir=str(run_dir),
        model=config.model.name,
        best_epoch=result.best_epoch + 1,  # 1-based, as the console and metrics.csv count
        best_val_mse=result.best_val_mse,
        test_mse=result.test_mse,
        linear_test_mse=linear_mse,
        linear_time=linear.time.item(),
        constant_velocity_test_mse=constant_mse,
        epochs_run=result.epochs_run,
        stopped_early=result.stopped_early,
    )
    if engine.is_main:
        atomic_write_text(RunDirectory(run_dir).summary, json.dumps(asdict(summary), indent=2))
    return summary


def fit_linear(train_set: TrajectoryDataset, config: Config, engine: Engine) -> LinearDynamics:
    """The Linear baseline with t fitted in closed form (least squares) on the whole training
    split, each rank summing its share."""
    sampler = ShardedSampler(len(train_set), shuffle=False, seed=0, rank=engine.rank, world_size=engine.world_size,
                             pad=False)
    sums = torch.zeros(2, dtype=torch.float64, device=engine.device)
    for batch in make_loader(train_set, config.data.eval_batch_size or config.data.batch_size, sampler,
                             config.data.num_workers):
        sums += LinearDynamics.normal_equation(batch.to(engine.device))
    return LinearDynamics.from_normal_equation(engine.all_reduce_sum(sums))


__all__ = ["RunSummary", "run", "fit_linear", "resolve_run_dir"]
