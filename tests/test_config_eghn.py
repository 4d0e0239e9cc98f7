from pathlib import Path

import pytest

from scaleq.config import load_config
from scaleq.models import EGHN
from scaleq.models.build import instantiate

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_eghn_nbody_config_builds_the_model_and_a_local_graph():
    config = load_config(CONFIGS / "eghn_nbody.yaml")
    assert config.graph.local == "knn" and config.loss.connectivity_weight > 0
    model = instantiate(config.model, in_node_features=2, in_edge_features=2, dim=3)
    assert isinstance(model, EGHN) and model.clusters == 3


def test_eghn_protein_config_has_the_published_settings():
    config = load_config(CONFIGS / "eghn_protein.yaml")
    assert config.data.batch_size == 8 and config.data.delta == 15
    assert config.train.lr == pytest.approx(5e-5) and config.train.weight_decay == pytest.approx(1e-4)
    assert config.graph.local == "bonds" and config.graph.radius == pytest.approx(10.0)
    assert config.loss.connectivity_weight == 2.0
    assert config.model.options == {"hidden": 128, "clusters": 20, "interaction_layers": 4, "pooling_layers": 4,
                                    "decoder_layers": 2, "cluster_edge_attr": "row_normalised"}


def test_a_config_naming_another_model_drops_the_parents_model_options(tmp_path):
    (tmp_path / "base.yaml").write_text("data:\n  path: x\nmodel:\n  name: egnn\n  hidden: 32\n  layers: 3\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\nmodel:\n  name: eghn\n  clusters: 4\n")
    (tmp_path / "same.yaml").write_text("extends: base.yaml\nmodel:\n  hidden: 16\n")
    assert load_config(tmp_path / "child.yaml").model.options == {"clusters": 4}
    assert load_config(tmp_path / "same.yaml").model.options == {"hidden": 16, "layers": 3}
