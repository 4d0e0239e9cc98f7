import math

import pytest
import torch

from scaleq.config import config_from_dict
from scaleq.experiments.depth_sweep import (
    accuracy_sweep,
    accuracy_table,
    diagnostics_run,
    memory_sweep,
    memory_table,
    model_section,
    plot_sweep,
)
from tests.support.stores import tiny_nbody_dataset


@pytest.fixture(scope="module")
def nbody(tmp_path_factory):
    return tiny_nbody_dataset(tmp_path_factory.mktemp("nbody"), train=32, valid=16, test=16)


def sweep_config(data_path, **model):
    return config_from_dict({
        "seed": 0,
        "data": {"path": str(data_path), "input_frame": 30, "delta": 10, "velocity": "store", "batch_size": 16},
        "model": {"name": "dusego", "hidden": 8, "layers": 4, "dt": 0.5, "alpha": 1.0, **model},
        "train": {"epochs": 2, "eval_every": 1, "progress": False, "device": "cpu"},
    })


def test_model_section_keeps_what_each_model_accepts(tmp_path):
    config = sweep_config(tmp_path, sigma="identity")
    assert model_section(config, "egnn", 12) == {"name": "egnn", "hidden": 8, "layers": 12, "gradient_checkpointing": 0}
    dusego = model_section(config, "dusego", 3, checkpointing=1)
    assert dusego["sigma"] == "identity" and dusego["layers"] == 3 and dusego["gradient_checkpointing"] == 1


@pytest.mark.slow
def test_accuracy_sweep_trains_both_models_at_each_depth(tmp_path, nbody):
    rows = accuracy_sweep(sweep_config(nbody), depths=[2, 3], deltas=[10, 20], out_dir=tmp_path)
    assert {(r["model"], r["layers"], r["delta"]) for r in rows} == {
        (k, d, t) for k in ("egnn", "dusego") for d in (2, 3) for t in (10, 20)}
    assert all(math.isfinite(r["test_mse"]) and r["test_mse"] > 0 for r in rows)
    table = accuracy_table(rows)
    assert "1000 ts" in table and "2000 ts" in table and "DuSEGO-EGNN-layers=3" in table
    plot_sweep(rows, [], tmp_path / "sweep.png")
    assert (tmp_path / "sweep.png").stat().st_size > 0


def test_table_reports_diverged_runs_as_nan():
    rows = [{"model": "egnn", "layers": 12, "delta": 10, "test_mse": math.nan},
            {"model": "dusego", "layers": 12, "delta": 10, "test_mse": 0.00662}]
    lines = accuracy_table(rows).splitlines()
    assert lines[2].split() == ["EGNN-layers=12", "NaN"]
    assert lines[3].split() == ["DuSEGO-EGNN-layers=12", "6.62"]


@pytest.mark.slow
def test_memory_sweep_measures_each_variant(tmp_path, nbody):
    rows = memory_sweep(sweep_config(nbody, hidden=256), depths=[2, 8], graphs=32, device=torch.device("cpu"))
    peak = {(r["model"], r["layers"], r["checkpointing"]): r["peak_mib"] for r in rows}
    assert set(peak) == {(k, d, c) for k in ("egnn", "dusego") for d in (2, 8) for c in (0, 1)}
    message_mib = 32 * 5 * 4 * 256 * 4 / 2**20  # one [E, H] float32 tensor: 32 complete 5-body graphs, H = 256
    for kind in ("egnn", "dusego"):
        assert peak[kind, 2, 0] > message_mib  # a pass holds at least its messages
        assert peak[kind, 8, 0] > peak[kind, 2, 0] + 3 * message_mib  # six more layers keep their activations
        assert peak[kind, 8, 1] < peak[kind, 8, 0]  # checkpointing keeps fewer
    assert "dusego + checkpointing" in memory_table(rows)


@pytest.mark.slow
def test_diagnostics_before_and_after_training(tmp_path, nbody):
    energies, gradients = diagnostics_run(sweep_config(nbody), layers=3, alphas=[0.0, 1.0], epochs=1, graphs=4,
                                          out_dir=tmp_path)
    names = {"EGNN", "DuSEGO-EGNN alpha=0", "DuSEGO-EGNN alpha=1"}
    assert {(r["model"], r["stage"]) for r in energies} == {(n, s) for n in names for s in ("init", "trained")}
    assert len(energies) == len(gradients) == 3 * 2 * 4
    assert all(r["energy_x"] > 0 for r in energies)
