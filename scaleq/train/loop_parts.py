"""The parts a training loop is handed, built in one place from the config: the optimizer, the
data loaders and the graph builder.

:func:`scaleq.run.run` builds them and hands them to :class:`scaleq.train.trainer.Trainer` (as
torchtitan hands its trainer what it built); the depth sweep builds its loops the same way, so no
caller wires a loop differently. The engines take the optimizer through ``Engine.wrap``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from scaleq.config import Config, TrainConfig
from scaleq.data.dataset import ShardedSampler, make_loader
from scaleq.distributed.engine import Engine
from scaleq.graph.builder import GraphBuilder

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


@dataclass
class Loaders:
    """This rank's loaders: the shuffled training one (its sampler, which the loop moves to each
    epoch and position) and one per evaluation split."""

    train: DataLoader
    train_sampler: ShardedSampler
    eval: dict[str, DataLoader]  # "valid", "test"


@dataclass
class LoopParts:
    """What :class:`scaleq.train.trainer.Trainer` is handed besides the config, engine and model."""

    optimizer: torch.optim.Optimizer
    loaders: Loaders
    graph: GraphBuilder


def build_optimizer(model: nn.Module, train: TrainConfig) -> torch.optim.Optimizer:
    """``train.optimizer`` over the model's trainable parameters (adam: L2 weight decay, as the
    papers; adamw: decoupled)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return OPTIMIZERS[train.optimizer](params, lr=train.lr, weight_decay=train.weight_decay)


def build_loaders(config: Config, datasets: dict[str, Any], engine: Engine) -> Loaders:
    """One shard per data-parallel group (the ranks of a graph-parallel group read the same
    batches): the training split shuffled from ``config.seed``, valid and test in order."""
    data = config.data
    eval_batch = data.eval_batch_size or data.batch_size
    pin = engine.device.type == "cuda"
    shard = {"rank": engine.data_rank, "world_size": engine.data_world_size}
    train_sampler = ShardedSampler(len(datasets["train"]), shuffle=True, seed=config.seed, **shard)
    train = make_loader(datasets["train"], data.batch_size, train_sampler, data.num_workers, pin)
    evaluation = {
        split: make_loader(
            datasets[split],
            eval_batch,
            ShardedSampler(len(datasets[split]), shuffle=False, seed=0, pad=False, **shard),
            data.num_workers,
            pin,
        )
        for split in ("valid", "test")
    }
    return Loaders(train, train_sampler, evaluation)


def build_loop_parts(config: Config, engine: Engine, model: nn.Module, datasets: dict[str, Any]) -> LoopParts:
    """The optimizer, loaders and graph builder of ``config`` for ``model`` on ``engine``."""
    return LoopParts(build_optimizer(model, config.train), build_loaders(config, datasets, engine),
                     GraphBuilder.from_config(config.graph))
