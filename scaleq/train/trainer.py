"""The training loop. It knows nothing about which engine or launcher runs it.

Per epoch: train on this rank's shard of a seeded shuffle, evaluate every ``eval_every`` epochs,
and when validation improves evaluate the test set too (the papers report the test MSE at the
best-validation epoch). ``last.pt`` is written every epoch (and every ``checkpoint_every_steps``
steps), ``best.pt`` on improvement; both atomically. Resuming restores model, optimizer, RNG
states and the position inside the epoch, so a resumed run continues the same sequence of
batches.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from torch_geometric.data import Batch
from torch_geometric.loader import DataLoader as GraphLoader
from tqdm import tqdm

from scaleq.config import Config
from scaleq.data.dataset import ShardedSampler, TrajectoryDataset
from scaleq.data.graph import GraphBuilder
from scaleq.distributed.engine import Engine
from scaleq.eval.rollout_hook import rollout_during_training
from scaleq.losses import squared_error_sum, training_loss
from scaleq.train.checkpoint import TrainState, rng_state, set_rng_state
from scaleq.train.metrics import MetricsLogger, plot_loss_curves

LAST, BEST = "last.pt", "best.pt"
METRIC_COLUMNS = ["epoch", "train_loss", "val_mse", "test_mse", "lr", "epoch_seconds"]
OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


@dataclass
class FitResult:
    best_epoch: int
    best_val_mse: float
    test_mse: float  # at the best-validation epoch
    epochs_run: int
    stopped_early: bool


def make_loader(dataset: TrajectoryDataset, batch_size: int, sampler: ShardedSampler, num_workers: int) -> DataLoader:
    return GraphLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        persistent_workers=False,
        pin_memory=False,
    )


def prepare_batch(batch: Batch, graph: GraphBuilder, device: torch.device, training: bool = True) -> Batch:
    """Move to the device and build the graph there."""
    return graph(batch.to(device, non_blocking=True), training=training)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, graph: GraphBuilder, engine: Engine) -> float:
    """Position MSE over every node and axis of the loader's samples, summed across ranks."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(2, dtype=torch.float64, device=engine.device)
    for batch in loader:
        batch = prepare_batch(batch, graph, engine.device, training=False)
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
        datasets: dict[str, TrajectoryDataset],
        run_dir: Path,
    ) -> None:
        self.config = config
        self.engine = engine
        self.run_dir = run_dir
        self.graph = config.graph.builder()
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = OPTIMIZERS[config.train.optimizer](params, lr=config.train.lr, weight_decay=config.train.weight_decay)
        self.model = engine.wrap(model, optimizer)
        data = config.data
        eval_batch = data.eval_batch_size or data.batch_size
        self.train_sampler = ShardedSampler(
            len(datasets["train"]), shuffle=True, seed=config.seed, rank=engine.rank, world_size=engine.world_size
        )
        self.train_loader = make_loader(datasets["train"], data.batch_size, self.train_sampler, data.num_workers)
        self.eval_loaders = {
            split: make_loader(
                datasets[split],
                eval_batch,
                ShardedSampler(
                    len(datasets[split]), shuffle=False, seed=0, rank=engine.rank, world_size=engine.world_size, pad=False
                ),
                data.num_workers,
            )
            for split in ("valid", "test")
        }
        self.state = TrainState()

    # -- checkpoints -----------------------------------------------------------------------
    def save(self, name: str) -> None:
        self.engine.save(self.run_dir / "checkpoints" / name, {"state": self.state.to_dict(), "rng": rng_state()})

    def resume(self, path: Path | None = None) -> bool:
        """Continue from ``last.pt`` (or ``path``); False when there is nothing to resume."""
        path = path or self.run_dir / "checkpoints" / LAST
        if not path.exists():
            return False
        extra = self.engine.load(path)
        self.state = TrainState(**extra["state"])
        set_rng_state(extra["rng"])
        return True

    # -- the loop --------------------------------------------------------------------------
    def fit(self) -> FitResult:
        cfg, engine, state = self.config.train, self.engine, self.state
        main = engine.is_main
        logger = MetricsLogger(self.run_dir, METRIC_COLUMNS) if main else None
        stopped_early = False
        epochs = tqdm(
            range(state.epoch, cfg.epochs), initial=state.epoch, total=cfg.epochs, desc="epochs",
            disable=not (main and cfg.progress), unit="ep", dynamic_ncols=True,
        )
        try:
            for epoch in epochs:
                state.epoch = epoch
                started = time.perf_counter()
                train_loss = self._train_epoch(epoch)
                values: dict[str, Any] = {"epoch": epoch + 1, "train_loss": train_loss, "lr": cfg.lr}
                if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
                    values.update(self._evaluate_and_track(epoch))
                state.epoch, state.batch_in_epoch = epoch + 1, 0
                values["epoch_seconds"] = time.perf_counter() - started
                self.save(LAST)
                engine.checkpoint_saved(self.run_dir / "checkpoints" / LAST, values)
                if main and logger is not None:
                    logger.log(state.step, values)
                    epochs.set_postfix(loss=f"{train_loss:.3g}", best_val=f"{state.best_val_mse:.3g}")
                    if "val_mse" in values:
                        epochs.write(
                            f"epoch {epoch + 1:4d}  train loss {train_loss:.5f}  val MSE {values['val_mse']:.5f}"
                            f"  best {state.best_val_mse:.5f} (epoch {state.best_epoch + 1})"
                        )
                if cfg.rollout_every and (epoch + 1) % cfg.rollout_every == 0:
                    rollout_during_training(self, epoch + 1, logger.tensorboard if logger is not None else None)
                if state.epochs_without_improvement >= cfg.patience:
                    stopped_early = True
                    break
        finally:
            if logger is not None:
                logger.close()
                if (self.run_dir / "metrics.csv").exists():
                    plot_loss_curves(self.run_dir / "metrics.csv", self.run_dir / "loss_curves.png")
        return FitResult(state.best_epoch, state.best_val_mse, state.test_mse_at_best, state.epoch, stopped_early)

    def _train_epoch(self, epoch: int) -> float:
        cfg, engine, state = self.config.train, self.engine, self.state
        batch_size = self.config.data.batch_size
        self.train_sampler.set_epoch(epoch, start=state.batch_in_epoch * batch_size)
        self.model.train()
        totals = torch.zeros(2, dtype=torch.float64, device=engine.device)
        bar = tqdm(
            self.train_loader, desc=f"epoch {epoch + 1}", leave=False, unit="batch", dynamic_ncols=True,
            disable=not (engine.is_main and cfg.progress) or len(self.train_loader) < 20,
        )
        for batch in bar:
            batch = prepare_batch(batch, self.graph, engine.device)
            with engine.autocast():
                output = self.model(batch)
            loss, _ = training_loss(output, batch, self.config.loss)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"loss became {loss.item()} at epoch {epoch + 1}, step {state.step}; lower train.lr or "
                    "enable train.grad_clip (the last good checkpoint is checkpoints/last.pt)"
                )
            engine.backward(loss)
            engine.step()
            state.step += 1
            state.batch_in_epoch += 1
            totals[0] += loss.detach().double()
            totals[1] += 1
            if cfg.checkpoint_every_steps and state.step % cfg.checkpoint_every_steps == 0:
                self.save(LAST)
        totals = engine.all_reduce_sum(totals)
        return float(totals[0] / totals[1]) if totals[1] > 0 else math.nan

    def _evaluate_and_track(self, epoch: int) -> dict[str, float]:
        state = self.state
        val = evaluate(self.model, self.eval_loaders["valid"], self.graph, self.engine)
        values = {"val_mse": val}
        if val < state.best_val_mse:
            state.best_val_mse, state.best_epoch = val, epoch
            state.test_mse_at_best = evaluate(self.model, self.eval_loaders["test"], self.graph, self.engine)
            state.epochs_without_improvement = 0
            values["test_mse"] = state.test_mse_at_best
            self.save(BEST)
        else:
            state.epochs_without_improvement = epoch - state.best_epoch
        return values
