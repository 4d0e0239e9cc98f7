"""The Python API as docs/api.md shows it: the page's code block runs as written, in a directory
holding a small trained runs/default; a run loads from any directory (its relative data path is
read against where it was started); a rollout of a one-trajectory store works with defaults."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from scaleq.config import config_from_dict
from scaleq.run import run
from tests.support.stores import tiny_nbody_dataset

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def train_tiny(project: Path, data: str, monkeypatch, **generate_counts) -> Path:
    """A 2-epoch EGNN run started in ``project`` as runs/default, its data path relative."""
    tiny_nbody_dataset(project / data, **generate_counts)
    monkeypatch.chdir(project)
    summary = run(config_from_dict({
        "name": "default", "out_dir": "runs",
        "data": {"path": data, "input_frame": 30, "delta": 10, "velocity": "store", "batch_size": 8},
        "model": {"name": "egnn", "hidden": 8, "layers": 1},
        "train": {"epochs": 2, "eval_every": 1, "progress": False},
    }))
    return Path(summary.run_dir).resolve()


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("project")
    try:
        train_tiny(root, "data/tiny", mp, train=12, valid=6, test=6)
    finally:
        mp.undo()
    return root


def doc_snippet() -> str:
    text = (ROOT / "docs" / "api.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 1, "docs/api.md should hold one python block"
    return blocks[0]


def test_the_docs_snippet_runs_as_written(project, monkeypatch, capsys):
    monkeypatch.chdir(project)
    namespace: dict = {}
    exec(compile(doc_snippet(), "docs/api.md", "exec"), namespace)
    out = capsys.readouterr().out
    assert "egnn" in out and "torch.Size([5, 3]) torch.Size([20, 3])" in out
    assert namespace["result"].model.pos.shape == (3, 15, 3)  # 3 trajectories of 5 bodies, steps 0..2
    metrics = namespace["run"].metrics("test")
    assert set(metrics) == {"mse", "constant_velocity_mse", "linear_mse"} and metrics["mse"] > 0


def test_scaleq_names_the_api_and_a_run_loads_from_anywhere(project, tmp_path, monkeypatch):
    import scaleq
    from scaleq.eval import load_run

    assert scaleq.load_run is load_run
    monkeypatch.chdir(tmp_path)  # not where the run was started: data/tiny is not here
    loaded = scaleq.load_run(project / "runs" / "default")
    assert Path(loaded.config.data.path) == project / "data" / "tiny"
    assert loaded.predict(loaded.datasets["valid"][0]).shape == (5, 3)


def test_rollout_of_a_one_trajectory_store_works_with_defaults(tmp_path, monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("rollout_cli", ROOT / "launch" / "rollout.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    run_dir = train_tiny(tmp_path, "data/one", monkeypatch, train=1, valid=1, test=1)
    assert cli.main(["--run", str(run_dir), "--animation", "none"]) == 0
    assert "test trajectories [0] from frame" in capsys.readouterr().out
