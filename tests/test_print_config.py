import subprocess
import sys
from pathlib import Path

import yaml

from scaleq.config import config_from_dict, load_config
from scaleq.models.build import constructor_types, model_class, model_defaults

ROOT = Path(__file__).resolve().parents[1]


def test_print_config_shows_every_default_and_loads_back_to_the_same_config():
    overrides = ["train.lr=0.002", "model.layers=3"]
    result = subprocess.run([sys.executable, "launch/train.py", "--config", "configs/fastegnn_nbody100.yaml",
                             "--print-config", *overrides], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    printed = yaml.safe_load(result.stdout)
    assert printed["train"]["lr"] == 0.002 and printed["model"]["layers"] == 3
    assert "finite_check_every" in printed["train"]  # a default the file does not name
    expected = load_config(ROOT / "configs" / "fastegnn_nbody100.yaml", overrides)
    # every model key, the constructor's defaults included (edge_chunk and kernel are named by no config)
    assert set(printed["model"]) == {"name", *constructor_types(model_class(expected.model))}
    assert "edge_chunk" in printed["model"] and "kernel" in printed["model"]
    expected.model.options = model_defaults(expected.model)
    assert config_from_dict(printed).to_dict() == expected.to_dict()
