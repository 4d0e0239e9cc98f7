"""One way to build a model: from the run's parsed config and the data it trains on.

The widths a model needs from the data (``in_node_features``: width of ``h``;
``in_edge_features``: width of the graph builder's ``edge_attr``; ``dim``) are read here and
nowhere else, so training, evaluation and plotting tools always build the same shapes and a
checkpoint always fits the model built for it. No file I/O and no config parsing happen here:
the caller passes the already-validated config objects.

The checks of a config that need the model classes live here too (:func:`check_buildable`):
``scaleq.config`` is a leaf that cannot import them.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from dataclasses import dataclass
from typing import Any, Protocol

from torch import nn

from scaleq.config import Config, ConfigError, ModelConfig, check_type, did_you_mean
from scaleq.graph.options import num_edge_features
from scaleq.loss_terms import LOSS_TERMS
from scaleq.models.registry import MODELS

# Constructor arguments that come from the data, not from the config.
DATA_DERIVED_ARGS = ("in_node_features", "in_edge_features", "dim")


@dataclass(frozen=True)
class DataWidths:
    """What a model's shapes depend on in the data.

    num_node_features: width of ``h``; num_node_attr: width of ``node_attr`` (the static features
    the graph builder multiplies into ``edge_attr``); dim: D.
    """

    num_node_features: int
    num_node_attr: int
    dim: int


class _DatasetLike(Protocol):
    """A TrajectoryDataset (or anything with its widths and its store's attrs)."""

    num_node_features: int
    num_node_attr: int
    store: Any


def data_widths(dataset: DataWidths | _DatasetLike) -> DataWidths:
    """The widths of a dataset (a TrajectoryDataset or a DataWidths)."""
    if isinstance(dataset, DataWidths):
        return dataset
    return DataWidths(int(dataset.num_node_features), int(dataset.num_node_attr), int(dataset.store.attrs.dim))


def build_model(config: Config, dataset: DataWidths | _DatasetLike) -> nn.Module:
    """``config.model`` instantiated for ``dataset`` and the edge features ``config.graph`` builds.

    ``dataset``: the run's training split (a TrajectoryDataset) or its :class:`DataWidths`.
    """
    widths = data_widths(dataset)
    in_edge_features = num_edge_features(config.graph.edge_attr, widths.num_node_attr)
    return instantiate(config.model, in_node_features=widths.num_node_features,
                       in_edge_features=in_edge_features, dim=widths.dim)


def instantiate(model: ModelConfig, *, in_node_features: int, in_edge_features: int, dim: int) -> nn.Module:
    """``model.name`` with its options and the data-derived widths its constructor asks for."""
    cls = model_class(model)
    params = inspect.signature(cls.__init__).parameters
    derived = {"in_node_features": in_node_features, "in_edge_features": in_edge_features, "dim": dim}
    return cls(**{k: v for k, v in derived.items() if k in params}, **model_options(model))


def check_buildable(config: Config) -> Config:
    """``config`` with its model options checked and typed; ConfigError naming the keys otherwise.

    What :mod:`scaleq.config` cannot check without importing the models: ``model.name`` is a
    registered model, every other ``model.*`` key is a keyword argument of its constructor, of
    its type, and the model fits the other sections (:func:`check_model_fits`). Every run calls
    this before it starts anything (scaleq.run.run, the Ray driver, launch/train.py);
    :func:`instantiate` checks the options for the tools that build a model directly.
    """
    options = model_options(config.model)
    check_model_fits(config, options)
    return dataclasses.replace(config, model=ModelConfig(name=config.model.name, options=options))


def check_model_fits(config: Config, options: dict[str, Any] | None = None) -> None:
    """The keys of other sections that ask the model for what it does not have: a local graph it
    needs (``needs_local_graph``), the outputs a loss term reads (``auxiliary_outputs``), layers
    to checkpoint, graph parallelism it cannot split (``supports_graph_parallel``), a periodic box
    it cannot honour (``periodic_problem``). Otherwise each fails only at the first training step,
    after the data is made. ``options``: the model's typed options (default: checked here)."""
    name, cls = config.model.name, model_class(config.model)
    if config.graph.periodic:
        problem = periodic_problem(cls, model_options(config.model) if options is None else options)
        if problem is not None:
            raise ConfigError(f"graph.periodic is not supported for model {name!r}: {problem}")
    ranks = config.engine.graph_parallel
    if ranks > 1 and not supports_graph_parallel(cls):
        raise ConfigError(f"engine.graph_parallel = {ranks} is not supported for model {name!r}: its pooling is "
                          "global per graph; set engine.graph_parallel to 1")
    if needs_local_graph(cls) and config.graph.local == "none":
        raise ConfigError(f"model.name {name!r} needs a local graph: set graph.local to 'bonds', 'knn' or 'radius' "
                          "(got 'none')")
    for term in LOSS_TERMS:  # the terms' own declarations, which scaleq.losses computes from
        if term.weight_key is None or term.needs_output is None:
            continue
        key, output = term.weight_key, term.needs_output
        weight = getattr(config.loss, key)
        if weight > 0 and output not in auxiliary_outputs(cls):
            givers = sorted(n for n, c in MODELS.items() if output in auxiliary_outputs(c))
            raise ConfigError(f"loss.{key} = {weight} needs a model that outputs {output!r} ({', '.join(givers)}); "
                              f"model.name {name!r} does not: set loss.{key} to 0")


def needs_local_graph(cls: type[nn.Module]) -> bool:
    """Whether the model reads ``batch.local_index`` (a class attribute; default False)."""
    return bool(getattr(cls, "needs_local_graph", False))


def periodic_problem(cls: type[nn.Module], options: dict[str, Any]) -> str | None:
    """Why the model, with these options, cannot honour a periodic box, or None (a static method
    ``periodic_problem(options)`` of the class; default: it can, as every model whose positions
    meet only through the graph's minimum-image differences)."""
    check = getattr(cls, "periodic_problem", None)
    return None if check is None else check(options)


def supports_graph_parallel(cls: type[nn.Module]) -> bool:
    """Whether its forward may run on one rank's part of each graph plus the halo (a class
    attribute; default True: per-node and per-edge work, per-graph sums through ``batch.halo``)."""
    return bool(getattr(cls, "supports_graph_parallel", True))


def auxiliary_outputs(cls: type[nn.Module]) -> tuple[str, ...]:
    """The keys its forward returns besides "pos" (a class attribute; default none)."""
    return tuple(getattr(cls, "auxiliary_outputs", ()))


def model_class(model: ModelConfig) -> type[nn.Module]:
    """The registered class of ``model.name``."""
    if model.name not in MODELS:
        raise ConfigError(f"model.name {model.name!r} is not one of {sorted(MODELS)}")
    return MODELS[model.name]


def model_options(model: ModelConfig) -> dict[str, Any]:
    """``model.options`` checked against the constructor of ``model.name``: known keys, and values
    of their annotated types (numbers YAML reads as strings, such as 5e-4, become floats)."""
    accepted = constructor_types(model_class(model))
    options = {}
    for key, value in model.options.items():
        if key not in accepted:
            raise ConfigError(f"model: unknown key {key!r} for model {model.name!r}"
                              f"{did_you_mean(key, sorted(accepted))} (known: {sorted(accepted)})")
        options[key] = check_type(value, accepted[key], f"model.{key}")
    return options


def model_defaults(model: ModelConfig) -> dict[str, Any]:
    """Every option of ``model.name``'s constructor with its default, then ``model.options`` over
    them: what the model is built with (what --print-config shows)."""
    params = inspect.signature(model_class(model).__init__).parameters
    defaults = {name: params[name].default for name in constructor_types(model_class(model))
                if params[name].default is not inspect.Parameter.empty}
    return {**defaults, **model_options(model)}


def constructor_types(cls: type) -> dict[str, Any]:
    """Keyword arguments of a model's constructor with their types, minus data-derived ones."""
    hints = typing.get_type_hints(cls.__init__)
    params = inspect.signature(cls.__init__).parameters
    return {
        name: hints.get(name, Any)
        for name, p in params.items()
        if name != "self" and name not in DATA_DERIVED_ARGS and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    }
