"""Keys that cannot run together fail when the config loads: one ConfigError naming both keys and
the file, from load_config and from the real CLI (exit 2, one `error:` line, no traceback), before
any dataset is generated or any run directory is made."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from scaleq.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]

# (name, key=value changes to a config that runs, the message the error must match)
CASES = [
    ("input_frame with starts_per_trajectory", ["data.starts_per_trajectory=2"],
     r"data\.input_frame \(30\) and data\.starts_per_trajectory \(2\) exclude each other"),
    ("input_frame before the frame a backward velocity needs", ["data.velocity=backward", "data.input_frame=0"],
     r"data\.input_frame must be >= 1 with data\.velocity 'backward', got 0"),
    ("more training trajectories than drawn", ["data.generate.train_drawn=3"],
     r"data\.generate\.train_drawn \(3\) must be >= data\.generate\.train \(4\)"),
    ("connectivity loss under graph parallelism", ["loss.connectivity_weight=1", "engine.graph_parallel=2"],
     r"loss\.connectivity_weight = 1\.0 is not supported with engine\.graph_parallel = 2"),
]


def good_config(root: Path) -> dict:
    """A config that trains (in seconds) on a dataset it generates under ``root``."""
    return {
        "name": "combo", "out_dir": str(root / "runs"),
        "data": {"path": str(root / "data"), "input_frame": 30, "delta": 10, "velocity": "store", "batch_size": 2,
                 "generate": {"particles": 5, "train": 4, "valid": 2, "test": 2, "steps": 5000}},
        "model": {"name": "egnn", "hidden": 8, "layers": 1},
        "train": {"epochs": 1, "progress": False},
    }


def write_config(root: Path, changes: list[str]) -> Path:
    """``good_config`` with ``changes`` (dotted key=value) written into the file itself."""
    raw = good_config(root)
    for change in changes:
        key, _, text = change.partition("=")
        *sections, last = key.split(".")
        node = raw
        for section in sections:
            node = node.setdefault(section, {})
        node[last] = yaml.safe_load(text)
    path = root / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_the_base_config_is_valid(tmp_path):
    assert load_config(write_config(tmp_path, [])).data.input_frame == 30  # so each case fails by its change alone


@pytest.mark.parametrize("changes, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_load_config_names_both_keys(tmp_path, changes, message):
    path = write_config(tmp_path, changes)
    with pytest.raises(ConfigError, match=rf"^{path}: .*{message}") as caught:
        load_config(path)
    assert "\n" not in str(caught.value)


@pytest.mark.slow
@pytest.mark.parametrize("changes, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_cli_refuses_before_making_anything(tmp_path, changes, message):
    path = write_config(tmp_path, changes)
    result = subprocess.run([sys.executable, "launch/train.py", "--config", str(path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert len(errors) == 1 and re.search(rf"^error: {path}: .*{message}", errors[0]), result.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]  # no dataset generated, no run directory

