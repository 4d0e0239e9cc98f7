"""The training loop. It knows nothing about which engine or launcher runs it.

Per epoch: train on this rank's shard of a seeded shuffle, evaluate every ``eval_every`` epochs,
and when validation improves evaluate the test set too (the papers report the test MSE at the
best-validation epoch). ``last.pt`` is written every epoch (and every ``checkpoint_every_steps``
steps), ``best.pt`` on improvement; both atomically. Resuming restores model, optimizer, RNG
states, the position inside the epoch and the epoch's running loss sums, so a resumed run continues
the same sequence of batches and logs the same numbers.

What else happens at the end of an epoch (a short rollout, a launcher's report of the checkpoint)
the loop is handed as callbacks (``on_epoch_end``), its one mechanism: the loop imports none of it.

With gradient accumulation (``engine.gradient_accumulation`` micro-batches per optimizer step) the
engine decides when to step (:mod:`scaleq.distributed.accumulation`); windows restart every
epoch and the epoch's last one is stepped however short. ``state.step`` counts optimizer steps, and
NaN checks and mid-epoch checkpoints happen only right after one, so a checkpoint never falls inside
a window (the engines refuse to write one there): it holds no half-accumulated gradients and a
resume starts a fresh window exactly where the uninterrupted run started one.

A training step never waits for the device: the epoch's loss sums stay on the device (a NaN or
infinite loss makes them non-finite, so they are the NaN flag too) and are read every
``train.finite_check_every`` steps and at the end of each epoch, always before a checkpoint is
written, so a NaN loss stops the run without ever being saved. On CUDA the next
batch is copied to the device (pinned memory, a side stream) while the current one trains.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from torch_geometric.data import Batch
from tqdm import tqdm

from scaleq.config import Config
from scaleq.digests import DigestError
from scaleq.distributed.engine import Engine
from scaleq.graph.builder import GraphBuilder
from scaleq.losses import LOSS_PARTS, explain_total, squared_error_sum, term_weights, training_loss
from scaleq.run_directory import BEST, LAST, RunDirectory
from scaleq.safe_load import UnsafeFileError
from scaleq.train import preemption
from scaleq.train.checkpoint import (
    CheckpointError,
    TrainState,
    rng_state,
    set_rng_state,
    state_dict_mismatch,
)
from scaleq.train.loop_parts import LoopParts
from scaleq.train.metrics import MetricsLogger, plot_loss_curves
from scaleq.train.preemption import Preempted

METRIC_COLUMNS = ["epoch", "train_loss", *(f"train_{p}" for p in LOSS_PARTS), "val_mse", "test_mse", "lr",
                  "epoch_seconds"]


@dataclass(frozen=True)
class EpochEnd:
    """What the loop hands each ``on_epoch_end`` callback, on every rank, after the epoch's checkpoint."""

    epoch: int  # epochs done
    step: int  # optimizer steps so far
    model: nn.Module  # the engine-wrapped model
    engine: Engine
    tensorboard: Any | None  # rank 0's SummaryWriter; None elsewhere
    checkpoint: Path  # the end-of-epoch checkpoint just written (complete on every rank)
    metrics: dict[str, Any]  # the epoch's row of metrics.csv


EpochEndCallback = Callable[[EpochEnd], None]


@dataclass
class FitResult:
    best_epoch: int
    best_val_mse: float
    test_mse: float  # at the best-validation epoch
    epochs_run: int
    stopped_early: bool


