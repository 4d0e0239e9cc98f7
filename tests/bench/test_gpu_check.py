"""`make gpu-check` in its CPU form: every part runs, in order, in its own process (CI has no GPU,
so this is what keeps the GPU check working)."""

import csv
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.deepspeed
def test_gpu_check_runs_every_part_on_the_cpu(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)  # the parts name launch/ and configs/ relative to the checkout, as make does
    sys.path.insert(0, str(ROOT / "launch"))
    try:
        import gpu_check
    finally:
        sys.path.pop(0)
    code = gpu_check.main(["--device", "cpu", "--quick", "--budget-s", "900", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    rows = {r["part"]: r for r in csv.DictReader((tmp_path / "gpu_check.csv").open())}
    assert list(rows) == ["pytest", "bench_gpu", "large_graph", "deepspeed", "profile"], printed
    assert code == 0, printed
    assert rows["pytest"]["status"] == "skipped" and "skipped" in rows["pytest"]["detail"]  # no CUDA: gpu tests skip
    assert all(rows[p]["status"] == "pass" for p in ("bench_gpu", "large_graph", "deepspeed", "profile")), printed
    assert rows["deepspeed"]["needs_cuda"] == "False" and rows["profile"]["needs_cuda"] == "True"
    # the DeepSpeed run trained FastEGNN and its epoch line explains the total by its parts
    assert "train loss" in rows["deepspeed"]["detail"] and "+ 0.01 x mmd" in rows["deepspeed"]["detail"]
    assert "egnn 500: ok" in rows["large_graph"]["detail"] and "fastegnn 500: ok" in rows["large_graph"]["detail"]
    profile = list(csv.DictReader((tmp_path / "profile_cpu.csv").open()))
    assert {r["model"] for r in profile} == {"egnn", "fastegnn"}
    assert {r["name"] for r in profile if r["kind"] == "count per step"} == {"stream_syncs", "dtoh_copies", "scalar_reads"}
    for name in ("gpu_cpu.csv", "gpu_cpu.png", "large_graph.csv", "gpu_check_logs/deepspeed.log"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert "needs CUDA" in printed and "4 pass, 0 fail, 1 skipped" in printed
