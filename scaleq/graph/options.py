"""What a graph may be built with: the kinds, backends, local graphs and edge attributes, and the
rules on their combinations.

Torch-free, so that :mod:`scaleq.config` checks a ``graph:`` section when the file loads and
:class:`scaleq.graph.builder.GraphBuilder` (a GraphConfig with the building added) checks the
builders made without a config, by the same rules written once; the allowed values live in the
``Literal`` types alone.
"""

from __future__ import annotations

from typing import Literal, Protocol, get_args

GraphKind = Literal["complete", "radius"]
Backend = Literal["auto", "torch_cluster", "cell_list"]
EdgeDropMode = Literal["shortest", "random"]
LocalKind = Literal["bonds", "knn", "radius", "none"]
EdgeAttrKind = Literal["egnn", "distance"]


class GraphOptions(Protocol):
    """The options of a ``graph:`` section, as :class:`scaleq.config.GraphConfig` defines them (and
    :class:`scaleq.graph.builder.GraphBuilder`, which is one)."""

    kind: GraphKind
    radius: float | None
    max_num_neighbors: int
    backend: Backend
    periodic: bool
    edge_drop: float
    edge_drop_mode: EdgeDropMode
    local: LocalKind
    local_k: int
    local_radius: float | None
    edge_attr: EdgeAttrKind


def _choices(allowed: type) -> str:
    """"'a', 'b' or 'c'" from a Literal type: the allowed values are written once, in the type."""
    names = [repr(v) for v in get_args(allowed)]
    return f"{', '.join(names[:-1])} or {names[-1]}"


def check_graph_options(graph: GraphOptions) -> None:
    """Raise ValueError naming the first option, or combination, that cannot make a graph."""
    kind, backend, periodic, local = graph.kind, graph.backend, graph.periodic, graph.local
    if graph.edge_attr not in get_args(EdgeAttrKind):
        raise ValueError(f"edge_attr must be {_choices(EdgeAttrKind)}, got {graph.edge_attr!r}")
    if kind not in get_args(GraphKind):
        raise ValueError(f"graph kind must be {_choices(GraphKind)}, got {kind!r}")
    if kind == "radius" and (graph.radius is None or graph.radius <= 0):
        raise ValueError(f"a radius graph needs a radius > 0, got {graph.radius}")
    if graph.max_num_neighbors < 1:
        raise ValueError(f"max_num_neighbors must be >= 1, got {graph.max_num_neighbors}")
    if backend not in get_args(Backend):
        raise ValueError(f"graph backend must be {_choices(Backend)}, got {backend!r}")
    if periodic and kind != "radius":
        raise ValueError("periodic boxes need a radius graph (graph.kind 'radius')")
    if periodic and backend == "torch_cluster":
        raise ValueError("periodic boxes need graph.backend 'cell_list' or 'auto': torch-cluster has none")
    if periodic and local in ("knn", "radius"):
        raise ValueError(f"a periodic graph cannot have a {local!r} local graph (it would need its own "
                         "edge shifts): use graph.local 'bonds' or 'none'")
    if not 0.0 <= graph.edge_drop <= 1.0:
        raise ValueError(f"edge_drop must be in [0, 1], got {graph.edge_drop}")
    if graph.edge_drop_mode not in get_args(EdgeDropMode):
        raise ValueError(f"edge_drop_mode must be {_choices(EdgeDropMode)}, got {graph.edge_drop_mode!r}")
    if local not in get_args(LocalKind):
        raise ValueError(f"local graph must be {_choices(LocalKind)}, got {local!r}")
    if local == "knn" and graph.local_k < 1:
        raise ValueError(f"a k-nearest local graph needs local_k >= 1, got {graph.local_k}")
    if local == "radius" and (graph.local_radius is None or graph.local_radius <= 0):
        raise ValueError(f"a radius local graph needs local_radius > 0, got {graph.local_radius}")


def num_edge_features(edge_attr: EdgeAttrKind, num_node_attr: int) -> int:
    """Width of the edge attributes (see :func:`scaleq.graph.builder.edge_features`): the products of
    ``num_node_attr`` static node features and the squared distance ('egnn'), or the distance alone."""
    return 1 if edge_attr == "distance" else num_node_attr + 1
