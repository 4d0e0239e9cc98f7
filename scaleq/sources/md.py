"""Molecular-dynamics trajectories (anything MDAnalysis reads) into scaleq stores.

One trajectory of one system is split IN TIME into train / valid / test (no shuffling across
time, as in the EGHN and FastEGNN protein experiments): each split is a store holding one
trajectory, the consecutive frames of its time window. Per selected atom the node features are

    charge    partial charge from the topology (0 where the topology has none)
    element   atomic number (elements from the topology, else guessed from names/types)
    type      integer code of the force-field atom type (the codes' meaning is in extra['type_codes'])

and bonds among the selected atoms (from the topology, else guessed from distances) become static
edges in both directions, with their length in the split's first stored frame as edge feature.
Lengths are in Angstrom and times in ps (MDAnalysis units).

Periodic boxes: MD engines (GROMACS in particular) write atoms wrapped into the box, so molecules
are cut at its faces and atoms jump by a box vector between frames. When the trajectory has a box,
molecules are made whole (MDAnalysis ``unwrap``, by bonds) and jumps are removed (``NoJump``,
frames read in order). Whatever the source, the stored frames are then checked: an atom moving
more than ``max_displacement`` between two stored frames, or a bond longer than
``max_bond_length``, is refused with the atom, the frame and the limit (a wrapped trajectory
without its box, or a topology that does not match the trajectory).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from scaleq.extras import require
from scaleq.store.format import StoreAttrs, StoreError, Trajectory, default_provenance
from scaleq.store.staging import staged_dataset
from scaleq.store.writer import StoreWriter

SPLITS = ("train", "valid", "test")
FEATURE_NAMES = ["charge", "element", "type"]
MAX_DISPLACEMENT = 20.0  # Angstrom between stored frames; jumps of wrapped atoms are a box length
MAX_BOND_LENGTH = 4.0  # Angstrom; covalent bonds are < 2, a bond cut by the box is ~ a box length


def split_frames(num_frames: int, fractions: Sequence[float], where: str = "split") -> dict[str, tuple[int, int]]:
    """Consecutive [start, stop) windows of ``num_frames`` frames for train, valid and test."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise StoreError(f"{where}: expected three fractions >= 0 summing to 1 (train, valid, test), got {list(fractions)}")
    edges = np.round(np.cumsum([0.0, *fractions]) * num_frames).astype(int)
    edges[-1] = num_frames
    windows = {split: (int(edges[i]), int(edges[i + 1])) for i, split in enumerate(SPLITS)}
    empty = [split for split, (start, stop) in windows.items() if stop <= start]
    if empty:
        raise StoreError(f"{where}: {list(fractions)} of {num_frames} frames leaves no frame for {empty}")
    return windows


