"""Every shipped config loads and validates (types, model options, extends chains)."""

from pathlib import Path

import pytest
import yaml

from scaleq.config import load_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def missing_parent(path: Path) -> Path | None:
    """The first file of the ``extends`` chain that does not exist, if any."""
    while True:
        parent = (yaml.safe_load(path.read_text()) or {}).get("extends")
        if parent is None:
            return None
        path = path.parent / parent
        if not path.is_file():
            return path


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_config_loads(path):
    missing = missing_parent(path)
    if missing is not None:
        pytest.skip(f"{path.name} extends {missing.name}, which is not in configs/")
    config = load_config(path)
    assert config.name
    if config.model.name == "fastegnn":
        assert config.loss.mmd_weight > 0 and config.graph.edge_drop > 0


def test_fastegnn_nbody100_has_the_published_settings():
    config = load_config(Path(__file__).resolve().parents[1] / "configs" / "fastegnn_nbody100.yaml")
    assert config.data.generate is not None and config.data.generate.particles == 100
    assert (config.data.generate.train, config.data.generate.valid, config.data.generate.test) == (5000, 2000, 2000)
    assert (config.data.input_frame, config.data.delta, config.data.batch_size) == (30, 10, 100)
    assert config.model.options == {"hidden": 64, "layers": 4, "virtual_nodes": 3}
    assert (config.loss.mmd_sigma, config.loss.mmd_weight) == (1.5, 0.01)
    assert (config.train.lr, config.train.weight_decay, config.train.patience) == (5e-4, 1e-12, 100)