def device_batches(loader: Iterable[Batch], device: torch.device) -> Iterator[Batch]:
    """The loader's batches on ``device``. On CUDA the next batch's host-to-device copy runs on a
    side stream while the current batch trains (the loader pins its memory, so the copy is
    asynchronous); elsewhere this is a plain ``.to(device)``."""
    if device.type != "cuda":
        for batch in loader:
            yield batch.to(device)
        return
    side = torch.cuda.Stream(device)
    main = torch.cuda.current_stream(device)

    def copy(batch: Batch | None) -> Batch | None:
        if batch is None:
            return None
        with torch.cuda.stream(side):
            return batch.to(device, non_blocking=True)

    batches = iter(loader)
    upcoming = copy(next(batches, None))
    while upcoming is not None:
        main.wait_stream(side)  # the copy is complete before the main stream reads it
        current = upcoming.apply(lambda t: (t.record_stream(main), t)[1])  # freed only after main used it
        upcoming = copy(next(batches, None))
        yield current


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, graph: GraphBuilder, engine: Engine) -> float:
    """Position MSE over every node and axis of the loader's samples, summed across ranks (under
    graph parallelism each rank counts the nodes it owns, so every node counts once)."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(2, dtype=torch.float64, device=engine.device)
    for batch in device_batches(loader, engine.device):
        batch = engine.prepare_batch(batch, graph, training=False)
        with engine.autocast():
            output = model(batch)
        totals[0] += squared_error_sum(output["pos"], batch.target).double()
        totals[1] += batch.target.numel()
    model.train(was_training)
    totals = engine.all_reduce_sum(totals)
    return float(totals[0] / totals[1]) if totals[1] > 0 else float("nan")


class Trainer:
    def __init__(
        self,
        config: Config,
        engine: Engine,
        model: nn.Module,
        parts: LoopParts,
        run_dir: Path,
        on_epoch_end: Sequence[EpochEndCallback] = (),
    ) -> None:
        """``parts``: the optimizer, loaders and graph builder, built by the caller
        (:func:`scaleq.train.loop_parts.build_loop_parts`)."""
        self.config = config
        self.on_epoch_end = list(on_epoch_end)
        self.engine = engine
        self.run_dir = run_dir
        self.paths = RunDirectory(run_dir)  # every file the loop writes there
        self.graph = parts.graph
        self.model = engine.wrap(model, parts.optimizer)
        self.train_sampler = parts.loaders.train_sampler
        self.train_loader = parts.loaders.train
        self.eval_loaders = parts.loaders.eval
        self.state = TrainState()
        # [loss, *LOSS_PARTS, batches] of the epoch in progress, on the device
        self._sums = torch.zeros(len(LOSS_PARTS) + 2, dtype=torch.float64, device=engine.device)

    # -- checkpoints -----------------------------------------------------------------------
    @property
    def checkpoint_dir(self) -> Path:
        return self.paths.checkpoints

    def save(self, name: str) -> None:
        """Write a checkpoint (a collective: every rank calls it). The running sums of the epoch in
        progress go in it, summed over the ranks, so a resumed epoch logs the same train loss."""
        state = self.state
        state.epoch_sums = self.engine.all_reduce_sum(self._sums).tolist() if state.batch_in_epoch else []
        self.engine.save(self.checkpoint_dir / name, {"state": state.to_dict(), "rng": rng_state()})

    def resume(self, path: Path | None = None) -> bool:
        """Continue from ``last.pt`` (or ``path``); False when there is nothing to resume.

        A checkpoint that cannot be read raises :class:`CheckpointError` naming it (never a silent
        start from scratch); the user decides whether to fall back to another one."""
        path = path or self.checkpoint_dir / LAST
        if not path.exists():
            return False
        try:
            extra = self.engine.load(path)
            state = TrainState(**extra["state"])
            set_rng_state(extra["rng"])
        except (DigestError, UnsafeFileError) as err:  # one line that names the file already
            raise CheckpointError(str(err)) from None
        except Exception as err:  # torch, pickle, zip and DeepSpeed raise many types for damaged files
            mismatch = state_dict_mismatch(err)
            if mismatch is not None:  # a readable checkpoint, of another model: say so, not "damaged"
                raise CheckpointError(
                    f"{path}: does not fit the model of {self.paths.config} ({mismatch}); resume it with "
                    "the config it was written with, or start a new run"
                ) from None
            reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
            raise CheckpointError(
                f"{path}: checkpoint is damaged or unreadable ({type(err).__name__}: {reason}); resume from "
                f"another with --resume-from best (or a path), or start a new run"
            ) from err
        self.state = state
        if state.batch_in_epoch and state.epoch_sums and self.engine.is_main:
            # rank 0 carries what all ranks had summed before the checkpoint; the others start at zero
            self._sums = torch.tensor(state.epoch_sums, dtype=torch.float64, device=self.engine.device)
        return True

    # -- the loop --------------------------------------------------------------------------
    def fit(self) -> FitResult:
        cfg, engine, state = self.config.train, self.engine, self.state
        main = engine.is_main
        resumed = state.step > 0 or state.epoch > 0
        logger = MetricsLogger(self.paths, METRIC_COLUMNS, state.epoch if resumed else None) if main else None
        stopped_early = False
        epochs = tqdm(
            range(state.epoch, cfg.epochs), initial=state.epoch, total=cfg.epochs, desc="epochs",
            disable=not (main and cfg.progress), unit="ep", dynamic_ncols=True,
        )
        try:
            for epoch in epochs:
                state.epoch = epoch
                started = time.perf_counter()
                losses = self._train_epoch(epoch)
                values: dict[str, Any] = {"epoch": epoch + 1, **losses, "lr": cfg.lr}
                if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
                    values.update(self._evaluate_and_track(epoch))
                state.epoch, state.batch_in_epoch = epoch + 1, 0
                values["epoch_seconds"] = time.perf_counter() - started
                if main and logger is not None:
                    # logged before the checkpoint: a crash in between redoes this epoch, whose
                    # row a resume then drops (MetricsLogger keeps rows up to the checkpoint's epoch)
                    logger.log(state.step, values)
                self.save(LAST)
                if preemption.requested(engine):  # told during validation: the epoch's checkpoint is the one
                    self._preempted(f"after epoch {epoch + 1}")
                if main:
                    train_loss = values["train_loss"]
                    epochs.set_postfix(loss=f"{train_loss:.3g}", best_val=f"{state.best_val_mse:.3g}")
                    if "val_mse" in values:
                        parts = {k.removeprefix("train_"): v for k, v in values.items() if k.startswith("train_")}
                        # a total with more than the MSE in it is shown with its parts (it can be negative)
                        explained = f" ({explain_total(parts, self.config.loss)})" if len(parts) > 2 else ""
                        epochs.write(
                            f"epoch {epoch + 1:4d}  train loss {train_loss:.5f}{explained}  val MSE {values['val_mse']:.5f}"
                            f"  best {state.best_val_mse:.5f} (epoch {state.best_epoch + 1})"
                        )
                end = EpochEnd(epoch + 1, state.step, self.model, engine, logger.tensorboard if logger is not None else None,
                               self.checkpoint_dir / LAST, values)
                for callback in self.on_epoch_end:
                    callback(end)
                if state.epochs_without_improvement >= cfg.patience:
                    stopped_early = True
                    break
        except BaseException:
            if logger is not None:
                with contextlib.suppress(Exception):  # the error that stopped the run is the one to report
                    self._close_logger(logger)
            raise
        if logger is not None:
            self._close_logger(logger)
        return FitResult(state.best_epoch, state.best_val_mse, state.test_mse_at_best, state.epoch, stopped_early)

    def _close_logger(self, logger: MetricsLogger) -> None:
        logger.close()
        if self.paths.metrics.exists():
            plot_loss_curves(self.paths.metrics, self.paths.loss_curves)

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        """Train one epoch (or its rest, after a mid-epoch resume); the epoch's mean loss and parts."""
        cfg, engine, state = self.config.train, self.engine, self.state
        batch_size = self.config.data.batch_size
        self.train_sampler.set_epoch(epoch, start=state.batch_in_epoch * batch_size)
        # the loader holds the epoch's batches not yet trained on (the sampler skips the others)
        engine.start_epoch(state.batch_in_epoch + len(self.train_loader), done=state.batch_in_epoch)
        if not state.batch_in_epoch:
            self._sums.zero_()
        self.model.train()
        zero = torch.zeros((), dtype=torch.float32, device=engine.device)
        one = torch.ones((), dtype=torch.float32, device=engine.device)
        checked = state.step  # the loss sums were finite up to this step
        bar = tqdm(
            device_batches(self.train_loader, engine.device), total=len(self.train_loader), desc=f"epoch {epoch + 1}",
            leave=False, unit="batch", dynamic_ncols=True,
            disable=not (engine.is_main and cfg.progress) or len(self.train_loader) < 20,
        )
        for batch in bar:
            batch = engine.prepare_batch(batch, self.graph)
            with engine.micro_batch():  # forward and backward: DDP decides in the forward whether to sync
                with engine.autocast():
                    output = self.model(batch)
                loss, parts = training_loss(output, batch, self.config.loss)
                engine.backward(loss)
            stepped = engine.step()
            state.batch_in_epoch += 1
            # Summed on the device, never read here (that would wait for the step to finish). A NaN
            # or infinite loss makes the sum non-finite, so the sum is also the NaN flag.
            self._sums += torch.stack(
                [loss.detach().float(), *(parts[p].float() if p in parts else zero for p in LOSS_PARTS), one]
            ).double()
            if not stepped:
                continue  # inside an accumulation window: checks and checkpoints wait for its end
            state.step += 1
            checkpoint_now = bool(cfg.checkpoint_every_steps) and state.step % cfg.checkpoint_every_steps == 0
            if checkpoint_now or state.step % cfg.finite_check_every == 0:
                self._stop_if_not_finite(epoch, checked)
                checked = state.step
            if checkpoint_now:
                self.save(LAST)
            if preemption.requested(engine):  # a scheduler's SIGTERM/SIGUSR1 on any rank
                self._stop_if_not_finite(epoch, checked)
                self.save(LAST)
                self._preempted(f"at epoch {epoch + 1}, step {state.step}")
        self._stop_if_not_finite(epoch, checked)
        totals = engine.all_reduce_sum(self._sums).tolist()
        batches = totals[-1]
        mean = (lambda v: v / batches) if batches > 0 else (lambda v: math.nan)
        losses = {"train_loss": mean(totals[0])}
        weights = term_weights(self.config.loss)
        for i, part in enumerate(LOSS_PARTS, start=1):
            if weights[part] > 0:  # a part that is off stays empty in the CSV
                losses[f"train_{part}"] = mean(totals[i])
        return losses

    def _preempted(self, where: str) -> None:
        raise Preempted(f"preempted ({preemption.signal_names()}) {where}: {self.checkpoint_dir / LAST} written; "
                        "continue with --resume")

    def _stop_if_not_finite(self, epoch: int, checked: int) -> None:
        """Raise when a training loss since step ``checked`` was NaN or inf, on any rank. Called
        before anything is saved; the one host read of the loss sums between two checks."""
        value = float(self.engine.all_reduce_sum(self._sums[:1])[0])
        if math.isfinite(value):
            return
        first, last_step = checked + 1, self.state.step
        where = f"step {first}" if first == last_step else f"one of steps {first}..{last_step}"
        last = self.checkpoint_dir / LAST
        if last.exists():
            saved = f"the last good checkpoint is {last} (resume with --resume)"
        else:
            saved = "no checkpoint was written"
        raise FloatingPointError(
            f"training loss became {value} at epoch {epoch + 1}, {where}; lower train.lr or set train.grad_clip "
            f"({saved})"
        )

    def _evaluate_and_track(self, epoch: int) -> dict[str, float]:
        state = self.state
        val = evaluate(self.model, self.eval_loaders["valid"], self.graph, self.engine)
        self._stop_unless_finite("validation", val, epoch)
        values = {"val_mse": val}
        if val < state.best_val_mse:
            state.best_val_mse, state.best_epoch = val, epoch
            state.test_mse_at_best = evaluate(self.model, self.eval_loaders["test"], self.graph, self.engine)
            self._stop_unless_finite("test", state.test_mse_at_best, epoch)
            state.epochs_without_improvement = 0
            values["test_mse"] = state.test_mse_at_best
            self.save(BEST)
        else:
            state.epochs_without_improvement = epoch - state.best_epoch
        return values

    def _stop_unless_finite(self, split: str, mse: float, epoch: int) -> None:
        """A NaN metric is never reported as a result, nor saved as the best checkpoint."""
        if not math.isfinite(mse):
            raise FloatingPointError(
                f"{split} MSE is {mse} at epoch {epoch + 1}: the model's predictions are not finite; lower "
                "train.lr or set train.grad_clip"
            )
