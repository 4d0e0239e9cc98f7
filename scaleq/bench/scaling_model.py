"""A scaling model on paper: step time = compute + the communication that is not hidden.

Pure Python (no torch): every figure of docs/scaling.md comes from these functions, fed with the
per-step bytes and compute that ``launch/bench_scaling.py --hosts`` measured, and with link figures
that are stated assumptions (:data:`LINKS`).

Data parallelism (p ranks, gradient of G bytes): each rank's step is its compute t_c plus one
all-reduce of the gradient. A ring all-reduce (reduce-scatter, then all-gather) sends and receives
2 (p - 1) / p x G bytes per rank in 2 (p - 1) steps, each paying the link's latency alpha:

    t_ring = 2 (p - 1) / p x G / B + 2 (p - 1) x alpha

A tree (NCCL's double binary tree, for small messages) pays 2 log2(p) latencies for the same
bandwidth term. Weak scaling (the same work per rank): efficiency = t_c / t_step(p); strong
scaling (a fixed global batch): efficiency = t_c(1) / (p x t_step(p)).

Graph parallelism (one graph of n particles cut over p ranks by recursive coordinate bisection,
``scaleq.distributed.partition``): each rank owns n / p particles and, per layer, receives its
halo rows (H + D values each: the source term W_j h and the position) in the forward pass and
sends as many gradients back in the backward pass. A particle outside a rank's box is a halo row
when at least one owned particle lies within the radius r; at distance u r from a face it sees an
owned cap of the ball holding on average k (1 - u)^2 (2 + u) / 4 particles (k: neighbours per
particle), so the face's slab counts with an effective thickness r x f(k),
f(k) = int_0^1 (1 - exp(-k (1 - u)^2 (2 + u) / 4)) du (0.78 at k = 18: 22 % of the slab has no
owned neighbour). Edges and corners of the box add quarter cylinders and ball octants.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

BYTES_PER_VALUE = 4  # fp32 halo rows and gradients


@dataclass(frozen=True)
class Link:
    """One link as seen by one rank: ``gbit_s`` each way, ``latency_us`` per message (software included)."""

    name: str
    gbit_s: float
    latency_us: float

    @property
    def bytes_per_s(self) -> float:
        return self.gbit_s * 1e9 / 8

    @property
    def latency_s(self) -> float:
        return self.latency_us * 1e-6


# Assumed per-GPU figures (each direction). NVLink 4 (H100 SXM): 900 GB/s both ways per GPU; NCCL's
# measured bus bandwidth inside a DGX H100 is ~ 360-480 GB/s, so 450 GB/s (3600 Gbit/s) one way.
# Across nodes each GPU has its own NIC (DGX A100: HDR 200 Gbit/s; DGX H100: NDR 400 Gbit/s), so a
# ring (or NCCL's per-NIC rings) moves data at the NIC's rate. Latencies are per message as NCCL or
# the socket stack sees them, not the wire's: a few microseconds on NVLink and InfiniBand (RDMA),
# tens of microseconds over TCP on Ethernet.
LINKS: dict[str, Link] = {
    "nvlink4": Link("NVLink 4 (inside one node of 8)", 3600.0, 3.0),
    "ib_hdr": Link("InfiniBand HDR (200 Gbit/s per GPU)", 200.0, 5.0),
    "ib_ndr": Link("InfiniBand NDR (400 Gbit/s per GPU)", 400.0, 5.0),
    "eth100": Link("100 GbE (TCP)", 100.0, 25.0),
}


def ring_allreduce_bytes(nbytes: float, ranks: int) -> float:
    """Bytes each rank sends (and receives) in a ring all-reduce of ``nbytes``."""
    return 2 * (ranks - 1) / ranks * nbytes if ranks > 1 else 0.0


def allreduce_s(nbytes: float, ranks: int, link: Link, algorithm: str = "ring") -> float:
    """Seconds of one all-reduce of ``nbytes`` over ``ranks`` ranks: ring (2 (p - 1) latencies)
    or tree (2 ceil(log2 p) latencies); the bandwidth term is the ring's for both."""
    if ranks <= 1:
        return 0.0
    if algorithm == "ring":
        hops = 2 * (ranks - 1)
    elif algorithm == "tree":
        hops = 2 * math.ceil(math.log2(ranks))
    else:
        raise ValueError(f"all-reduce algorithm must be 'ring' or 'tree', got {algorithm!r}")
    return ring_allreduce_bytes(nbytes, ranks) / link.bytes_per_s + hops * link.latency_s


