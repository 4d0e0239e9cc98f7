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
        out = batch.clone()
        n = batch.num_nodes
        inverse = torch.empty_like(self.permutation)
        inverse[self.permutation] = torch.arange(n, device=self.permutation.device)
        for key in out.keys():
            value = out[key]
            if not isinstance(value, Tensor):
                continue
            if key in INDEX_FIELDS:
                out[key] = inverse[value]
            elif key in EDGE_FIELDS:
                continue
            elif value.dim() >= 1 and value.shape[0] == n and key not in ("ptr",):
                value = value[self.permutation]
                if key in POSITION_FIELDS:
                    value = value @ self.rotation.T + self.translation
                elif key in VECTOR_FIELDS:
                    value = value @ self.rotation.T
                out[key] = value
        return out

    def apply_to_output(self, value: Tensor, kind: OutputKind) -> Tensor:
        if kind.startswith("node_"):
            value = value[self.permutation]
        if kind.endswith("position"):
            return value @ self.rotation.T + self.translation
        if kind.endswith("vector"):
            return value @ self.rotation.T
        return value


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
