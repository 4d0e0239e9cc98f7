import pytest

from scaleq.bench.large_graph import Trial, largest_graph, measure


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
