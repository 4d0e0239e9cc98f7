"""A dataset on disk: ``<data.path>/{train,valid,test}.zarr``, generated when missing and the config
says how, and opened as one :class:`TrajectoryDataset` per split with the training split's
feature scale."""

from __future__ import annotations

from pathlib import Path

from scaleq.config import Config, DataConfig
from scaleq.data.dataset import SampleSpec, TrajectoryDataset
from scaleq.sources.nbody import SplitSpec, protocol_params, write_nbody_dataset
from scaleq.store.format import StoreError

SPLITS = ("train", "valid", "test")


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
    params = protocol_params(gen.system, particles=gen.particles, steps=gen.steps, gaussians=gen.gaussians)
    splits = [SplitSpec("train", gen.train, gen.train_drawn), SplitSpec("valid", gen.valid), SplitSpec("test", gen.test)]
    print(f"generating {gen.particles}-body dataset ({gen.system} system) at {root} (seed {gen.seed}) ...", flush=True)
    write_nbody_dataset(root, params, splits, seed=gen.seed, overwrite=True, progress=progress)


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
