"""Resuming through the real CLI: the run's own config.yaml is what continues; overrides that
leave the checkpoints valid are applied and logged, any other is refused in one line naming each
key with its saved and requested value; a checkpoint that does not fit its config says so (not
"damaged")."""

from __future__ import annotations

import re
import shutil

import pytest
import yaml

from scaleq.launchers.resume_config import RESUMABLE_KEYS
from scaleq.train.metrics import read_metrics
from tests.support.stores import tiny_nbody_dataset
from tests.test_cli_train import BASE, cli, snapshot

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A tiny dataset and a finished one-epoch run made from it, by the CLI."""
    root = tmp_path_factory.mktemp("resume")
    data = tiny_nbody_dataset(root / "data", train=16, valid=8, test=8)
    done = cli(["--config", "configs/default.yaml", f"data.path={data}", f"out_dir={root / 'runs'}", "name=done", *BASE])
    assert done.returncode == 0, done.stderr
    return root


@pytest.fixture
def world(finished, tmp_path):
    shutil.copytree(finished, tmp_path / "w")
    return tmp_path / "w"


def error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def test_a_resume_that_would_change_saved_state_is_refused_naming_each_key(world):
    before = snapshot(world)
    # no --config: the run's config.yaml is the base; only these overrides are asked for
    result = cli([f"out_dir={world / 'runs'}", "name=done", "--resume", "model.hidden=16", "train.lr=0.01",
                  "train.epochs=2"])
    after = snapshot(world)
    errors = error_lines(result)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and len(errors) == 1, result.stderr[-3000:]
    assert re.search(r"done/config\.yaml: --resume cannot change model\.hidden \(saved 8, requested 16\), "
                     r"train\.lr \(saved 0\.001, requested 0\.01\): ", errors[0]), errors[0]
    assert "train.epochs" not in errors[0]  # allowed: not listed among the refused
    assert after == before


def test_overrides_that_keep_the_checkpoints_valid_are_applied_and_logged(world):
    result = cli([f"out_dir={world / 'runs'}", "name=done", "--resume", "train.epochs=2", "train.patience=7"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resume: train.epochs changed from 1 to 2" in result.stdout
    assert "resume: train.patience changed from 100 to 7" in result.stdout
    saved = yaml.safe_load((world / "runs" / "done" / "config.yaml").read_text())
    assert saved["train"]["epochs"] == 2 and saved["train"]["patience"] == 7 and saved["model"]["hidden"] == 8
    assert [r["epoch"] for r in read_metrics(world / "runs" / "done" / "metrics.csv")] == ["1", "2"]


def test_the_config_file_given_again_with_the_same_values_resumes(world):
    # the same file and overrides as the first run (data moved to another path), one more epoch
    moved = world / "moved"
    shutil.move(world / "data", moved)
    result = cli(["--config", "configs/default.yaml", f"data.path={moved}", f"out_dir={world / 'runs'}", "name=done",
                  *BASE, "train.epochs=2", "--resume"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resume: train.epochs changed from 1 to 2" in result.stdout
    assert "resume: data.path changed from" in result.stdout


def test_a_checkpoint_that_does_not_fit_its_config_names_the_tensor(world):
    config = world / "runs" / "done" / "config.yaml"
    raw = yaml.safe_load(config.read_text())
    raw["model"]["hidden"] = 16  # edited by hand after the run
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    result = cli([f"out_dir={world / 'runs'}", "name=done", "--resume", "train.epochs=2"])
    errors = error_lines(result)
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert re.search(r"done/checkpoints/last\.pt: does not fit the model of \S*done/config\.yaml \(tensor '\S+' is "
                     r"\[\d+(, \d+)*\] in the checkpoint, \[\d+(, \d+)*\] in the model\)", errors[0]), errors[0]
    assert "damaged" not in errors[0]


def test_the_resumable_keys_exist_in_the_config():
    from scaleq.config import config_from_dict
    from scaleq.launchers.resume_config import flatten

    keys = set(flatten(config_from_dict({"data": {"path": "x"}}).to_dict()))
    assert RESUMABLE_KEYS <= keys, RESUMABLE_KEYS - keys


def test_resume_with_nothing_to_resume_exits_2_and_makes_nothing(world):
    # a typo in name: --resume must not silently start a full run in a new directory
    before = snapshot(world)
    result = cli([f"out_dir={world / 'runs'}", "name=dnoe", "--config", "configs/default.yaml",
                  f"data.path={world / 'data'}", *BASE, "--resume"])
    errors = error_lines(result)
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(errors) == 1 and "Traceback" not in result.stderr
    assert re.search(r"runs/dnoe: nothing to resume .* --resume-or-start", errors[0]), errors[0]
    assert snapshot(world) == before


def test_resume_or_start_starts_when_there_is_nothing_and_continues_when_there_is(world):
    args = [f"out_dir={world / 'runs'}", "name=fresh", "--config", "configs/default.yaml",
            f"data.path={world / 'data'}", *BASE, "--resume-or-start"]
    first = cli(args)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "nothing to resume" in first.stdout
    second = cli([*args, "train.epochs=2"])
    assert second.returncode == 0, second.stderr[-3000:]
    assert [r["epoch"] for r in read_metrics(world / "runs" / "fresh" / "metrics.csv")] == ["1", "2"]
