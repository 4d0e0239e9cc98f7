"""What a run says before it trains, and what it refuses: the header lists the sizes the run
actually reads and where they came from; generate overrides that disagree with an existing store
exit 2 naming both values (or the stores are regenerated when asked); the saved config.yaml
describes the stores that were read."""

from __future__ import annotations

import pytest
import yaml

from scaleq.config import config_from_dict
from scaleq.run import run
from tests.support.stores import tiny_nbody_dataset
from tests.test_cli_train import BASE, cli, snapshot

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tiny_nbody_dataset(tmp_path_factory.mktemp("header") / "data", train=12, valid=6, test=6)


def raw_config(tmp_path, data, **generate):
    return {
        "name": "h", "out_dir": str(tmp_path / "runs"),
        "data": {"path": str(data), "input_frame": 30, "delta": 10, "velocity": "store", "batch_size": 4,
                 "generate": {"train": 3000, "valid": 2000, "test": 2000, **generate}},
        "model": {"name": "egnn", "hidden": 8, "layers": 1},
        "train": {"epochs": 1, "progress": False},
    }


def test_header_lists_the_sizes_read_and_the_saved_config_describes_the_store(tmp_path, store, capsys):
    summary = run(config_from_dict(raw_config(tmp_path, store)))
    out = capsys.readouterr().out
    header = out[:out.index("\nepoch ")]  # the lines before the first epoch line
    assert f"data     {store} (existing store): train 12 trajectories / 12 samples, valid 6 trajectories / 6 samples, " \
           "test 6 trajectories / 6 samples" in header
    assert "model    egnn (hidden=8, layers=1): " in header and " parameters" in header
    assert "device   cpu, engine torch, 1 rank," in header
    assert f"output   {summary.run_dir}" in header and "resume   no (a new run)" in header
    saved = yaml.safe_load((tmp_path / "runs" / "h" / "config.yaml").read_text())["data"]["generate"]
    assert (saved["train"], saved["valid"], saved["test"], saved["seed"], saved["steps"]) == (12, 6, 6, 7, 5200)


def test_generate_overrides_that_disagree_with_the_store_exit_2_naming_both(tmp_path, store):
    before = snapshot(store)
    result = cli(["--config", "configs/default.yaml", f"data.path={store}", f"out_dir={tmp_path / 'runs'}", *BASE,
                  "data.generate.train=200", "data.generate.valid=6"])
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(errors) == 1 and "Traceback" not in result.stderr
    assert "data.generate.train=200 (the store has 12)" in errors[0] and "valid" not in errors[0], errors[0]
    assert "--regenerate-data" in errors[0]
    assert snapshot(store) == before and not (tmp_path / "runs").exists()


def test_regenerate_data_replaces_the_stores_with_what_was_asked(tmp_path, store):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(store, data)
    result = cli(["--config", "configs/default.yaml", f"data.path={data}", f"out_dir={tmp_path / 'runs'}", *BASE,
                  "data.generate.train=5", "data.generate.valid=3", "data.generate.test=3",
                  "--regenerate-data"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "(generated now): train 5 trajectories" in result.stdout
