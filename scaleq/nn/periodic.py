"""Periodic boxes inside models: minimum-image differences and a mean that moves with the particles.

A periodic graph comes with ``batch.edge_shift`` (see scaleq.graph.builder) and ``batch.box``
[B, D, 2] (lower and upper corner of each graph's box). Models read the box through
:func:`periodic_box` and treat the positions as points of a torus: every difference of two
positions goes through :func:`minimum_image`, and where a model needs a centre of its particles
it takes :func:`circular_mean`, which moves with them under periodic translations and re-imaging.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from scaleq.nn.graph_reduce import graph_mean


def periodic_box(batch: Any) -> Tensor | None:  # noqa: ANN401 (a PyG Batch or alike)
    """``batch.box`` [B, D, 2] when the batch's graph is periodic (it has ``edge_shift``), else None.

    A store's ``bounds`` reach every batch as ``box``; only ``graph.periodic`` makes them a
    periodic box, and the graph builder then sets ``edge_shift``."""
    if getattr(batch, "edge_shift", None) is None:
        return None
    box = getattr(batch, "box", None)
    if box is None:
        raise ValueError("a periodic graph (batch.edge_shift) needs its boxes in batch.box [B, D, 2]")
    return box


def minimum_image(diff: Tensor, length: Tensor) -> Tensor:
    """The image of each difference nearest the origin, as the cell list computes its shifts:
    ``diff - L floor(diff / L + 1/2)``, every component in [-L/2, L/2).

    Shapes: diff [..., D], length [..., D] (broadcastable: box sides) -> [..., D]
    """
    return diff - length * torch.floor(diff / length + 0.5)


def circular_mean(pos: Tensor, batch: Tensor, num_graphs: int, box: Tensor, halo: Any = None) -> Tensor:  # noqa: ANN401
    """Per graph and axis, the circular mean of the positions in their box: each coordinate is an
    angle theta = 2 pi (x - lower) / L, and the mean is lower + L atan2(<sin theta>, <cos theta>) / 2 pi,
    in [lower, upper). Re-imaging a particle changes nothing, a periodic translation moves the mean
    with the particles, and the cube's symmetries (permutations and reflections of the axes, which
    map each axis's angles to a permutation of axes and theta -> -theta) carry it along too. Where
    the particles fill an axis uniformly the mean resultant is near zero and the direction is set
    by fluctuations: the mean is then well defined but not robust (a homogeneous fluid has no centre).
    Every rank's nodes with ``halo`` (graph parallelism).

    Shapes: pos [N, D], batch [N], box [B, D, 2] -> [B, D]
    """
    lower, length = box[..., 0].to(pos.dtype), (box[..., 1] - box[..., 0]).to(pos.dtype)  # [B, D]
    theta = (pos - lower.index_select(0, batch)) * (2 * math.pi / length.index_select(0, batch))  # [N, D]
    resultant = graph_mean(torch.cat([torch.cos(theta), torch.sin(theta)], dim=-1), batch, num_graphs, halo)  # [B, 2D]
    cos, sin = resultant.chunk(2, dim=-1)
    angle = torch.remainder(torch.atan2(sin, cos), 2 * math.pi)  # [B, D] in [0, 2 pi)
    return lower + length * angle / (2 * math.pi)
