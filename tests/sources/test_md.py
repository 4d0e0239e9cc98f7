import importlib.util
import warnings
from pathlib import Path

import MDAnalysis as mda
import numpy as np
import pytest
from MDAnalysisTests.datafiles import DCD, GRO, PSF, XTC

from scaleq.data.dataset import SampleSpec, TrajectoryDataset
from scaleq.sources.md import convert_md, split_frames
from scaleq.store.format import StoreError
from scaleq.store.reader import open_store


def _universe(top, trj):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mda.Universe(top, trj)


@pytest.fixture(scope="module")
def adk(tmp_path_factory):
    out = tmp_path_factory.mktemp("adk")
    return convert_md(PSF, DCD, out)


def test_adk_backbone_split_in_time(adk):
    u = _universe(PSF, DCD)
    backbone = u.select_atoms("backbone")
    stores = {name: open_store(path) for name, path in adk.items()}
    frames = {name: store.num_frames(0) for name, store in stores.items()}
    assert frames == {"train": 59, "valid": 19, "test": 20}  # 98 frames, 0.6 / 0.2 / 0.2, consecutive
    starts = {"train": 0, "valid": 59, "test": 78}
    for name, store in stores.items():
        assert store.num_trajectories == 1 and store.num_nodes(0) == 855
        split = store.attrs.extra["split"]
        assert split["source_frames"][name] == [starts[name], starts[name] + frames[name]]
        assert split["order"] == "time" and split["fractions"] == [0.6, 0.2, 0.2]
        assert store.attrs.dt == pytest.approx(u.trajectory.dt)
        for t in (0, frames[name] - 1):
            u.trajectory[starts[name] + t]
            np.testing.assert_array_equal(store.frames(0, [t])[0], backbone.positions)


def test_adk_features_and_bonds(adk):
    u = _universe(PSF, DCD)
    backbone = u.select_atoms("backbone")
    store = open_store(adk["valid"])
    assert store.attrs.feature_names == ["charge", "element", "type"]
    feats = store.node_features(0)
    np.testing.assert_array_equal(feats[:, 0], backbone.charges.astype(np.float32))
    by_name = {"N": 7, "CA": 6, "C": 6, "O": 8}
    expected = [by_name.get(n, 8 if n.startswith("O") else -1) for n in backbone.names]
    np.testing.assert_array_equal(feats[:, 1], expected)
    codes = store.attrs.extra["type_codes"]
    assert [codes[int(c)] for c in feats[:, 2]] == list(backbone.types)

    edge_index, edge_attr = store.edges(0)
    bonds = backbone.intra_bonds.indices
    assert edge_index.shape == (2, 2 * len(bonds)) and len(bonds) == 854
    pairs = {tuple(p) for p in backbone.indices[edge_index.T]}
    assert pairs == {tuple(b) for b in bonds} | {tuple(b[::-1]) for b in bonds}
    u.trajectory[59]  # the valid split's first frame
    pos = backbone.positions
    np.testing.assert_allclose(edge_attr[:, 0], np.linalg.norm(pos[edge_index[1]] - pos[edge_index[0]], axis=-1), rtol=1e-6)
    assert 1.0 < edge_attr.min() and edge_attr.max() < 1.7  # backbone bonds, Angstrom


def test_adk_statistics_match_the_data(adk):
    store = open_store(adk["train"])
    pos = store.frames(0, range(store.num_frames(0))).astype(np.float64)
    disp = np.diff(pos, axis=0).reshape(-1, 3)
    np.testing.assert_allclose(store.statistics["displacement"]["std"], disp.std(0), rtol=1e-5)
    np.testing.assert_allclose(store.statistics["position"]["min"], pos.reshape(-1, 3).min(0), rtol=1e-6)


def test_adk_store_feeds_the_protein_samples(adk):
    ds = TrajectoryDataset(adk["train"], SampleSpec(delta=15, velocity="forward"))
    assert len(ds) == 59 - 15  # every frame with a target 15 frames ahead
    sample = ds[3]
    store = open_store(adk["train"])
    np.testing.assert_array_equal(sample.target.numpy(), store.frames(0, [18])[0])
    assert sample.bond_index.shape == (2, 1708) and sample.bond_attr.shape == (1708, 1)
    assert sample.h.shape == (855, 4)


def test_stride_selection_and_split(tmp_path):
    paths = convert_md(PSF, DCD, tmp_path / "ca", selection="name CA", stride=3, split=(0.5, 0.25, 0.25))
    u = _universe(PSF, DCD)
    ca = u.select_atoms("name CA")
    test = open_store(paths["test"])
    assert test.num_nodes(0) == 214 and test.attrs.frame_stride == 3
    assert test.attrs.dt == pytest.approx(3 * u.trajectory.dt)
    assert test.edges(0)[0].shape == (2, 0)  # no bonds between CA atoms
    # 33 stored frames (0, 3, ..., 96): 16 / 9 / 8 (rounded boundaries)
    assert [open_store(p).num_frames(0) for p in paths.values()] == [16, 9, 8]
    assert test.attrs.extra["split"]["source_frames"]["test"] == [75, 97]
    u.trajectory[75]
    np.testing.assert_array_equal(test.frames(0, [0])[0], ca.positions)


