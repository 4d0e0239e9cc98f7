"""The strong-scaling table's arithmetic (the timed runs themselves are a benchmark, not a test)."""

import pytest

from scaleq.bench.graph_parallel import summarise


def test_summary_row_takes_the_slowest_rank_and_counts_halo_traffic():
    cfg = {"particles": 100, "hidden": 61}  # 61 + 3 = 64 values per halo row and layer
    reports = [
        {"step_s": 1.0, "edges": 600, "halo_rows": 2048, "peak_mb": 900.0, "growth_mb": 50.0, "saved_mb": 7.0},
        {"step_s": 1.25, "edges": 400, "halo_rows": 2048, "peak_mb": 950.0, "growth_mb": 40.0, "saved_mb": 6.0},
    ]
    row = summarise(2, reports, cfg, base=(1, 2.0))
    assert row["step_s"] == 1.25 and row["edges"] == 1000
    assert row["speedup"] == pytest.approx(1.6) and row["efficiency"] == pytest.approx(0.8)
    assert row["halo_mb_per_layer"] == pytest.approx(4096 * 64 * 4 / 2**20)  # 1 MB
    assert row["halo_rows_per_rank"] == 2048 and row["growth_mb_per_rank"] == 50.0 and row["peak_mb_per_rank"] == 950.0
    assert row["saved_mb_per_rank"] == 7.0