def _universe(topology: Path, trajectory: Path) -> Any:
    require("md", "converting molecular dynamics")
    import MDAnalysis as mda  # imported here: the rest of scaleq does not need it

    for path in (topology, trajectory):
        if not path.is_file():
            raise StoreError(f"{path}: file not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # MDAnalysis warns about every attribute a format lacks
            return mda.Universe(str(topology), str(trajectory))
    except Exception as err:  # MDAnalysis raises many types for unreadable input
        raise StoreError(f"{topology} + {trajectory}: MDAnalysis cannot read them ({type(err).__name__}: {err})") from err


def _select(universe: Any, selection: str, topology: Path) -> Any:
    try:
        atoms = universe.select_atoms(selection)
    except Exception as err:
        raise StoreError(f"{topology}: bad atom selection {selection!r} ({err})") from err
    if atoms.n_atoms == 0:
        raise StoreError(f"{topology}: atom selection {selection!r} matches no atoms")
    return atoms


def _node_features(universe: Any, atoms: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """[N, 3] charge, atomic number, type code; and what the codes mean."""
    from MDAnalysis.guesser.tables import SYMB2Z

    info: dict[str, Any] = {}
    has_charges = hasattr(universe.atoms, "charges")
    charges = np.asarray(atoms.charges, np.float64) if has_charges else np.zeros(atoms.n_atoms)
    info["charges"] = "topology" if has_charges else "absent (zeros)"
    if not hasattr(universe.atoms, "elements") or not all(atoms.elements):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            universe.guess_TopologyAttrs(to_guess=["elements"], force_guess=["elements"])
        info["elements"] = "guessed"
    else:
        info["elements"] = "topology"
    symbols = [str(e).strip().capitalize() for e in atoms.elements]
    element = np.array([SYMB2Z.get(s, 0) for s in symbols], np.float64)  # 0: unknown element
    types = [str(t) for t in atoms.types] if hasattr(universe.atoms, "types") else ["?"] * atoms.n_atoms
    vocabulary = sorted(set(types))
    codes = {t: i for i, t in enumerate(vocabulary)}
    info["type_codes"] = vocabulary
    features = np.stack([charges, element, np.array([codes[t] for t in types], np.float64)], axis=1)
    return features, info


def _bonds(atoms: Any) -> tuple[np.ndarray, str]:
    """Bonds among the selected atoms as local index pairs [B, 2]; guessed when the topology has none."""
    source = "topology"
    if not hasattr(atoms.universe.atoms, "bonds"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            atoms.guess_bonds()
        source = "guessed from distances in the first frame"
    pairs = atoms.intra_bonds.indices if len(atoms.intra_bonds) else np.zeros((0, 2), np.int64)
    local = np.searchsorted(atoms.indices, pairs)  # atoms.indices is sorted: AtomGroups from selections are
    return local.astype(np.int64), source


def _make_continuous(universe: Any, atoms: Any) -> str:
    """Add unwrap + NoJump to the trajectory when it has a periodic box; what was done, in words."""
    from MDAnalysis.exceptions import NoDataError
    from MDAnalysis.transformations import unwrap
    from MDAnalysis.transformations.nojump import NoJump

    box = universe.dimensions
    if box is None or not np.all(np.asarray(box[:3]) > 0):
        return "none: the trajectory has no periodic box"
    steps = []
    try:
        transformations = [unwrap(atoms)]  # needs bonds: from the topology or guessed (see _bonds)
        steps.append("molecules made whole (unwrap)")
    except NoDataError:
        transformations = []
    transformations.append(NoJump())
    steps.append("jumps across the box removed (NoJump)")
    universe.trajectory[0]  # NoJump starts from frame 0
    universe.trajectory.add_transformations(*transformations)
    return ", ".join(steps)


def _read_positions(universe: Any, atoms: Any, stride: int, num_stored: int, progress: bool) -> np.ndarray:
    """Every stride-th frame of the selected atoms, read in order (NoJump needs every frame, in
    order). Shape: [num_stored, N, 3]."""
    positions = np.empty((num_stored, atoms.n_atoms, 3), np.float32)
    with warnings.catch_warnings(), tqdm(total=num_stored, desc="frames", unit="frame", disable=not progress) as bar:
        warnings.simplefilter("ignore")
        for ts in universe.trajectory:
            if ts.frame % stride == 0 and ts.frame // stride < num_stored:
                positions[ts.frame // stride] = atoms.positions
                bar.update(1)
    return positions


def check_plausible(
    positions: np.ndarray,
    bonds: np.ndarray,
    source_frames: np.ndarray,
    atom_ids: np.ndarray,
    where: str,
    *,
    max_displacement: float = MAX_DISPLACEMENT,
    max_bond_length: float = MAX_BOND_LENGTH,
) -> None:
    """Refuse physically impossible frames, naming the atom, the source frame and the limit.

    Shapes:
        positions: [T, N, 3] stored frames; bonds: [B, 2] local atom pairs; source_frames: [T]
        frame numbers in the source; atom_ids: [N] atom indices in the source.
    """
    for k in range(positions.shape[0]):
        if k > 0:
            moved = np.linalg.norm(positions[k] - positions[k - 1], axis=-1)
            i = int(np.argmax(moved))
            if moved[i] > max_displacement:
                raise StoreError(
                    f"{where}: atom {int(atom_ids[i])} moves {moved[i]:.1f} A between source frames "
                    f"{int(source_frames[k - 1])} and {int(source_frames[k])} (limit --max-displacement "
                    f"{max_displacement:g} A): a trajectory wrapped into a periodic box it does not record, "
                    "or frames out of order"
                )
        if len(bonds):
            lengths = np.linalg.norm(positions[k, bonds[:, 0]] - positions[k, bonds[:, 1]], axis=-1)
            b = int(np.argmax(lengths))
            if lengths[b] > max_bond_length:
                i, j = (int(atom_ids[a]) for a in bonds[b])
                raise StoreError(
                    f"{where}: the bond between atoms {i} and {j} is {lengths[b]:.1f} A long in source frame "
                    f"{int(source_frames[k])} (limit --max-bond-length {max_bond_length:g} A): a molecule cut "
                    "by a periodic box the trajectory does not record, or a topology that does not match it"
                )


def convert_md(
    topology: str | os.PathLike[str],
    trajectory: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    selection: str = "backbone",
    stride: int = 1,
    split: Sequence[float] = (0.6, 0.2, 0.2),
    overwrite: bool = False,
    rows_per_chunk: int | None = None,
    chunks_per_shard: int = 64,
    compression: str = "zstd",
    progress: bool = False,
    max_displacement: float = MAX_DISPLACEMENT,
    max_bond_length: float = MAX_BOND_LENGTH,
) -> dict[str, Path]:
    """Convert an MD trajectory into ``out_dir/{train,valid,test}.zarr``, split in time.

    Every ``stride``-th frame of the selected atoms is kept; ``split`` gives the train / valid /
    test fractions of those frames, in time order. The store attributes record the selection,
    stride, split windows (in source frame numbers), the source files, dt (ps between stored
    frames) and what the feature codes mean. All splits are written or none. Periodic
    trajectories are made whole and continuous first, and every stored frame is checked against
    ``max_displacement`` and ``max_bond_length`` (Angstrom; see the module docstring).
    """
    topology, trajectory = Path(topology), Path(trajectory)
    if stride < 1:
        raise StoreError(f"stride must be >= 1, got {stride}")
    if not (max_displacement > 0 and max_bond_length > 0):
        raise StoreError(f"max_displacement and max_bond_length must be > 0, got {max_displacement}, {max_bond_length}")
    universe = _universe(topology, trajectory)
    atoms = _select(universe, selection, topology)
    features, feature_info = _node_features(universe, atoms)
    bonds, bond_source = _bonds(atoms)  # before unwrapping: unwrap follows the bonds
    periodic = _make_continuous(universe, atoms)
    reader = universe.trajectory
    frame_ids = np.arange(0, reader.n_frames, stride)
    windows = split_frames(len(frame_ids), split, f"{trajectory}: split")
    source_dt = float(reader.dt) if reader.n_frames > 1 else 1.0
    if not source_dt > 0:
        raise StoreError(f"{trajectory}: the trajectory's time step is {source_dt} ps; expected > 0")
    extra = {
        "topology": str(topology.resolve()),
        "trajectory": str(trajectory.resolve()),
        "selection": selection,
        "stride": stride,
        "source_frames": int(reader.n_frames),
        "source_dt": source_dt,
        "units": {"length": "Angstrom", "time": "ps"},
        "split": {
            "order": "time",
            "fractions": [float(f) for f in split],
            # [first, last + 1) source frame numbers of each split (stored frames are every stride-th)
            "source_frames": {s: [int(frame_ids[a]), int(frame_ids[b - 1]) + 1] for s, (a, b) in windows.items()},
            "stored_frames": {s: [a, b] for s, (a, b) in windows.items()},
        },
        "atom_indices": atoms.indices.tolist(),
        "bonds": bond_source,
        "periodic": periodic,
        **feature_info,
    }
    options = {"rows_per_chunk": rows_per_chunk, "chunks_per_shard": chunks_per_shard, "compression": compression}
    edge_index = np.concatenate([bonds.T, bonds.T[::-1]], axis=1)  # both directions, j -> i
    all_positions = _read_positions(universe, atoms, stride, len(frame_ids), progress)
    check_plausible(all_positions, bonds, frame_ids, atoms.indices, f"{topology} + {trajectory}",
                    max_displacement=max_displacement, max_bond_length=max_bond_length)
    with staged_dataset(out_dir, SPLITS, overwrite) as staging:
        for name, (start, stop) in windows.items():
            positions = all_positions[start:stop]
            first = positions[0]
            lengths = np.linalg.norm(first[edge_index[1]] - first[edge_index[0]], axis=-1, keepdims=True)
            attrs = StoreAttrs(
                kind="md",
                dim=3,
                dt=source_dt * stride,
                frame_stride=stride,
                feature_names=FEATURE_NAMES,
                edge_feature_names=["bond_length"],
                provenance=default_provenance(f"MDAnalysis: {topology.name} + {trajectory.name}"),
                extra={**extra, "this_split": name},
            )
            with StoreWriter(staging[name], attrs, **options) as writer:
                writer.add(Trajectory(positions=positions, node_features=features, edge_index=edge_index,
                                      edge_attr=lengths))
    return {name: Path(out_dir) / f"{name}.zarr" for name in SPLITS}