def test_gro_xtc_without_charges_or_bonds(tmp_path):
    store = open_store(convert_md(GRO, XTC, tmp_path / "gro", split=(0.4, 0.3, 0.3))["train"])
    assert store.attrs.extra["bonds"].startswith("guessed") and store.attrs.extra["charges"].startswith("absent")
    assert store.num_nodes(0) == 855 and store.edges(0)[0].shape == (2, 2 * 854)
    np.testing.assert_array_equal(store.node_features(0)[:, 0], 0.0)
    assert set(np.unique(store.node_features(0)[:, 1])) == {6.0, 7.0, 8.0}
    assert store.attrs.dt == pytest.approx(100.0, rel=1e-6)


def test_bad_input_is_named_and_leaves_nothing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(StoreError, match="matches no atoms"):
        convert_md(PSF, DCD, out, selection="resname XYZ")
    with pytest.raises(StoreError, match="bad atom selection 'backbone and'"):
        convert_md(PSF, DCD, out, selection="backbone and")
    with pytest.raises(StoreError, match=r"split: expected three fractions >= 0 summing to 1"):
        convert_md(PSF, DCD, out, split=(0.6, 0.3, 0.3))
    with pytest.raises(StoreError, match=r"leaves no frame for \['valid', 'test'\]"):
        convert_md(PSF, DCD, out, split=(0.999, 0.0, 0.001))
    with pytest.raises(StoreError, match="nope.dcd: file not found"):
        convert_md(PSF, tmp_path / "nope.dcd", out)
    assert not out.exists()


def test_split_frames_windows():
    assert split_frames(10, (0.6, 0.2, 0.2)) == {"train": (0, 6), "valid": (6, 8), "test": (8, 10)}
    assert split_frames(4187, (0.6, 0.2, 0.2))["test"] == (3350, 4187)


def test_cli_refuses_existing_stores_unless_overwrite(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("md_cli", Path(__file__).parents[2] / "data_prep" / "md.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    args = ["--topology", PSF, "--trajectory", DCD, "--out", str(tmp_path / "o"), "--stride", "4"]
    assert module.main(args + ["--compression", "none", "--split", "0.5", "0.25", "0.25"]) == 0
    assert module.main(args) == 2
    assert "already exists" in capsys.readouterr().err
    assert open_store(tmp_path / "o" / "train.zarr").num_frames(0) == 12
    assert module.main(args + ["--overwrite"]) == 0
    assert open_store(tmp_path / "o" / "train.zarr").num_frames(0) == 15


def _max_jump_and_bond(positions, edge_index):
    jump = np.linalg.norm(np.diff(positions, axis=0), axis=-1).max()
    bond = np.linalg.norm(positions[:, edge_index[1]] - positions[:, edge_index[0]], axis=-1).max()
    return jump, bond


@pytest.mark.slow
def test_wrapped_gromacs_trajectory_is_made_whole_and_continuous(tmp_path):
    # The shipped solvated AdK XTC is written wrapped into its (triclinic) box, as GROMACS does:
    # backbone atoms jump by a box length between frames.
    u = _universe(GRO, XTC)
    backbone = u.select_atoms("backbone")
    raw = np.stack([backbone.positions.copy() for _ in u.trajectory])
    assert np.linalg.norm(np.diff(raw, axis=0), axis=-1).max() > 40.0

    # The same system moved by half a box and wrapped again: another periodic image of it.
    rewrapped = tmp_path / "rewrapped.xtc"
    with mda.Writer(str(rewrapped), u.atoms.n_atoms) as writer:
        for _ in u.trajectory:
            u.atoms.translate(u.dimensions[:3] / 2)
            u.atoms.wrap(compound="atoms")
            writer.write(u.atoms)

    stores = {}
    for name, trajectory in {"shipped": XTC, "rewrapped": rewrapped}.items():
        store = open_store(convert_md(GRO, trajectory, tmp_path / name, split=(0.4, 0.3, 0.3))["train"])
        assert store.attrs.extra["periodic"].startswith("molecules made whole (unwrap)")
        positions = store.frames(0, range(store.num_frames(0)))
        jump, bond = _max_jump_and_bond(positions, store.edges(0)[0])
        assert jump < 10.0 and bond < 2.0, (name, jump, bond)  # 80 A jumps and bonds before unwrapping
        stores[name] = positions
    # Both images give the same molecule, up to one rigid translation (XTC keeps 0.01 A).
    offset = stores["rewrapped"] - stores["shipped"]
    np.testing.assert_allclose(offset, np.broadcast_to(offset[0, :1], offset.shape), atol=0.05)


def test_physically_impossible_frames_are_refused(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(StoreError, match=r"the bond between atoms \d+ and \d+ is 1\.\d A long in source frame 0 "
                                         r"\(limit --max-bond-length 1 A\)"):
        convert_md(PSF, DCD, out, max_bond_length=1.0)
    with pytest.raises(StoreError, match=r"atom \d+ moves \d\.\d A between source frames \d+ and \d+ "
                                         r"\(limit --max-displacement 0.5 A\)"):
        convert_md(PSF, DCD, out, max_displacement=0.5)
    assert not out.exists()