def bisection_cells(parts: int) -> tuple[int, int, int]:
    """Cells per axis after recursive bisection of a unit cube into ``parts`` (a power of two):
    every round halves the longest side, the first axis on ties (``coordinate_bisection``)."""
    if parts < 1 or parts & (parts - 1):
        raise ValueError(f"the model bisects into a power of two parts, got {parts}")
    cells = [1, 1, 1]
    for _ in range(parts.bit_length() - 1):
        sides = [1 / c for c in cells]
        cells[sides.index(max(sides))] *= 2
    return cells[0], cells[1], cells[2]


def halo_thickness(neighbours: float, steps: int = 2000) -> float:
    """f(k): the fraction of the slab within r of a face whose particles have an owned neighbour
    (module docstring); midpoint rule."""
    total = 0.0
    for i in range(steps):
        u = (i + 0.5) / steps
        total += 1.0 - math.exp(-neighbours * (1 - u) ** 2 * (2 + u) / 4)
    return total / steps


def radius(particles: float, neighbours: float, volume: float = 1.0) -> float:
    """The radius that gives ``neighbours`` neighbours on average at this density."""
    return (3 * neighbours * volume / (4 * math.pi * particles)) ** (1 / 3)


def halo_rows(particles: float, neighbours: float, parts: int, periodic: bool) -> float:
    """Mean halo rows per rank: one graph of ``particles`` uniform in a cube, cut into ``parts``.

    Non-periodic: a box has a neighbour only across its inner faces; periodic: across every face
    of an axis that is cut (the interior of a large domain)."""
    if parts == 1:
        return 0.0
    density, r = particles, radius(particles, neighbours)
    cells = bisection_cells(parts)
    side = [1 / c for c in cells]
    total = 0.0
    for ix in range(cells[0]):
        for iy in range(cells[1]):
            for iz in range(cells[2]):
                faces = [_faces(i, c, periodic) for i, c in zip((ix, iy, iz), cells)]
                volume = sum(faces[a] * side[(a + 1) % 3] * side[(a + 2) % 3] * r for a in range(3))
                volume += sum(faces[a] * faces[b] * side[3 - a - b] * math.pi * r * r / 4
                              for a, b in ((0, 1), (0, 2), (1, 2)))
                volume += faces[0] * faces[1] * faces[2] * math.pi * r ** 3 / 6
                total += volume
    return density * halo_thickness(neighbours) * total / parts


def _faces(index: int, cells: int, periodic: bool) -> int:
    """How many of a cell's two faces along one axis border another rank's cell."""
    if cells == 1:
        return 0
    if periodic:
        return 2
    return int(index > 0) + int(index < cells - 1)


def neighbour_ranks(parts: int) -> int:
    """Largest number of other ranks one rank exchanges halo rows with (face, edge and corner
    neighbours of its box): the messages per exchange of a neighbour-only exchange."""
    if parts == 1:
        return 0
    # along an axis of c cells a box meets at most min(3, c) distinct cells (itself included)
    return math.prod(min(3, c) for c in bisection_cells(parts)) - 1


def halo_bytes_per_layer(rows: float, hidden: int, dim: int = 3) -> float:
    """Bytes one rank receives per layer in the forward pass (W_j h and the position per row);
    the backward sends as many back."""
    return rows * (hidden + dim) * BYTES_PER_VALUE


def halo_s(rows: float, hidden: int, layers: int, peers: int, link: Link, dim: int = 3) -> float:
    """Seconds of a step's halo exchanges: per layer one forward and one backward exchange, each
    ``peers`` messages and the rows' bytes."""
    one = halo_bytes_per_layer(rows, hidden, dim) / link.bytes_per_s + peers * link.latency_s
    return 2 * layers * one if peers else 0.0


@dataclass(frozen=True)
class StepModel:
    """A step's parts on one rank (seconds) and what overlap hides."""

    compute_s: float
    allreduce_s: float = 0.0
    halo_s: float = 0.0
    backward_share: float = 2 / 3  # of the compute: what an all-reduce can hide behind
    interior_share: float = 0.0  # of the compute: what a halo exchange can hide behind (0: it blocks)
    overlap_allreduce: bool = False

    @property
    def step_s(self) -> float:
        hidden_ar = self.backward_share * self.compute_s if self.overlap_allreduce else 0.0
        exposed_ar = max(0.0, self.allreduce_s - hidden_ar)
        exposed_halo = max(0.0, self.halo_s - self.interior_share * self.compute_s)
        return self.compute_s + exposed_ar + exposed_halo


def efficiency(single_s: float, step_s: float, ranks: int, weak: bool) -> float:
    """Weak: t(1) / t(p); strong: t(1) / (p t(p))."""
    return single_s / step_s if weak else single_s / (ranks * step_s)
