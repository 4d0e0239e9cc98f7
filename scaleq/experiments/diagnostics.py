"""Per-layer diagnostics of deep equivariant stacks: Dirichlet energy and gradient norms.

Dirichlet energy (DuSEGO paper, Eq. 4 and Fig. 4, with the definition of GraphCON, its ref. [47]):

    E(X^n) = 1/v sum_i sum_{j in N(i)} |X_i^n - X_j^n|^2

for node features H^n and coordinates X^n after layer n (v nodes; over a batch, all edges of all
graphs divided by all nodes). Over-smoothing is E decaying exponentially in n (Eq. 4). On
coordinates E is invariant under rotations, reflections and translations.

Gradient norms: for each layer n, the norm of the loss gradient with respect to the layer's
parameters (absent when weights are shared) and with respect to the states X^n and H^n it
produces; vanishing or exploding gradients show as norms that fall or grow with distance from
the output.

Per-layer states come from a model's ``trajectory(batch)`` when it has one (DuSEGO), or from
forward hooks on ``model.embed`` and every module of ``model.layers`` that returns (h, pos)
(EGNN). Nothing here changes the models.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch_geometric.data import Batch

from scaleq.io import save_figure
from scaleq.losses import position_mse

LayerStates = list[tuple[Tensor, Tensor]]  # (X^n [N, D], H^n [N, H]) for n = 0..L


def dirichlet_energy(values: Tensor, edge_index: Tensor, num_nodes: int) -> Tensor:
    """E = 1/v sum over directed edges (j -> i) of |v_i - v_j|^2.

    Shapes:
        values: [N, *], edge_index: [2, E] -> []
    """
    source, target = edge_index
    diff = (values[target] - values[source]).reshape(edge_index.shape[1], -1)
    return diff.pow(2).sum() / num_nodes


def layer_states(model: nn.Module, batch: Batch) -> tuple[LayerStates, dict[str, Tensor]]:
    """States (X^n, H^n), n = 0..L, and the model's output, from ONE forward pass (graph kept)."""
    if hasattr(model, "trajectory"):
        states = model.trajectory(batch)
        x, h = states[-1][0], states[-1][1]
        return [(s[0], s[1]) for s in states], {"pos": x, "h": h}
    if not (hasattr(model, "embed") and hasattr(model, "layers")):
        raise TypeError(f"{type(model).__name__} has neither trajectory() nor embed + layers to hook")
    embedded: list[Tensor] = []
    outputs: list[tuple[Tensor, Tensor]] = []
    handles = [model.embed.register_forward_hook(lambda _m, _i, out: embedded.append(out))]
    handles += [layer.register_forward_hook(lambda _m, _i, out: outputs.append(out)) for layer in model.layers]
    try:
        result = model(batch)
    finally:
        for handle in handles:
            handle.remove()
    h0 = embedded[0].to(batch.pos.dtype)
    return [(batch.pos, h0)] + [(pos, h) for h, pos in outputs], result


def dirichlet_energies(model: nn.Module, batch: Batch) -> list[dict[str, float]]:
    """E(H^n) and E(X^n) for n = 0..L on one batch."""
    with torch.no_grad():
        states, _ = layer_states(model, batch)
    return [
        {"layer": n, "energy_h": float(dirichlet_energy(h, batch.edge_index, batch.num_nodes)),
         "energy_x": float(dirichlet_energy(x, batch.edge_index, batch.num_nodes))}
        for n, (x, h) in enumerate(states)
    ]


def gradient_norms(model: nn.Module, batch: Batch) -> list[dict[str, float]]:
    """|dL/dtheta_n|, |dL/dX^n| and |dL/dH^n| per layer n for the position MSE L on one batch."""
    model.zero_grad(set_to_none=True)
    states, output = layer_states(model, batch)
    loss = position_mse(output["pos"], batch.target)
    tensors = [t for state in states for t in state]
    tracked = [t for t in tensors if t.requires_grad]  # X^0 = the input positions is not
    found = iter(torch.autograd.grad(loss, tracked, allow_unused=True, retain_graph=True))
    grads = [next(found) if t.requires_grad else None for t in tensors]
    loss.backward()
    layers = list(model.layers) if hasattr(model, "layers") else []
    per_step = len(layers) == len(states) - 1  # one module per layer (not shared weights)
    rows = []
    for n in range(len(states)):
        gx, gh = grads[2 * n], grads[2 * n + 1]
        row = {"layer": n, "grad_x": _norm(gx) if n else math.nan, "grad_h": _norm(gh), "grad_params": math.nan}
        if per_step and n >= 1:
            row["grad_params"] = _norm_of([p.grad for p in layers[n - 1].parameters()])
        rows.append(row)
    model.zero_grad(set_to_none=True)
    return rows


def _norm(t: Tensor | None) -> float:
    return 0.0 if t is None else float(t.detach().double().norm())


def _norm_of(tensors: Sequence[Tensor | None]) -> float:
    return math.sqrt(sum(_norm(t) ** 2 for t in tensors))


# -- output ---------------------------------------------------------------------------------------


def plot_per_layer(rows: list[dict[str, Any]], keys: Sequence[tuple[str, str]], png: Path, title: str = "") -> None:
    """One panel per (column, label) in ``keys``: that column against layer, one line per
    (model, stage) in the rows, log scale (the paper's Fig. 4 for the energies)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 4), squeeze=False)
    series = list(dict.fromkeys((r["model"], r.get("stage", "")) for r in rows))
    colours = {m: f"C{i}" for i, m in enumerate(dict.fromkeys(m for m, _ in series))}  # one per model
    for ax, (key, label) in zip(axes[0], keys):
        for model, stage in series:
            pts = [(r["layer"], r[key]) for r in rows if (r["model"], r.get("stage", "")) == (model, stage)
                   and math.isfinite(r[key]) and r[key] > 0]
            if pts:
                ax.plot(*zip(*pts), marker=".", label=f"{model} {stage}".strip(), color=colours[model],
                        linestyle="--" if stage == "trained" else "-")
        ax.set_xlabel("layer n")
        ax.set_ylabel(label)
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    save_figure(fig, png)
