"""Graph parallelism is exact: R = 2 and 4 gloo ranks splitting every graph give the outputs, loss
and parameter gradients of one process (fp64, 1e-10), for EGNN, FastEGNN with the MMD loss,
DuSEGO, and with 'random' and 'shortest' edge dropping; and a short training run on a 2 x 2 grid
(graph-parallel x data-parallel) ends with the single-process run's metrics."""

import json

import pytest
import torch

from scaleq.distributed.process_group import free_port
from scaleq.distributed.spawn import spawn
from scaleq.train.metrics import read_metrics
from tests.distributed.conftest import tiny_raw
from tests.support.graph_parallel import (
    CASES,
    GRAPH_SIZES,
    assemble,
    graph_parallel_cases,
    run_case,
    train_rank,
)

pytestmark = pytest.mark.slow
TOL = {"atol": 1e-10, "rtol": 1e-10}


@pytest.fixture(scope="module")
def references():
    return {name: run_case(name) for name in CASES}


@pytest.mark.parametrize("world_size", [2, 4])
def test_graph_parallel_ranks_match_one_process(world_size, tmp_path, references):
    spawn(graph_parallel_cases, world_size, free_port(), list(CASES), str(tmp_path))
    _compare(references, world_size, tmp_path)


@pytest.mark.deepspeed
def test_graph_parallel_under_deepspeed_matches_one_process(tmp_path):
    """DeepSpeed reduces fp32 gradients only: fp32, to rounding."""
    names = ["fastegnn_mmd"]
    spawn(graph_parallel_cases, 2, free_port(), names, str(tmp_path), "deepspeed", "float32")
    _compare({k: run_case(k, dtype=torch.float32) for k in names}, 2, tmp_path, {"atol": 1e-6, "rtol": 1e-4})


def _compare(references, world_size, tmp_path, tol=TOL):
    for name, reference in references.items():
        ranks = [torch.load(tmp_path / f"{name}-{rank}.pt", weights_only=False) for rank in range(world_size)]
        got = assemble(ranks)
        assert torch.equal(got["ids"], torch.arange(sum(GRAPH_SIZES))), name  # every node owned once
        assert sum(r["halo_rows"] for r in ranks) > 0, name  # the split really needed remote rows
        for key, value in reference["nodes"].items():
            torch.testing.assert_close(got["nodes"][key], value, **tol, msg=f"{name}: {key}")
        for rank in ranks:  # per-graph outputs, loss, parts and gradients: the same on every rank
            for key, value in reference["graphs"].items():
                torch.testing.assert_close(rank["graphs"][key], value, **tol, msg=f"{name}: {key}")
            torch.testing.assert_close(rank["loss"], reference["loss"], **tol, msg=f"{name}: loss")
            assert rank["parts"].keys() == reference["parts"].keys()
            for key, value in reference["parts"].items():
                torch.testing.assert_close(rank["parts"][key], value, **tol, msg=f"{name}: {key}")
            assert reference["grads"].keys() <= rank["grads"].keys(), name
            for key in rank["grads"].keys() - reference["grads"].keys():  # DeepSpeed: zeros for unused ones
                assert not rank["grads"][key].any(), f"{name}: grad {key}"
            for key, value in reference["grads"].items():
                torch.testing.assert_close(rank["grads"][key], value, **tol, msg=f"{name}: grad {key}")
        assert any(g.abs().max() > 1e-6 for g in reference["grads"].values())  # gradients that mean something


@pytest.mark.parametrize("accumulation", [1, 3])
def test_training_on_a_two_by_two_grid_ends_with_the_single_process_metrics(tmp_path, nbody_small, accumulation):
    """4 ranks = graph_parallel 2 x 2 data-parallel groups of 4 samples each: the same steps as one
    process on batches of 8 (every graph has 5 nodes, so the mean of the groups' means is the mean).
    With accumulation 3 the 4 micro-batches of an epoch make windows of 3 and 1: DDP exchanges
    gradients in each window's last backward only, the halo exchange in every one."""
    from scaleq.config import config_from_dict
    from scaleq.run import run

    common = {"graph": {"kind": "radius", "radius": 4.0}, "engine": {"gradient_accumulation": accumulation}}
    single = tiny_raw(tmp_path / "one", nbody_small, name="one", epochs=2) | common
    single["data"]["batch_size"] = 8
    summary = run(config_from_dict(single, "<single>"))
    grid = tiny_raw(tmp_path / "grid", nbody_small, name="grid", epochs=2) | common
    grid["data"]["batch_size"] = 4
    grid["engine"] = {"graph_parallel": 2, "gradient_accumulation": accumulation}
    spawn(train_rank, 4, free_port(), grid)

    expected = read_metrics(tmp_path / "one" / "runs" / "one" / "metrics.csv")
    got = read_metrics(tmp_path / "grid" / "runs" / "grid" / "metrics.csv")
    assert len(got) == len(expected) == 2
    for row_got, row_expected in zip(got, expected, strict=True):
        for key in ("train_loss", "val_mse"):
            assert float(row_got[key]) == pytest.approx(float(row_expected[key]), rel=1e-4), key
    grid_summary = json.loads((tmp_path / "grid" / "runs" / "grid" / "summary.json").read_text())
    assert grid_summary["test_mse"] == pytest.approx(summary.test_mse, rel=1e-4)
    assert grid_summary["linear_test_mse"] == pytest.approx(summary.linear_test_mse, rel=1e-6)
