"""The shared E(n)-equivariance check.

A model maps a batch to a dict of outputs. The check draws a random orthogonal matrix Q (with a
reflection half of the time, so det Q = -1 is covered), a random translation t and a random
permutation P of ALL nodes (edge_index is relabelled, so the graph is the same graph), applies
them to the inputs, and compares ``model(g . batch)`` with ``g . model(batch)`` output by output:

    node_position   [N, D]  x -> P (x Q^T + t)
    node_vector     [N, D]  v -> P (v Q^T)
    node_invariant  [N, *]  h -> P h
    position        [M, D]  z -> z Q^T + t     (not indexed by node, e.g. virtual nodes)
    vector          [M, D]  z -> z Q^T
    invariant       [M, *]  unchanged           (e.g. virtual features, cluster quantities)

Inputs: ``pos`` and ``target`` are positions, ``vel`` a vector; every other node-indexed field
(``h``, ``node_attr``, ``batch``) is permuted; edge fields keep their order with relabelled ends.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch_geometric.data import Batch

OutputKind = Literal["node_position", "node_vector", "node_invariant", "position", "vector", "invariant"]
POSITION_FIELDS = ("pos", "target")
VECTOR_FIELDS = ("vel",)
INDEX_FIELDS = ("edge_index", "bond_index", "local_index")
# Edge-indexed fields keep their order even when a graph happens to have as many edges as nodes.
EDGE_FIELDS = ("edge_attr", "bond_attr", "local_attr")


def random_orthogonal(dim: int, generator: torch.Generator, dtype: torch.dtype, reflect: bool) -> Tensor:
    """A Haar-random orthogonal matrix (QR of a Gaussian, sign-fixed); det = -1 if ``reflect``."""
    q, r = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if (torch.det(q) < 0) != reflect:
        q[:, 0] = -q[:, 0]
    return q.to(dtype)


@dataclass(frozen=True)
class Transform:
    rotation: Tensor  # [D, D]
    translation: Tensor  # [D]
    permutation: Tensor  # [N]: new node k is old node permutation[k]

    def apply_to_batch(self, batch: Batch) -> Batch:
        return _move_batch(batch, self.permutation, lambda x: x @ self.rotation.T + self.translation,
                           lambda v: v @ self.rotation.T)

    def apply_to_output(self, value: Tensor, kind: OutputKind) -> Tensor:
        if kind.startswith("node_"):
            value = value[self.permutation]
        if kind.endswith("position"):
            return value @ self.rotation.T + self.translation
        if kind.endswith("vector"):
            return value @ self.rotation.T
        return value


def _move_batch(
    batch: Batch, permutation: Tensor, position: Callable[[Tensor], Tensor], vector: Callable[[Tensor], Tensor]
) -> Batch:
    """``batch`` with its nodes permuted (new node k is old node ``permutation[k]``, index fields
    relabelled), ``position`` applied to the position fields and ``vector`` to the vector fields,
    both AFTER the permutation."""
    out = batch.clone()
    n = batch.num_nodes
    inverse = torch.empty_like(permutation)
    inverse[permutation] = torch.arange(n, device=permutation.device)
    for key in out.keys():
        value = out[key]
        if not isinstance(value, Tensor):
            continue
        if key in INDEX_FIELDS:
            out[key] = inverse[value]
        elif key in EDGE_FIELDS:
            continue
        elif value.dim() >= 1 and value.shape[0] == n and key not in ("ptr",):
            value = value[permutation]
            if key in POSITION_FIELDS:
                value = position(value)
            elif key in VECTOR_FIELDS:
                value = vector(value)
            out[key] = value
    return out


@dataclass
class EquivarianceReport:
    errors: dict[str, float]  # largest relative error per output over all trials

    def worst(self) -> tuple[str, float]:
        return max(self.errors.items(), key=lambda kv: kv[1])


def check_equivariance(
    model: Callable[[Batch], dict[str, Tensor]],
    batch: Batch,
    outputs: dict[str, OutputKind],
    *,
    dtype: torch.dtype = torch.float64,
    trials: int = 4,
    seed: int = 0,
    rtol: float | None = None,
) -> EquivarianceReport:
    """Compare model(g . batch) with g . model(batch) for random g; raise AssertionError with the
    worst output if the relative error (max |diff| / max |reference|) exceeds ``rtol``
    (default 1e-9 in float64, 1e-4 in float32). Float tensors of the batch, and a copy of the
    model when it is an nn.Module, are cast to ``dtype``."""
    rtol = rtol if rtol is not None else (1e-9 if dtype == torch.float64 else 1e-4)
    if isinstance(model, nn.Module):  # a copy in the checked dtype, in eval mode
        model = copy.deepcopy(model).to(dtype).eval()
    generator = torch.Generator().manual_seed(seed)
    batch = batch.clone()
    for key in batch.keys():
        if isinstance(batch[key], Tensor) and batch[key].is_floating_point():
            batch[key] = batch[key].to(dtype)
    dim = batch.pos.shape[1]
    errors: dict[str, float] = {name: 0.0 for name in outputs}
    with torch.no_grad():
        reference = model(batch)
        for trial in range(trials):
            device = batch.pos.device  # draws stay on the CPU generator, so every device sees the same g
            g = Transform(
                rotation=random_orthogonal(dim, generator, dtype, reflect=trial % 2 == 1).to(device),
                translation=(torch.randn(dim, generator=generator, dtype=torch.float64) * 3).to(device, dtype),
                permutation=torch.randperm(batch.num_nodes, generator=generator).to(device),
            )
            moved = model(g.apply_to_batch(batch))
            for name, kind in outputs.items():
                expected = g.apply_to_output(reference[name], kind)
                scale = expected.abs().max().clamp_min(1e-12)
                errors[name] = max(errors[name], float((moved[name] - expected).abs().max() / scale))
    report = EquivarianceReport(errors)
    name, worst = report.worst()
    if worst > rtol:
        raise AssertionError(f"not equivariant: output '{name}' differs by {worst:.3e} (relative) > {rtol:.0e}; all: {errors}")
    return report


# -- periodic boxes ---------------------------------------------------------------------------------
#
# In a periodic box the symmetries are those of the torus, not E(n): re-imaging a particle by a box
# vector (the same physical state), translating by any vector and wrapping back into the box, and
# the cube's 48 rotations and reflections about the box centre (box sides equal). A generic
# rotation is NOT one of them: it does not map the box lattice onto itself. Positions are compared
# modulo the box (the minimum image of the difference), and every transformed state goes through
# the real graph builder, so the check covers the periodic radius graph and the model together.

PERIODIC_SYMMETRIES = ("re-imaging", "translation+wrap", "cube+translation+wrap")
CONTROL = "generic rotation"


def cube_symmetry(dim: int, generator: torch.Generator, dtype: torch.dtype) -> Tensor:
    """A random element of the hyperoctahedral group (the cube's 48 symmetries in 3D): a signed
    permutation matrix, a reflection half of the time."""
    perm = torch.randperm(dim, generator=generator)
    signs = torch.randint(0, 2, (dim,), generator=generator).to(dtype) * 2 - 1
    return torch.eye(dim, dtype=dtype)[perm] * signs[:, None]


@dataclass(frozen=True)
class PeriodicTransform:
    """x -> centre + R (x + L n - centre) + t, then wrapped into the box if ``wrap``; nodes permuted.

    rotation R [D, D] (a cube symmetry, or a generic rotation for the control), translation t [D],
    images n [N, D] integer box vectors per (original) node, permutation [N] (new node k is old node
    permutation[k]). ``centre`` is each graph's box centre.
    """

    name: str
    rotation: Tensor
    translation: Tensor
    images: Tensor
    permutation: Tensor
    wrap: bool

    def _map(self, x: Tensor, graph: Tensor, box: Tensor, images: Tensor | None, wrap: bool) -> Tensor:
        lower, upper = box[..., 0].to(x.dtype).index_select(0, graph), box[..., 1].to(x.dtype).index_select(0, graph)
        length, centre = upper - lower, (lower + upper) / 2
        if images is not None:
            x = x + images * length
        x = (x - centre) @ self.rotation.T + centre + self.translation
        return lower + torch.remainder(x - lower, length) if wrap else x

    def apply_to_batch(self, batch: Batch) -> Batch:
        """The moved state (no edges: the graph builder makes them). Shapes: N nodes -> N nodes."""
        graph = batch.batch[self.permutation]
        images = self.images[self.permutation].to(batch.pos.dtype)
        return _move_batch(batch, self.permutation, lambda x: self._map(x, graph, batch.box, images, self.wrap),
                           lambda v: v @ self.rotation.T)

    def apply_to_output(self, value: Tensor, kind: OutputKind, batch: Batch) -> Tensor:
        """What the output of the moved state must be (positions up to box vectors).

        Shapes: node outputs [N, *]; position/vector/invariant outputs graph-major [B * M, *] or [B, M, *]
        """
        if kind.startswith("node_"):
            value, graph = value[self.permutation], batch.batch[self.permutation]
        else:
            graph = _graph_major(value, batch)
        if kind.endswith("position"):
            flat = value.reshape(-1, value.shape[-1])
            return self._map(flat, graph, batch.box, None, wrap=False).view(value.shape)
        if kind.endswith("vector"):
            return value @ self.rotation.T
        return value


def _graph_major(value: Tensor, batch: Batch) -> Tensor:
    """The graph of each row of a per-graph output ([B * M, D] graph-major or [B, M, D])."""
    rows = value.reshape(-1, value.shape[-1]).shape[0]
    num_graphs = int(batch.num_graphs)
    assert rows % num_graphs == 0, f"a per-graph output needs B * M rows, got {rows} for B = {num_graphs}"
    return torch.arange(num_graphs, device=value.device).repeat_interleave(rows // num_graphs)


def periodic_transforms(batch: Batch, trials: int = 2, seed: int = 0) -> list[PeriodicTransform]:
    """``trials`` draws of each periodic symmetry (PERIODIC_SYMMETRIES), then the control: a
    generic rotation about the box centre with wrap, which is NOT a symmetry. Deterministic in
    ``seed`` (every process of a graph-parallel group draws the same ones).

    Shapes: batch N nodes, D axes -> transforms with images [N, D], permutation [N]
    """
    generator = torch.Generator().manual_seed(seed)
    n, dim = batch.pos.shape
    dtype, device = batch.pos.dtype, batch.pos.device
    side = float((batch.box[..., 1] - batch.box[..., 0]).max())
    eye, no_images = torch.eye(dim, dtype=dtype), torch.zeros(n, dim, dtype=torch.long)
    out = []
    for trial in range(trials):
        def draw(name: str, rotation: Tensor, translate: bool, images: Tensor, wrap: bool) -> PeriodicTransform:
            t = (torch.rand(dim, generator=generator, dtype=torch.float64) - 0.5) * 3 * side if translate else torch.zeros(dim)
            return PeriodicTransform(name, rotation.to(device), t.to(device, dtype), images.to(device),
                                     torch.randperm(n, generator=generator).to(device), wrap)

        out.append(draw("re-imaging", eye, False, torch.randint(-2, 3, (n, dim), generator=generator), False))
        out.append(draw("translation+wrap", eye, True, no_images, True))
        cube = cube_symmetry(dim, generator, dtype)
        if trial == 0:  # one pure reflection of an axis, so det = -1 is surely among the draws
            cube = torch.diag(torch.tensor([-1.0] + [1.0] * (dim - 1), dtype=dtype))[torch.randperm(dim, generator=generator)]
        out.append(draw("cube+translation+wrap", cube, True, torch.randint(-1, 2, (n, dim), generator=generator), True))
    generic = random_orthogonal(dim, generator, dtype, reflect=False)
    out.append(PeriodicTransform(CONTROL, generic.to(device), torch.zeros(dim, dtype=dtype, device=device), no_images.to(device),
                                 torch.randperm(n, generator=generator).to(device), True))
    return out


def periodic_error(moved: Tensor, expected: Tensor, kind: OutputKind, batch: Batch, permutation: Tensor) -> float:
    """Positions: the largest |minimum image of (moved - expected)| (absolute, box units); other
    outputs: max |diff| / max |expected| (relative)."""
    if not kind.endswith("position"):
        return float((moved - expected).abs().max() / expected.abs().max().clamp_min(1e-12))
    graph = batch.batch[permutation] if kind.startswith("node_") else _graph_major(moved, batch)
    length = (batch.box[..., 1] - batch.box[..., 0]).to(moved.dtype).index_select(0, graph)
    diff = (moved - expected).reshape(-1, moved.shape[-1])
    return float((diff - length * torch.round(diff / length)).abs().max())


@dataclass
class PeriodicReport:
    errors: dict[str, dict[str, float]]  # symmetry -> output -> largest error over its draws
    control: float  # the largest error under a generic rotation (must be large)

    def worst(self) -> tuple[str, str, float]:
        return max(((s, o, e) for s, per in self.errors.items() for o, e in per.items()), key=lambda t: t[2])


def compare_periodic(
    reference: dict[str, Tensor], moved: list[dict[str, Tensor]], transforms: list[PeriodicTransform],
    outputs: dict[str, OutputKind], batch: Batch, *, tol: float, control_min: float = 1e-3,
) -> PeriodicReport:
    """Compare each transform's outputs with the transformed reference; raise AssertionError when a
    symmetry's error exceeds ``tol`` or when the control (generic rotation) does NOT differ by
    more than ``control_min`` (then the check could not have failed)."""
    errors: dict[str, dict[str, float]] = {}
    control = 0.0
    for g, out in zip(transforms, moved, strict=True):
        for name, kind in outputs.items():
            error = periodic_error(out[name], g.apply_to_output(reference[name], kind, batch), kind, batch, g.permutation)
            if g.name == CONTROL:
                control = max(control, error)
            else:
                per = errors.setdefault(g.name, {})
                per[name] = max(per.get(name, 0.0), error)
    report = PeriodicReport(errors, control)
    symmetry, name, worst = report.worst()
    if worst > tol:
        raise AssertionError(f"not periodic-equivariant: output '{name}' under {symmetry} differs by {worst:.3e} > "
                             f"{tol:.0e}; all: {errors}")
    if control < control_min:
        raise AssertionError(f"a generic rotation, which is no symmetry of a periodic box, changed the outputs by only "
                             f"{control:.3e} (<= {control_min:.0e}): the check cannot tell this model from one that ignores the box")
    return report


def check_periodic_equivariance(
    model: Callable[[Batch], dict[str, Tensor]],
    batch: Batch,
    outputs: dict[str, OutputKind],
    *,
    graph: Callable[[Batch], Batch],
    dtype: torch.dtype = torch.float64,
    trials: int = 2,
    seed: int = 0,
    tol: float | None = None,
    control_min: float = 1e-3,
) -> PeriodicReport:
    """``model(graph(g . batch))`` against ``g . model(graph(batch))`` for the periodic symmetries g
    of :func:`periodic_transforms`, positions compared modulo the box; AssertionError when an error
    exceeds ``tol`` (default 1e-10 in float64, 1e-5 in float32) or when the generic-rotation control
    stays below ``control_min``. ``batch``: a state with ``box`` [B, D, 2] and no edges; ``graph``:
    the graph builder (``periodic=True``). Float tensors of the batch, and a copy of the model when
    it is an nn.Module, are cast to ``dtype``."""
    tol = tol if tol is not None else (1e-10 if dtype == torch.float64 else 1e-5)
    if isinstance(model, nn.Module):
        model = copy.deepcopy(model).to(dtype).eval()
    batch = batch.clone()
    for key in batch.keys():
        if isinstance(batch[key], Tensor) and batch[key].is_floating_point():
            batch[key] = batch[key].to(dtype)
    transforms = periodic_transforms(batch, trials, seed)
    with torch.no_grad():
        reference = model(graph(batch.clone()))
        moved = [model(graph(g.apply_to_batch(batch))) for g in transforms]
    return compare_periodic(reference, moved, transforms, outputs, batch, tol=tol, control_min=control_min)


def periodic_batch(dtype: torch.dtype = torch.float64, seed: int = 0, node_features: int = 2) -> Batch:
    """Two graphs in cubic periodic boxes, [-1, 3]^3 (side 4.0, 24 particles) and [0.5, 4]^3
    (side 3.5, 17 particles), half of each within 0.6 of the lower corner on every axis (wrapped),
    so that with radius 1.5 most edges cross the boundary. pos, vel, h, node_attr, target, horizon,
    box; no edges."""
    from torch_geometric.data import Data

    generator = torch.Generator().manual_seed(seed)
    graphs = []
    for n, lower, side in ((24, -1.0, 4.0), (17, 0.5, 3.5)):
        near = n // 2
        offset = torch.cat([(torch.rand(near, 3, generator=generator, dtype=torch.float64) - 0.5) * 1.2,
                            torch.rand(n - near, 3, generator=generator, dtype=torch.float64) * side])
        pos = lower + torch.remainder(offset, side)
        graphs.append(Data(
            pos=pos, vel=torch.randn(n, 3, generator=generator, dtype=torch.float64) * 0.3,
            h=torch.randn(n, node_features, generator=generator, dtype=torch.float64),
            node_attr=torch.randn(n, 1, generator=generator, dtype=torch.float64),
            target=pos + torch.randn(n, 3, generator=generator, dtype=torch.float64) * 0.1,
            horizon=torch.tensor([1.0], dtype=torch.float64),
            box=torch.tensor([[[lower, lower + side]] * 3], dtype=torch.float64), num_nodes=n,
        ))
    batch = Batch.from_data_list(graphs)
    return batch.apply(lambda x: x.to(dtype) if x.is_floating_point() else x)
