"""The model section is checked against the model classes (scaleq.models.build.check_buildable)
before a run makes anything: scaleq.config, a leaf, cannot import them."""

import subprocess
import sys
from pathlib import Path

import pytest

from scaleq.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]


def write_config(root: Path) -> Path:
    """A config with a model key EGNN's constructor does not take, on a dataset it would generate."""
    path = root / "bad.yaml"
    path.write_text(
        f"name: bad\nout_dir: {root / 'runs'}\n"
        f"data:\n  path: {root / 'data'}\n  input_frame: 30\n  velocity: store\n"
        "  generate:\n    particles: 5\n    train: 4\n    valid: 2\n    test: 2\n"
        "model:\n  name: egnn\n  depth: 3\n"
        "train:\n  epochs: 1\n  progress: false\n"
    )
    return path


def test_a_run_checks_its_model_keys_before_making_data(tmp_path):
    """run() is what every launcher calls (the CLI, Ray workers, the depth sweep)."""
    from scaleq.train.run import run

    config = load_config(write_config(tmp_path))  # the leaf config module cannot know the key is wrong
    with pytest.raises(ConfigError, match=r"model: unknown key 'depth' for model 'egnn'"):
        run(config)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]  # no dataset, no run directory


@pytest.mark.slow
def test_cli_refuses_a_model_key_the_constructor_does_not_take(tmp_path):
    path = write_config(tmp_path)
    for extra in ([], ["--print-config"]):  # --print-config does not print a config that cannot run
        result = subprocess.run([sys.executable, "launch/train.py", "--config", str(path), *extra], cwd=ROOT,
                                capture_output=True, text=True, timeout=300)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert result.returncode == 2 and result.stdout == "", result.stderr[-3000:]
        assert "Traceback" not in result.stderr and len(errors) == 1, result.stderr[-3000:]
        assert "model: unknown key 'depth' for model 'egnn'" in errors[0]
        assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]
