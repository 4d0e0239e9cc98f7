"""launch/reproduce.py end to end on a tiny profile: data made, every row trained through
launch/train.py, the table and its plot written, finished runs not rerun, a lost result resumed."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from scaleq.papers.reproduce import Plan, train_command
from scaleq.papers.tables import TABLES

REPO = Path(__file__).resolve().parents[2]


def _reproduce(tmp_path: Path, *extra: str) -> str:
    cmd = [sys.executable, str(REPO / "launch" / "reproduce.py"), "dusego-t2", "--profile", "smoke", "--seeds", "0",
           "1", "--runs", str(tmp_path / "runs"), "--data", str(tmp_path / "data"), "--results",
           str(tmp_path / "results.md"), *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env={"OMP_NUM_THREADS": "1",
                          "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HOME": str(tmp_path)}, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _attempts(run_dir: Path) -> int:
    return len(json.loads((run_dir / "reproduce.json").read_text())["attempts"])


@pytest.mark.slow
def test_reproduce_end_to_end(tmp_path):
    out = _reproduce(tmp_path, "--budget", "0.5")
    assert "budget 0.5" in out
    runs = tmp_path / "runs" / "dusego-t2" / "smoke-b0.5"
    finished = sorted(p.name for p in runs.iterdir() if (p / "summary.json").is_file())
    assert finished == [f"{m}-l{d}-s{s}" for m in ("dusego", "egnn") for d in (4, 8) for s in (0, 1)]
    summary = json.loads((runs / "egnn-l4-s0" / "summary.json").read_text())
    assert summary["epochs_run"] == 2  # 4 epochs at budget 0.5
    text = (tmp_path / "results.md").read_text()
    assert "<!-- reproduce:dusego-t2:smoke-b0.5 begin -->" in text and "Budget 0.5" in text
    row = next(line for line in text.splitlines() if line.startswith("| 4 | EGNN |"))
    ours = row.split("|")[4].strip()
    assert "+-" in ours and ours.split()[0] != "NaN"  # a mean and a spread over the two seeds
    assert (tmp_path / "results_dusego-t2_smoke-b0.5.png").stat().st_size > 0

    # again: nothing is retrained; a run whose summary is gone is resumed from its checkpoint
    (runs / "dusego-l8-s1" / "summary.json").unlink()
    _reproduce(tmp_path, "--budget", "0.5")
    assert _attempts(runs / "egnn-l4-s0") == 1
    assert _attempts(runs / "dusego-l8-s1") == 2
    log = (runs / "logs" / "dusego-l8-s1.log").read_text()
    assert "resumed" in log or "resume" in log
    assert json.loads((runs / "dusego-l8-s1" / "summary.json").read_text())["epochs_run"] == 2

    # a report of some rows: only those rows, and the printed command names them
    out = _reproduce(tmp_path, "--budget", "0.5", "--rows", "egnn-l4", "dusego-l4", "--report")
    assert "--seeds 0 1 --budget 0.5 --rows egnn-l4 dusego-l4" in out
    assert "| 4 | EGNN |" in out and "| 8 |" not in out


def test_train_command_scales_epochs_and_names_the_run(tmp_path):
    table = TABLES["dusego-t2"]
    plan = Plan(table, "cpu", (3,), 0.25, tmp_path / "runs", tmp_path / "data")
    cmd = train_command(plan, table.row("dusego-l12"), 3)
    assert "--resume-or-start" in cmd and "model.layers=12" in cmd and "seed=3" in cmd
    assert "train.epochs=15" in cmd  # 60 * 0.25
    assert f"out_dir={tmp_path / 'runs' / 'dusego-t2' / 'cpu-b0.25'}" in cmd
    assert "name=dusego-l12-s3" in cmd


def test_every_row_config_loads():
    from scaleq.config import load_config
    from scaleq.models import check_buildable

    for table in TABLES.values():
        for profile in table.profiles.values():
            for row in table.rows:
                if row.config is not None:
                    check_buildable(load_config(REPO / row.config, [*profile.overrides, *row.overrides]))
