"""One way to build a model: from the run's parsed config and the data it trains on.

The widths a model needs from the data (``in_node_features``: width of ``h``;
``in_edge_features``: width of the graph builder's ``edge_attr``; ``dim``) are read here and
nowhere else, so training, evaluation and plotting tools always build the same shapes and a
checkpoint always fits the model built for it. No file I/O and no config parsing happen here:
the caller passes the already-validated config objects.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from torch import nn

if TYPE_CHECKING:  # type names only: scaleq.config imports scaleq.models
    from scaleq.config import Config, ModelConfig

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
    in_edge_features = config.graph.builder().num_edge_features(widths.num_node_attr)
    return instantiate(config.model, in_node_features=widths.num_node_features,
                       in_edge_features=in_edge_features, dim=widths.dim)


def instantiate(model: ModelConfig, *, in_node_features: int, in_edge_features: int, dim: int) -> nn.Module:
    """``model.name`` with its options and the data-derived widths its constructor asks for."""
    from scaleq.models import MODELS  # the registry imports this module

    cls = MODELS[model.name]
    params = inspect.signature(cls.__init__).parameters
    derived = {"in_node_features": in_node_features, "in_edge_features": in_edge_features, "dim": dim}
    return cls(**{k: v for k, v in derived.items() if k in params}, **model.options)
