"""One training run from a Config: data (generated if missing), model, engine, loop, summary."""

from __future__ import annotations

import datetime
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from scaleq.config import Config, DataConfig, save_config
from scaleq.data.dataset import SampleSpec, TrajectoryDataset
from scaleq.data.nbody import NBodyParams, SplitSpec, write_nbody_dataset
from scaleq.data.store import StoreError
from scaleq.distributed import Engine, engine_from_config
from scaleq.models import build_model
from scaleq.models.baselines import LinearDynamics
from scaleq.train.checkpoint import seed_everything
from scaleq.train.trainer import BEST, Trainer, evaluate

SPLITS = ("train", "valid", "test")


@dataclass
class RunSummary:
    run_dir: str
    model: str
    best_epoch: int
    best_val_mse: float
    test_mse: float
    linear_test_mse: float
    epochs_run: int
    stopped_early: bool

    def describe(self) -> str:
        ratio = self.test_mse / self.linear_test_mse if self.linear_test_mse > 0 else float("nan")
        return "\n".join([
            f"test MSE ({self.model}, best validation epoch {self.best_epoch + 1}): {self.test_mse:.6f}",
            f"test MSE (Linear baseline x + v * dt):          {self.linear_test_mse:.6f}",
            f"ratio model / Linear: {ratio:.3f}",
            f"run outputs (config, metrics.csv, loss_curves.png, tensorboard/, checkpoints/): {self.run_dir}",
        ])


def prepare_data(data: DataConfig, progress: bool = True) -> None:
    """Generate the dataset at ``data.path`` when it is missing and the config says how."""
    root = Path(data.path)
    missing = [s for s in SPLITS if not (root / f"{s}.zarr").exists()]
    if not missing:
        return
    if data.generate is None:
        raise StoreError(
            f"{root}: dataset not found (missing {', '.join(f'{s}.zarr' for s in missing)}); convert one with "
            "data_prep/*.py or add a data.generate section"
        )
    gen = data.generate
    params = NBodyParams(num_particles=gen.particles, num_steps=gen.steps)
    splits = [SplitSpec("train", gen.train, gen.train_drawn), SplitSpec("valid", gen.valid), SplitSpec("test", gen.test)]
    print(f"generating {gen.particles}-body dataset at {root} (seed {gen.seed}) ...", flush=True)
    write_nbody_dataset(root, params, splits, seed=gen.seed, overwrite=True, progress=progress)


def open_datasets(config: Config) -> dict[str, TrajectoryDataset]:
    data = config.data
    datasets = {}
    for split in SPLITS:
        spec = SampleSpec(
            delta=data.delta,
            input_frame=data.input_frame,
            starts_per_trajectory=data.starts_per_trajectory,
            velocity=data.velocity,
            max_samples=data.max_train_samples if split == "train" else data.max_eval_samples,
            seed=config.seed,
        )
        datasets[split] = TrajectoryDataset(Path(data.path) / f"{split}.zarr", spec, node_features=data.node_features)
    return datasets


def resolve_run_dir(config: Config, resume: bool) -> Path:
    """``<out_dir>/<name>``; a fresh run never reuses a directory that holds checkpoints."""
    run_dir = Path(config.out_dir) / config.name
    if not resume and (run_dir / "checkpoints").exists():
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = run_dir.with_name(f"{config.name}-{stamp}")
    return run_dir


def run(config: Config, *, resume: bool = False, engine: Engine | None = None, run_dir: Path | None = None) -> RunSummary:
    owns_engine = engine is None
    engine = engine or engine_from_config(config)
    if engine.is_main:
        prepare_data(config.data, progress=config.train.progress)
    engine.barrier()  # the other ranks open the data once rank 0 has made it
    seed_everything(config.seed)
    datasets = open_datasets(config)
    model = build_model(config, datasets["train"])
    run_dir = engine.broadcast_object(run_dir or resolve_run_dir(config, resume))  # rank 0's choice
    if engine.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / "config.yaml")
    trainer = Trainer(config, engine, model, datasets, run_dir)
    if resume and not trainer.resume():
        print(f"nothing to resume in {run_dir}; starting from scratch", flush=True)
    result = trainer.fit()

    linear = LinearDynamics().to(engine.device)
    linear_mse = evaluate(linear, trainer.eval_loaders["test"], trainer.graph, engine)
    summary = RunSummary(
        run_dir=str(run_dir),
        model=config.model.name,
        best_epoch=result.best_epoch,
        best_val_mse=result.best_val_mse,
        test_mse=result.test_mse,
        linear_test_mse=linear_mse,
        epochs_run=result.epochs_run,
        stopped_early=result.stopped_early,
    )
    if engine.is_main:
        tmp = run_dir / ".summary.json.tmp"
        tmp.write_text(json.dumps(asdict(summary), indent=2))
        os.replace(tmp, run_dir / "summary.json")
    if owns_engine:
        engine.close()
    return summary


__all__ = ["RunSummary", "run", "prepare_data", "open_datasets", "resolve_run_dir", "BEST"]
