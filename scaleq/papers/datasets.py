"""The datasets of the papers' tables (:class:`scaleq.papers.tables.Dataset`), made when missing:
``<data_root>/<table>/<profile>/<dataset>/{train,valid,test}.zarr``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from scaleq.papers.tables import Table
from scaleq.store.format import StoreError

SPLITS = ("train", "valid", "test")


def dataset_dir(data_root: Path, table: Table, profile: str, name: str) -> Path:
    return Path(data_root) / table.name / profile / name


def ensure_dataset(data_root: Path, table: Table, profile: str, name: str, *, print_fn: Callable[[str], None] = print,
                   progress: bool = False) -> Path:
    """Make dataset ``name`` of ``table`` at ``profile`` unless its three stores exist; its directory."""
    out = dataset_dir(data_root, table, profile, name)
    if all((out / f"{s}.zarr").exists() for s in SPLITS):
        return out
    spec = table.profiles[profile].datasets[name]
    args = dict(spec.args)
    print_fn(f"generating {spec.kind} dataset {name} at {out}: {args}")
    if spec.kind == "nbody":
        from scaleq.sources.nbody import SplitSpec, protocol_params, write_nbody_dataset

        params = protocol_params(args.pop("protocol"), steps=args.get("steps"))
        splits = [SplitSpec("train", args["train"], args.get("train_drawn")), SplitSpec("valid", args["valid"]),
                  SplitSpec("test", args["test"])]
        write_nbody_dataset(out, params, splits, seed=args.get("seed", 43), overwrite=True, progress=progress)
    elif spec.kind == "mcomplex":
        from scaleq.sources.mcomplex import MComplexParams, write_mcomplex_dataset

        params = MComplexParams(complexes=args["complexes"], average_size=args["size"], systems=args["systems"])
        write_mcomplex_dataset(out, params, {s: args[s] for s in SPLITS}, seed=args.get("seed", 43), overwrite=True,
                               progress=progress)
    elif spec.kind == "md":
        from scaleq.sources.md import convert_md

        if args.get("mdanalysistests"):
            try:
                from MDAnalysisTests.datafiles import DCD, PSF
            except ImportError as err:
                raise StoreError(f"dataset {name}: needs the MDAnalysisTests package (its adk.psf and adk_dims.dcd): "
                                 f"{err}") from None
            args = {"topology": PSF, "trajectory": DCD}
        if not args.get("topology") or not args.get("trajectory"):
            raise StoreError(f"dataset {name} of {table.name} ({profile}): the paper's trajectory is not shipped "
                             f"with any package; convert it first with data_prep/md.py --out {out}")
        convert_md(args["topology"], args["trajectory"], out, overwrite=True, progress=progress)
    else:
        raise StoreError(f"dataset {name}: unknown kind {spec.kind!r}")
    return out


__all__ = ["dataset_dir", "ensure_dataset"]
