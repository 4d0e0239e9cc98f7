"""Every shipped config loads and validates (types, model options, extends chains)."""

from pathlib import Path

import pytest

from scaleq.config import load_config
from scaleq.models import check_buildable

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_config_loads(path):
    config = check_buildable(load_config(path))  # a missing parent in the extends chain is an error, not a skip
    assert config.name
    if config.model.name == "fastegnn":
        assert config.loss.mmd_weight > 0 and config.graph.edge_drop > 0


def test_fastegnn_nbody100_has_the_published_settings():
    config = load_config(Path(__file__).resolve().parents[1] / "configs" / "fastegnn_nbody100.yaml")
    assert config.data.generate is not None and config.data.generate.particles == 100
    # FastEGNN's own generator (run_100_3.sh): GMN's system of isolated balls in 3 Gaussians, seed 43
    assert (config.data.generate.system, config.data.generate.gaussians, config.data.generate.seed) == ("fastegnn", 3, 43)
    assert (config.data.generate.steps, config.data.velocity) == (5000, "store")
    assert config.graph.edge_attr == "distance"  # FastEGNN's edge attribute |x_i - x_j|
    assert (config.data.generate.train, config.data.generate.valid, config.data.generate.test) == (5000, 2000, 2000)
    assert (config.data.input_frame, config.data.delta, config.data.batch_size) == (30, 10, 100)
    assert config.model.options == {"hidden": 64, "layers": 4, "virtual_nodes": 3}
    assert (config.loss.mmd_sigma, config.loss.mmd_weight) == (1.5, 0.01)
    assert (config.train.lr, config.train.weight_decay, config.train.patience) == (5e-4, 1e-12, 100)


def test_fastegnn_keys_are_checked(tmp_path):
    from scaleq.config import ConfigError

    base = tmp_path / "base.yaml"
    base.write_text("data:\n  path: somewhere\nmodel:\n  name: fastegnn\n")
    config = check_buildable(load_config(base, ["graph.edge_drop=1", "model.gravity=[0, -1, 0]", "loss.mmd_weight=0.5"]))
    assert config.graph.edge_drop == 1.0 and config.model.options["gravity"] == [0.0, -1.0, 0.0]
    with pytest.raises(ConfigError, match=r"edge_drop must be in \[0, 1\]"):
        load_config(base, ["graph.edge_drop=1.5"])
    with pytest.raises(ConfigError, match=r"graph\.edge_drop_mode' must be one of"):
        load_config(base, ["graph.edge_drop_mode=longest"])
    with pytest.raises(ConfigError, match=r"loss\.mmd_sigma > 0"):
        load_config(base, ["loss.mmd_sigma=0"])
    with pytest.raises(ConfigError, match=r"loss\.mmd_kernel' must be one of"):
        load_config(base, ["loss.mmd_kernel=laplace"])
    with pytest.raises(ConfigError, match=r"model\.virtual_aggregation' must be one of"):
        check_buildable(load_config(base, ["model.virtual_aggregation=sum"]))
