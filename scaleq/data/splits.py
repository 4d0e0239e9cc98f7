"""A dataset on disk: ``<data.path>/{train,valid,test}.zarr``, generated when missing and the config
says how, and opened as one :class:`TrajectoryDataset` per split with the training split's
feature scale."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

from scaleq.config import Config, ConfigError, DataConfig, GenerateConfig
from scaleq.data.dataset import SampleSpec, TrajectoryDataset
from scaleq.sources.nbody import SplitSpec, protocol_params, write_nbody_dataset
from scaleq.store.format import StoreError
from scaleq.store.reader import TrajectoryStore

SPLITS = ("train", "valid", "test")
DataOrigin = Literal["generated now", "existing store"]


def prepare_data(data: DataConfig, progress: bool = True, *, regenerate: bool = False) -> DataOrigin:
    """Generate the dataset at ``data.path`` when it is missing and the config says how (or when
    ``regenerate``: replace the stores with what ``data.generate`` says); where the data came from."""
    root = Path(data.path)
    missing = [s for s in SPLITS if not (root / f"{s}.zarr").exists()]
    if not missing and not (regenerate and data.generate is not None):
        return "existing store"
    if data.generate is None:
        raise StoreError(
            f"{root}: dataset not found (missing {', '.join(f'{s}.zarr' for s in missing)}); convert one with "
            "data_prep/*.py or add a data.generate section"
        )
    gen = data.generate
    params = protocol_params(gen.system, particles=gen.particles, steps=gen.steps, gaussians=gen.gaussians)
    splits = [SplitSpec("train", gen.train, gen.train_drawn), SplitSpec("valid", gen.valid), SplitSpec("test", gen.test)]
    print(f"generating {gen.particles}-body dataset ({gen.system} system) at {root} (seed {gen.seed}) ...", flush=True)
    write_nbody_dataset(root, params, splits, seed=gen.seed, overwrite=True, progress=progress)
    return "generated now"


# data.generate keys and how a simulator-made store records them (None: not recorded)
def _stored_generate(root: Path) -> dict[str, Any] | None:
    """The ``data.generate`` values that made the stores at ``root``, read from the stores (None
    when they were not made by the N-body simulator, e.g. a converted dataset)."""
    stores = {split: TrajectoryStore(root / f"{split}.zarr") for split in SPLITS}
    simulator = stores["train"].attrs.extra.get("simulator")
    if stores["train"].attrs.kind != "nbody" or not isinstance(simulator, dict):
        return None
    stored: dict[str, Any] = {split: store.num_trajectories for split, store in stores.items()}
    stored.update(system=simulator.get("system"), particles=simulator.get("num_particles"),
                  steps=simulator.get("num_steps"), seed=stores["train"].attrs.provenance.get("seed"))
    if simulator.get("system") == "fastegnn":
        stored["gaussians"] = simulator.get("gaussians")
    return stored


def generate_conflicts(data: DataConfig, keys: set[str] | None = None) -> dict[str, tuple[Any, Any]]:
    """{``data.generate.<key>``: (asked, in the store)} for each key (all, or those in ``keys``)
    whose value in ``data.generate`` differs from what made the existing stores at ``data.path``.
    Empty when there is no generate section, no complete dataset yet, or stores the simulator did
    not make."""
    root = Path(data.path)
    if data.generate is None or not all((root / f"{s}.zarr").exists() for s in SPLITS):
        return {}
    stored = _stored_generate(root)
    if stored is None:
        return {}
    asked = dataclasses.asdict(data.generate)
    return {f"data.generate.{key}": (asked[key], value) for key, value in stored.items()
            if value is not None and asked.get(key) != value and (keys is None or key in keys)}


def refuse_conflicting_generate(data: DataConfig, keys: set[str]) -> None:
    """Raise ConfigError when a ``data.generate`` key the user set (``keys``, without the prefix)
    disagrees with the existing stores: the run would train on the stores, not on what was asked."""
    conflicts = generate_conflicts(data, keys)
    if conflicts:
        listed = ", ".join(f"{key}={asked} (the store has {stored})" for key, (asked, stored) in conflicts.items())
        raise ConfigError(
            f"{data.path}: the dataset exists and was generated with other values: {listed}; drop the "
            f"override{'s' if len(conflicts) > 1 else ''}, point data.path elsewhere, or pass --regenerate-data "
            "to replace the stores"
        )


def data_as_used(config: Config) -> Config:
    """``config`` with ``data.generate`` describing the stores it trains on (a store made earlier
    with other sizes is what the run reads), so the saved config repeats the run."""
    conflicts = generate_conflicts(config.data)
    if not conflicts:
        return config
    stored = {key.rsplit(".", 1)[1]: value for key, (_, value) in conflicts.items()}
    generate = dataclasses.asdict(config.data.generate)
    generate.update(stored)
    if generate["train_drawn"] is not None and generate["train_drawn"] < generate["train"]:
        generate["train_drawn"] = None  # the stores do not record it
    data = dataclasses.replace(config.data, generate=GenerateConfig(**generate))
    return dataclasses.replace(config, data=data)


def split_sizes(datasets: dict[str, TrajectoryDataset]) -> dict[str, tuple[int, int]]:
    """{split: (trajectories in its store, samples the run reads)}."""
    return {split: (ds.store.num_trajectories, len(ds)) for split, ds in datasets.items()}


def open_datasets(config: Config) -> dict[str, TrajectoryDataset]:
    """The three splits of ``config.data``, sampled as the config says."""
    data = config.data
    datasets = {}
    for split in SPLITS:
        # the config checked these options when it loaded (scaleq.sample_options: the same rules)
        spec = SampleSpec(
            delta=data.delta,
            input_frame=data.input_frame,
            starts_per_trajectory=data.starts_per_trajectory,
            velocity=data.velocity,
            max_samples=data.max_train_samples if split == "train" else data.max_eval_samples,
            seed=config.seed,
        )
        scale_from = datasets["train"].store if split != "train" else None  # one feature scale: the training split's
        datasets[split] = TrajectoryDataset(Path(data.path) / f"{split}.zarr", spec, node_features=data.node_features,
                                            scale_from=scale_from)
    return datasets
