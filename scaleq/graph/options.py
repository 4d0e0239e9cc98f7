"""What a graph may be built with: the kinds, backends, local graphs and edge attributes.

Torch-free, so that :mod:`scaleq.config` reads them: the allowed values live in these ``Literal``
types alone, the options in :class:`scaleq.config.GraphConfig` alone (whose checks also run for
every :class:`scaleq.graph.builder.GraphBuilder`, a GraphConfig with the building added).
"""

from __future__ import annotations

from typing import Literal, get_args

GraphKind = Literal["complete", "radius"]
Backend = Literal["auto", "torch_cluster", "cell_list"]
EdgeDropMode = Literal["shortest", "random"]
LocalKind = Literal["bonds", "knn", "radius", "none"]
EdgeAttrKind = Literal["egnn", "distance"]


def choices(allowed: type) -> str:
    """"'a', 'b' or 'c'" from a Literal type: the allowed values are written once, in the type."""
    names = [repr(v) for v in get_args(allowed)]
    return f"{', '.join(names[:-1])} or {names[-1]}"


def num_edge_features(edge_attr: EdgeAttrKind, num_node_attr: int) -> int:
    """Width of the edge attributes (see :func:`scaleq.graph.builder.edge_features`): the products of
    ``num_node_attr`` static node features and the squared distance ('egnn'), or the distance alone."""
    return 1 if edge_attr == "distance" else num_node_attr + 1
