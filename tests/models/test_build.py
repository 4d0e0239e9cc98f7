"""The model section is checked against the model classes (scaleq.models.build.check_buildable)
before a run makes anything: scaleq.config, a leaf, cannot import them."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from scaleq.config import ConfigError, ModelConfig, config_from_dict, load_config
from scaleq.graph.builder import GraphBuilder
from scaleq.models import MODELS
from scaleq.models.build import (
    auxiliary_outputs,
    check_buildable,
    instantiate,
    needs_local_graph,
    supports_graph_parallel,
)
from tests.support.stores import random_batch

ROOT = Path(__file__).resolve().parents[2]
SMALL = {
    "egnn": {"hidden": 8, "layers": 1},
    "fastegnn": {"hidden": 8, "layers": 1, "virtual_nodes": 2},
    "dusego": {"hidden": 8, "layers": 1},
    "eghn": {"hidden": 8, "clusters": 2, "interaction_layers": 1, "pooling_layers": 1, "decoder_layers": 1},
}

PERIODIC = {"kind": "radius", "radius": 1.0, "periodic": True}
# (name, sections over a config that runs, the message the error must match)
MISFITS = [
    ("eghn without a local graph", {"model": {"name": "eghn"}},
     r"model\.name 'eghn' needs a local graph: set graph\.local to 'bonds', 'knn' or 'radius' \(got 'none'\)"),
    ("mmd loss on a model without virtual nodes", {"loss": {"mmd_weight": 0.1}},
     r"loss\.mmd_weight = 0\.1 needs a model that outputs 'virtual_pos' \(fastegnn\); model\.name 'egnn' does not"),
    ("connectivity loss on a model that does not pool", {"model": {"name": "fastegnn"}, "loss": {"connectivity_weight": 2}},
     r"loss\.connectivity_weight = 2\.0 needs a model that outputs 'pooled_adjacency' \(eghn\); model\.name 'fastegnn'"),
    ("checkpointing a baseline", {"model": {"name": "linear", "gradient_checkpointing": 1}},
     r"gradient_checkpointing"),
    ("eghn on a periodic box", {"model": {"name": "eghn"}, "graph": {**PERIODIC, "local": "bonds"}},
     r"graph\.periodic is not supported for model 'eghn': its pooling averages positions over soft clusters"),
    ("dusego's restoring term on a periodic box", {"model": {"name": "dusego", "sigma_pos": "tanh"}, "graph": PERIODIC},
     r"graph\.periodic is not supported for model 'dusego': with sigma_pos='tanh' and gamma1=1\.0 its restoring term"),
]


def raw_config(root: Path, **sections: dict) -> dict:
    """A config that trains on a dataset it would generate under ``root``, with ``sections`` merged in."""
    raw = {
        "name": "bad", "out_dir": str(root / "runs"),
        "data": {"path": str(root / "data"), "input_frame": 30, "velocity": "store",
                 "generate": {"particles": 5, "train": 4, "valid": 2, "test": 2}},
        "model": {"name": "egnn", "hidden": 8, "layers": 1},
        "train": {"epochs": 1, "progress": False},
    }
    for key, value in sections.items():
        raw[key] = value if key == "model" else {**raw.get(key, {}), **value}
    return raw


def write_config(root: Path, **sections: dict) -> Path:
    path = root / "bad.yaml"
    path.write_text(yaml.safe_dump(raw_config(root, **sections)))
    return path


@pytest.mark.parametrize("name", sorted(MODELS))
def test_the_declared_needs_and_outputs_are_what_forward_does(name):
    """check_buildable trusts needs_local_graph and auxiliary_outputs: they must say what the model does."""
    model = instantiate(ModelConfig(name=name, options=SMALL.get(name, {})), in_node_features=2, in_edge_features=2,
                        dim=3)
    with_local = GraphBuilder(kind="complete", local="knn", local_k=2)(random_batch())
    assert set(model(with_local)) == {"pos", *auxiliary_outputs(MODELS[name])}
    without_local = GraphBuilder(kind="complete")(random_batch())
    if needs_local_graph(MODELS[name]):
        with pytest.raises(ValueError, match="local graph"):
            model(without_local)
    else:
        assert set(model(without_local)) == {"pos", *auxiliary_outputs(MODELS[name])}


@pytest.mark.parametrize("sections, message", [m[1:] for m in MISFITS], ids=[m[0] for m in MISFITS])
def test_check_buildable_names_the_keys_of_a_model_that_does_not_fit(tmp_path, sections, message):
    config = config_from_dict(raw_config(tmp_path, **sections))  # the leaf config module cannot know
    with pytest.raises(ConfigError, match=message):
        check_buildable(config)


def test_models_that_fit_pass(tmp_path):
    fits = [
        {"model": {"name": "eghn", **SMALL["eghn"]}, "graph": {"local": "knn"}, "loss": {"connectivity_weight": 2}},
        {"model": {"name": "fastegnn", **SMALL["fastegnn"]}, "loss": {"mmd_weight": 0.1}},
        {"model": {"gradient_checkpointing": 1}},
    ]
    for sections in fits:
        check_buildable(config_from_dict(raw_config(tmp_path, **sections)))


def test_a_run_checks_its_model_before_making_data(tmp_path):
    """run() is what every launcher calls (the CLI, Ray workers, the depth sweep)."""
    from scaleq.run import run

    config = load_config(write_config(tmp_path, model={"name": "egnn", "depth": 3}))
    with pytest.raises(ConfigError, match=r"model: unknown key 'depth' for model 'egnn'"):
        run(config)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]  # no dataset, no run directory


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "launch/train.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def assert_refused(result: subprocess.CompletedProcess, message: str, root: Path) -> None:
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and result.stdout == "", result.stderr[-3000:]
    assert "Traceback" not in result.stderr and len(errors) == 1, result.stderr[-3000:]
    assert re.search(message, errors[0]), errors[0]
    assert sorted(p.name for p in root.iterdir()) == ["bad.yaml"]  # no dataset generated, no run directory


@pytest.mark.slow
def test_cli_refuses_a_model_key_the_constructor_does_not_take(tmp_path):
    path = write_config(tmp_path, model={"name": "egnn", "depth": 3})
    for extra in ([], ["--print-config"]):  # --print-config does not print a config that cannot run
        assert_refused(cli("--config", str(path), *extra), r"model: unknown key 'depth' for model 'egnn'", tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("sections, message", [m[1:] for m in MISFITS], ids=[m[0] for m in MISFITS])
def test_cli_refuses_a_model_that_does_not_fit(tmp_path, sections, message):
    assert_refused(cli("--config", str(write_config(tmp_path, **sections))), message, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("model, message", [
    ({"name": "eghn"}, r"graph\.periodic is not supported for model 'eghn': its pooling averages positions"),
    ({"name": "dusego", "gamma1": 0.5}, r"graph\.periodic is not supported for model 'dusego': .*gamma1=0\.5"),
], ids=["eghn", "dusego-gamma1"])
def test_cli_refuses_graph_periodic_true_for_a_model_that_cannot_honour_a_box(tmp_path, model, message):
    path = write_config(tmp_path, model=model, graph={"kind": "radius", "radius": 1.0, "local": "bonds"})
    assert_refused(cli("--config", str(path), "graph.periodic=true"), message, tmp_path)


def test_periodic_boxes_are_honoured_or_refused_by_each_model(tmp_path):
    """Which models honour a periodic box: every one but EGHN; DuSEGO where its centre term cancels."""
    refused = []
    for name in sorted(MODELS):
        graph = {**PERIODIC, "local": "bonds"} if needs_local_graph(MODELS[name]) else PERIODIC
        try:
            check_buildable(config_from_dict(raw_config(tmp_path, model={"name": name}, graph=graph)))
        except ConfigError:
            refused.append(name)
    assert refused == ["eghn"]
    for options in ({"sigma_pos": "relu"}, {"sigma_pos": "identity", "gamma1": 1.0}):
        check_buildable(config_from_dict(raw_config(tmp_path, model={"name": "dusego", **options}, graph=PERIODIC)))
    for options in ({"sigma_pos": "silu"}, {"gamma1": 2.0}):
        with pytest.raises(ConfigError, match="model 'dusego'"):
            check_buildable(config_from_dict(raw_config(tmp_path, model={"name": "dusego", **options}, graph=PERIODIC)))


def test_graph_parallel_support_is_a_class_attribute_the_build_check_reads(tmp_path):
    """EGHN's pooling is global per graph: it says so itself (supports_graph_parallel = False), and
    check_buildable refuses engine.graph_parallel > 1 for it; the other models keep the default."""
    assert [n for n, c in MODELS.items() if not supports_graph_parallel(c)] == ["eghn"]
    config = config_from_dict(raw_config(tmp_path, model={"name": "eghn"}, engine={"graph_parallel": 2}))
    with pytest.raises(ConfigError, match=r"engine\.graph_parallel = 2 is not supported for model 'eghn'"):
        check_buildable(config)


def test_the_output_check_reads_every_loss_terms_own_declaration(tmp_path):
    """check_model_fits reads LossTerm.needs_output (scaleq.loss_terms), the table the loss itself
    is computed from: every term that reads an output refuses a model without it, by its own key."""
    from scaleq.config import LossConfig
    from scaleq.loss_terms import LOSS_TERMS
    from scaleq.models.build import auxiliary_outputs, check_model_fits

    reading = [term for term in LOSS_TERMS if term.needs_output is not None]
    assert reading  # the check below is not vacuous
    for term in reading:
        assert term.weight_key in LossConfig.__dataclass_fields__
        assert any(term.needs_output in auxiliary_outputs(cls) for cls in MODELS.values())
        config = config_from_dict(raw_config(tmp_path, loss={term.weight_key: 0.5}))  # model: egnn, outputs "pos" only
        with pytest.raises(ConfigError, match=rf"loss\.{term.weight_key} = 0\.5 needs a model that outputs '{term.needs_output}'"):
            check_model_fits(config)
