"""What a graph may be built with: the kinds, backends, local graphs and edge attributes, and the
rules on their combinations.

Torch-free, so that :mod:`scaleq.config` checks a ``graph:`` section when the file loads and
:class:`scaleq.data.graph.GraphBuilder` checks the builders made without a config, by the same
rules written once.
"""

from __future__ import annotations

from typing import Literal

GraphKind = Literal["complete", "radius"]
Backend = Literal["auto", "torch_cluster", "cell_list"]
EdgeDropMode = Literal["shortest", "random"]
LocalKind = Literal["bonds", "knn", "radius", "none"]
EdgeAttrKind = Literal["egnn", "distance"]


def check_graph_options(
    *,
    kind: GraphKind,
    radius: float | None,
    max_num_neighbors: int,
    backend: Backend,
    periodic: bool,
    edge_drop: float,
    edge_drop_mode: EdgeDropMode,
    local: LocalKind,
    local_k: int,
    local_radius: float | None,
    edge_attr: EdgeAttrKind,
) -> None:
    """Raise ValueError naming the first option, or combination, that cannot make a graph."""
    if edge_attr not in ("egnn", "distance"):
        raise ValueError(f"edge_attr must be 'egnn' or 'distance', got {edge_attr!r}")
    if kind not in ("complete", "radius"):
        raise ValueError(f"graph kind must be 'complete' or 'radius', got {kind!r}")
    if kind == "radius" and (radius is None or radius <= 0):
        raise ValueError(f"a radius graph needs a radius > 0, got {radius}")
    if max_num_neighbors < 1:
        raise ValueError(f"max_num_neighbors must be >= 1, got {max_num_neighbors}")
    if backend not in ("auto", "torch_cluster", "cell_list"):
        raise ValueError(f"graph backend must be 'auto', 'torch_cluster' or 'cell_list', got {backend!r}")
    if periodic and kind != "radius":
        raise ValueError("periodic boxes need a radius graph (graph.kind 'radius')")
    if periodic and backend == "torch_cluster":
        raise ValueError("periodic boxes need graph.backend 'cell_list' or 'auto': torch-cluster has none")
    if periodic and local in ("knn", "radius"):
        raise ValueError(f"a periodic graph cannot have a {local!r} local graph (it would need its own "
                         "edge shifts): use graph.local 'bonds' or 'none'")
    if not 0.0 <= edge_drop <= 1.0:
        raise ValueError(f"edge_drop must be in [0, 1], got {edge_drop}")
    if edge_drop_mode not in ("shortest", "random"):
        raise ValueError(f"edge_drop_mode must be 'shortest' or 'random', got {edge_drop_mode!r}")
    if local not in ("bonds", "knn", "radius", "none"):
        raise ValueError(f"local graph must be 'bonds', 'knn', 'radius' or 'none', got {local!r}")
    if local == "knn" and local_k < 1:
        raise ValueError(f"a k-nearest local graph needs local_k >= 1, got {local_k}")
    if local == "radius" and (local_radius is None or local_radius <= 0):
        raise ValueError(f"a radius local graph needs local_radius > 0, got {local_radius}")


def num_edge_features(edge_attr: EdgeAttrKind, num_node_attr: int) -> int:
    """Width of the edge attributes (see :func:`scaleq.data.graph.edge_features`): the products of
    ``num_node_attr`` static node features and the squared distance ('egnn'), or the distance alone."""
    return 1 if edge_attr == "distance" else num_node_attr + 1
