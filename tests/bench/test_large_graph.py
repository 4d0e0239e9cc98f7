import sys

import pytest

from scaleq.bench.child import call_in_spawned_process, run_child
from scaleq.bench.large_graph import Trial, largest_graph, measure, measure_in_fresh_process


@pytest.mark.parametrize(("model", "path"), [("egnn", "reference"), ("egnn", "torch"), ("egnn", "chunked"),
                                             ("fastegnn", "chunked")])
def test_one_trial_reports_its_graph_memory_and_time(model, path):
    row = measure(Trial(model=model, path=path, nodes=300, hidden=16, layers=2, edge_chunk=256), steps=1)
    kept = 0.25 if model == "fastegnn" else 1.0  # FastEGNN-<3, 0.75> drops 75% of the edges
    assert row["edges"] > 300 * 20 * kept / 2  # about 20 neighbours each (fewer near the cube's faces)
    assert row["peak_mb"] >= 0 and row["step_s"] > 0 and row["saved_mb"] > 0


def test_reference_path_is_refused_for_fastegnn():
    with pytest.raises(ValueError, match="EGNN only"):
        measure(Trial(model="fastegnn", path="reference", nodes=100, hidden=16, layers=1))


@pytest.mark.slow
def test_search_stops_at_the_first_size_over_budget():
    rows = largest_graph(Trial(model="egnn", path="torch", nodes=200, hidden=16, layers=1), budget_mb=1e-6,
                         max_nodes=10_000)
    assert len(rows) == 1 and not rows[0]["fits"] and rows[0]["edges"] > 0


def test_a_failing_child_prints_its_exit_cause_and_the_end_of_its_stderr(capsys):
    """Real failures in real children: an argument the child refuses, and a size no machine holds."""
    rows = largest_graph(Trial(model="fastegnn", path="reference", nodes=100, hidden=16, layers=1), budget_mb=1e6,
                         max_nodes=1000)
    printed = capsys.readouterr().out
    assert len(rows) == 1 and not rows[0]["fits"] and rows[0]["error"] == "error exit code 1"
    assert "failed: error exit code 1" in printed
    assert "ValueError: the reference path exists for EGNN only" in printed  # the child's own last line

    row = measure_in_fresh_process(Trial(model="egnn", path="torch", nodes=10**12, hidden=16, layers=1), steps=0)
    printed = capsys.readouterr().out
    assert row["error"].startswith("out of memory") and row["peak_mb"] is None
    assert "N=1,000,000,000,000 failed: out of memory" in printed and "allocate" in printed


def test_a_child_killed_by_a_signal_is_named():
    child = run_child([sys.executable, "-c", "import os, signal, sys; print('dying', file=sys.stderr); "
                                             "os.kill(os.getpid(), signal.SIGKILL)"])
    assert not child.ok and child.returncode == -9
    assert child.error.startswith("killed by signal 9 (SIGKILL") and "dying" in child.error


def test_a_spawned_child_that_raises_is_reported_not_waited_for():
    with pytest.raises(RuntimeError, match=r"int in a child process failed: ValueError: invalid literal"):
        call_in_spawned_process(int, "not a number", timeout_s=120)
