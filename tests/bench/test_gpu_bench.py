import csv
import sys
from pathlib import Path

import pytest
import torch

from scaleq.bench.gpu import compare_edges

ROOT = Path(__file__).resolve().parents[2]


def test_compare_edges_tells_boundary_pairs_from_real_differences():
    pos = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 0.5]])
    full = torch.tensor([[1, 0, 2, 0], [0, 1, 0, 2]])
    assert compare_edges(full, full[:, [2, 3, 0, 1]], pos, 1.0) == "exact"
    assert compare_edges(full[:, 2:], full, pos, 1.0) == "boundary (2 pairs)"  # the pair at distance exactly r
    assert compare_edges(full[:, :2], full, pos, 1.0) == "MISMATCH (2 pairs)"


@pytest.mark.slow
def test_bench_gpu_runs_in_cpu_mode(tmp_path):
    sys.path.insert(0, str(ROOT / "launch"))
    try:
        import bench_gpu
    finally:
        sys.path.pop(0)
    assert bench_gpu.main(["--device", "cpu", "--quick", "--out", str(tmp_path)]) == 0
    rows = list(csv.DictReader((tmp_path / "gpu_cpu.csv").open()))
    assert (tmp_path / "gpu_cpu.png").stat().st_size > 0
    graphs = [r for r in rows if r["part"] == "radius_graph"]
    assert {r["variant"] for r in graphs} == {"torch_cluster", "cell_list (torch)"}
    assert all(r["agree"] == "exact" and int(r["edges"]) > 0 for r in graphs)
    steps = [r for r in rows if r["part"] == "train_step"]
    assert {(r["variant"], r["precision"]) for r in steps} >= {("EGNN", "bf16"), ("FastEGNN-<3,0.75>", "fp32")}
    for r in steps:
        assert float(r["edge_layers_per_s"]) > 0
        if r["model"] == "reference":
            assert float(r["ratio_to_reference"]) == 1.0
    assert all(r["torch"] == torch.__version__ and r["device"] for r in rows)
