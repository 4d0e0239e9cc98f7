import pytest

from scaleq.config import DEFAULT_CONFIG, ConfigError, config_from_dict, load_config
from scaleq.models.build import check_buildable, instantiate


def write(tmp_path, text, name="c.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


BASE = "data:\n  path: somewhere\n"


def test_default_config_loads():
    config = load_config()
    assert config.model.name == "egnn" and config.data.input_frame == 30
    assert config.train.epochs == 100  # from default.yaml over egnn_nbody.yaml
    assert config.train.weight_decay == pytest.approx(1e-12)


def test_unknown_key_names_key_and_file(tmp_path):
    path = write(tmp_path, BASE + "train:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: unknown key 'train\.lrr'"):
        load_config(path)


def test_wrong_type_names_key(tmp_path):
    path = write(tmp_path, BASE + "train:\n  epochs: many\n")
    with pytest.raises(ConfigError, match=r"key 'train\.epochs' must be an integer, got str 'many'"):
        load_config(path)
    path = write(tmp_path, BASE + "train:\n  progress: 1\n")
    with pytest.raises(ConfigError, match=r"train\.progress' must be true or false"):
        load_config(path)


def test_literal_and_validation(tmp_path):
    path = write(tmp_path, BASE + "data:\n  path: x\n  velocity: sideways\n")
    with pytest.raises(ConfigError, match=r"data\.velocity' must be one of"):
        load_config(path)
    path = write(tmp_path, BASE + "graph:\n  kind: radius\n")
    with pytest.raises(ConfigError, match="radius > 0"):
        load_config(path)


def test_missing_file_and_missing_key(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "none.yaml")
    with pytest.raises(ConfigError, match="missing key 'data'"):
        load_config(write(tmp_path, "seed: 1\n"))


def test_overrides_are_typed_and_checked(tmp_path):
    path = write(tmp_path, BASE)
    config = load_config(path, ["train.lr=1e-3", "data.batch_size=7", "model.hidden=16"])
    assert config.train.lr == pytest.approx(1e-3)
    assert config.data.batch_size == 7 and config.model.options["hidden"] == 16
    with pytest.raises(ConfigError, match=r"unknown key 'train\.nope'"):
        load_config(path, ["train.nope=1"])


def test_unknown_override_key_is_blamed_on_the_command_line_with_the_nearest_key(tmp_path):
    path = write(tmp_path, BASE)
    with pytest.raises(ConfigError, match=r"^command line: unknown key 'train\.epoch' \(did you mean "
                                          r"'train\.epochs'\?\)") as err:
        load_config(path, ["train.epoch=3"])
    assert "c.yaml" not in str(err.value)
    with pytest.raises(ConfigError, match=r"^command line: unknown key 'dat\.path' \(did you mean 'data'\?\)"):
        load_config(path, ["dat.path=x"])
    with pytest.raises(ConfigError, match=r"^command line: unknown key 'data\.generate\.trian' \(did you mean "
                                          r"'data\.generate\.train'\?\)"):
        load_config(path, ["data.generate.trian=3"])
    # the model's keys get the suggestion too, and a key in a file
    with pytest.raises(ConfigError, match=r"unknown key 'hiden' for model 'egnn' \(did you mean 'hidden'\?\)"):
        check_buildable(load_config(path, ["model.hiden=3"]))
    with pytest.raises(ConfigError, match=r"c\.yaml: unknown key 'train\.epoch' \(did you mean 'train\.epochs'\?\)"):
        load_config(write(tmp_path, BASE + "train:\n  epoch: 3\n"))
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(path, ["train.lr"])


def test_model_options_checked_against_constructor(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'depth' for model 'egnn'"):
        check_buildable(load_config(write(tmp_path, BASE + "model:\n  name: egnn\n  depth: 3\n")))
    with pytest.raises(ConfigError, match=r"model\.hidden' must be an integer"):
        check_buildable(load_config(write(tmp_path, BASE + "model:\n  hidden: wide\n")))
    with pytest.raises(ConfigError, match="model.name 'gnn' is not one of"):
        check_buildable(load_config(write(tmp_path, BASE + "model:\n  name: gnn\n")))
    # tools that build a model without a run (benchmarks, tests) get the same check
    with pytest.raises(ConfigError, match="unknown key 'depth' for model 'egnn'"):
        instantiate(load_config(write(tmp_path, BASE + "model:\n  depth: 3\n")).model, in_node_features=2,
                    in_edge_features=2, dim=3)
    config = load_config(write(tmp_path, BASE + "model:\n  hidden: 8\n  layers: 2\n"))
    model = instantiate(config.model, in_node_features=2, in_edge_features=2, dim=3)
    assert len(model.layers) == 2


def test_check_buildable_types_the_model_options(tmp_path):
    # PyYAML reads 5e-1 (no dot) as a string; the constructor's annotation says float
    config = load_config(write(tmp_path, BASE + "model:\n  name: dusego\n  dt: 5e-1\n"))
    assert config.model.options["dt"] == "5e-1"
    assert check_buildable(config).model.options["dt"] == 0.5


def test_extends_merges_deeply(tmp_path):
    write(tmp_path, BASE + "train:\n  lr: 0.5\n  epochs: 3\n", name="base.yaml")
    config = load_config(write(tmp_path, "extends: base.yaml\ntrain:\n  epochs: 9\n"))
    assert config.train.lr == 0.5 and config.train.epochs == 9 and config.data.path == "somewhere"


def test_default_config_file_exists():
    assert DEFAULT_CONFIG.is_file()


def test_the_old_activation_checkpointing_key_names_its_one_replacement():
    with pytest.raises(ConfigError, match=r"'engine.activation_checkpointing' is now 'model.gradient_checkpointing'"):
        config_from_dict({"data": {"path": "x"}, "engine": {"activation_checkpointing": 1}})
