import pytest
import torch

from scaleq.bench.models import Workload, random_particles, run_variants, step_times, table1_variants


def test_workload_radius_gives_about_the_asked_neighbours():
    work = Workload(graphs=1, nodes=4000, neighbours=20.0)
    pos = random_particles(work).pos
    inner = ((pos > work.radius) & (pos < 1 - work.radius)).all(-1)  # away from the walls
    degree = ((torch.cdist(pos[inner], pos) < work.radius).sum(-1) - 1).double().mean()
    assert 17 < degree < 23


def test_variants_run_on_the_same_batch_with_their_edge_budgets():
    work = Workload(graphs=2, nodes=150, neighbours=10.0, hidden=8, layers=1, repeats=1)
    variants = table1_variants(virtual_nodes=2)
    assert [v.label for v in variants] == [
        "EGNN", "EGNN*", "FastEGNN-<2,0.00>", "FastEGNN-<2,0.50>", "FastEGNN-<2,0.75>", "FastEGNN-<2,1.00>",
    ]
    results = step_times(variants, work)
    edges = [e for e, _ in results]
    full = edges[0]
    assert edges[1] == 0 and edges[2] == full and edges[5] == 0
    assert full // 2 - 2 <= edges[3] <= full // 2 and full // 4 - 2 <= edges[4] <= full // 4
    assert all(ms > 0 for _, ms in results)


@pytest.mark.slow
def test_peak_memory_sees_the_edge_messages():
    """Each variant is measured in a fresh process: EGNN's pass holds at least its [E, H] messages,
    EGNN* (no edges) much less."""
    work = Workload(graphs=1, nodes=1500, neighbours=20.0, hidden=64, layers=2, repeats=1)
    rows = run_variants(table1_variants()[:2], work)
    egnn, egnn_star = rows
    message_mb = egnn["edges"] * work.hidden * 4 / 2**20  # one float32 message tensor
    assert egnn["edges"] > 20_000 and egnn_star["edges"] == 0
    assert egnn["peak_mb"] > message_mb
    assert egnn_star["peak_mb"] < egnn["peak_mb"] - message_mb
