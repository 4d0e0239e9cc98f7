"""Metrics of a rollout over its horizon, against the truth and a baseline: position MSE per step;
for N-body stores the total energy (the simulator's own function and constants) and the drift of
energy, linear and angular momentum; for MD stores the RMSD after optimal superposition (Kabsch)
and the radius of gyration; the first step that leaves the box or turns NaN; a one-line summary,
a CSV and a plot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from scaleq.io import save_figure, write_rows
from scaleq.rollout.rollout import Reference, Rollout
from scaleq.sources.nbody import NBodyParams, energy

SUMMARY_STEPS = (1, 5, 10, 20)


def _segments(batch: Tensor) -> list[slice]:
    counts = torch.bincount(batch).tolist()
    bounds = np.cumsum([0, *counts])
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def position_mse(pred: Tensor, true: Tensor) -> Tensor:
    """Mean over nodes and axes at each step (NaN when any prediction is). Shapes: [K+1, N, D] -> [K+1]."""
    return (pred.double() - true.double()).pow(2).mean(dim=(1, 2))


def kabsch_rmsd(pred: Tensor, true: Tensor) -> Tensor:
    """RMSD after the optimal rotation (reflections excluded) and translation of ``pred`` onto
    ``true``, per frame (NaN for non-finite frames).

    Shapes:
        pred, true: [T, n, D] -> [T]
    """
    a = pred.double() - pred.double().mean(dim=1, keepdim=True)
    b = true.double() - true.double().mean(dim=1, keepdim=True)
    out = torch.full((a.shape[0],), math.nan, dtype=torch.float64)
    ok = torch.isfinite(a).all(dim=(1, 2)) & torch.isfinite(b).all(dim=(1, 2))
    if not ok.any():
        return out
    a, b = a[ok], b[ok]
    u, _, vh = torch.linalg.svd(a.transpose(1, 2) @ b)  # H = A^T B = U S V^T; R = V diag(1, .., d) U^T
    d = torch.sign(torch.linalg.det(vh.transpose(1, 2) @ u.transpose(1, 2)))
    fix = torch.ones(a.shape[0], a.shape[2], dtype=a.dtype)
    fix[:, -1] = d
    rotation = vh.transpose(1, 2) @ torch.diag_embed(fix) @ u.transpose(1, 2)  # [T, D, D]
    aligned = a @ rotation.transpose(1, 2)
    out[ok] = (aligned - b).pow(2).sum(-1).mean(-1).sqrt()
    return out


def radius_of_gyration(pos: Tensor) -> Tensor:
    """sqrt(mean |x - centroid|^2), unit masses. Shapes: [T, n, D] -> [T]."""
    x = pos.double()
    return (x - x.mean(dim=1, keepdim=True)).pow(2).sum(-1).mean(-1).sqrt()


def nbody_invariants(pos: Tensor, rate: Tensor, charges: Tensor, simulator: dict[str, Any]) -> dict[str, Tensor]:
    """Total energy (the simulator's own :func:`scaleq.sources.nbody.energy` and constants), linear
    and angular momentum (unit masses) of one trajectory at every frame.

    Shapes:
        pos, rate: [T, n, D], charges: [n] -> energy [T], momentum [T, D], angular [T, D'] (D' = 3
        for D = 3, 1 for D = 2, 0 otherwise)
    """
    params = NBodyParams(**simulator)
    x, v = pos.double().numpy(), rate.double().numpy()
    q = np.broadcast_to(charges.double().numpy(), x.shape[:2])
    total = torch.from_numpy(energy(x, v, q, params))
    momentum = rate.double().sum(dim=1)
    if pos.shape[-1] == 3:
        angular = torch.linalg.cross(pos.double(), rate.double(), dim=-1).sum(dim=1)
    elif pos.shape[-1] == 2:
        angular = (pos[..., 0] * rate[..., 1] - pos[..., 1] * rate[..., 0]).double().sum(dim=1, keepdim=True)
    else:
        angular = torch.zeros(pos.shape[0], 0, dtype=torch.float64)
    return {"energy": total, "momentum": momentum, "angular": angular}


def first_step(flags: Tensor) -> int | None:
    """The first step k >= 1 where ``flags`` [K+1] is true, else None."""
    hits = torch.nonzero(flags[1:]).flatten()
    return int(hits[0]) + 1 if hits.numel() else None


@dataclass
class HorizonMetrics:
    rows: list[dict[str, float]]  # one per step, means over trajectories
    first_nan: int | None  # first step any trajectory of the model's rollout turned non-finite
    first_exit: int | None  # first step any predicted particle left the store's box
    exits: int  # trajectories that left the box at some step


def horizon_metrics(ref: Reference, model: Rollout, baseline: Rollout | None = None) -> HorizonMetrics:
    """Per-step metrics of a rollout (and a baseline's) against the truth: position MSE; for
    N-body stores total energy and its drift |E_k - E_0|, and the drift of linear and angular
    momentum; for MD stores RMSD after optimal superposition and radius of gyration."""
    runs = {"model": model, **({"baseline": baseline} if baseline is not None else {})}
    steps = ref.steps
    columns: dict[str, Tensor] = {
        "step": torch.arange(steps + 1, dtype=torch.float64),
        "frame": ref.start_frame + ref.delta * torch.arange(steps + 1, dtype=torch.float64),
    }
    columns["time"] = columns["frame"] * ref.frame_dt
    for name, run in runs.items():
        columns[_col("mse", name)] = position_mse(run.pos, ref.pos)
    segments = _segments(ref.batch)
    if ref.store_kind == "nbody" and ref.charges is not None and ref.simulator is not None:
        sources = {"true": (ref.pos, ref.rate if ref.rate is not None else model.rate)}
        sources.update({name: (run.pos, run.rate) for name, run in runs.items()})
        for name, (pos, rate) in sources.items():
            per = [nbody_invariants(pos[:, s], rate[:, s], ref.charges[s], ref.simulator) for s in segments]
            energies = torch.stack([p["energy"] for p in per])  # [S, K+1]
            columns[_col("energy", name)] = energies.mean(0)
            columns[_col("energy_drift", name)] = (energies - energies[:, :1]).abs().mean(0)
            for key, label in (("momentum", "momentum_drift"), ("angular", "angular_momentum_drift")):
                values = torch.stack([p[key] for p in per])  # [S, K+1, D]
                columns[_col(label, name)] = (values - values[:, :1]).norm(dim=-1).mean(0)
    if ref.store_kind == "md":
        columns["rg_true"] = torch.stack([radius_of_gyration(ref.pos[:, s]) for s in segments]).mean(0)
        for name, run in runs.items():
            columns[_col("rmsd", name)] = torch.stack([kabsch_rmsd(run.pos[:, s], ref.pos[:, s])
                                                       for s in segments]).mean(0)
            columns[_col("rg", name)] = torch.stack([radius_of_gyration(run.pos[:, s]) for s in segments]).mean(0)
    rows = [{key: float(values[k]) for key, values in columns.items()} for k in range(steps + 1)]
    for row in rows:
        row["step"], row["frame"] = int(row["step"]), int(row["frame"])

    nan = ~torch.isfinite(model.pos).all(dim=(1, 2))
    first_exit, exits = None, 0
    if ref.bounds is not None:
        lo, hi = ref.bounds[:, 0], ref.bounds[:, 1]
        outside = ((model.pos.double() < lo) | (model.pos.double() > hi)).any(-1)  # [K+1, N]; NaN counts as inside
        per_traj = torch.stack([outside[:, s].any(-1) for s in segments], dim=1)  # [K+1, S]
        first_exit = first_step(per_traj.any(-1))
        exits = int(per_traj[1:].any(0).sum())
    return HorizonMetrics(rows, first_step(nan), first_exit, exits)


def _col(metric: str, run: str) -> str:
    return {"model": metric, "baseline": f"{metric}_baseline", "true": f"{metric}_true"}[run]


def summary_line(metrics: HorizonMetrics, *, name: str, baseline_name: str = "Linear") -> str:
    """One line: MSE at 1, 5, 10, 20 steps (those the horizon has), the baseline's, and the first
    step that left the box or turned NaN."""
    by_step = {row["step"]: row for row in metrics.rows}
    parts = []
    for k in SUMMARY_STEPS:
        if k in by_step:
            row = by_step[k]
            base = f" ({baseline_name} {row['mse_baseline']:.4g})" if "mse_baseline" in row else ""
            parts.append(f"@{k} {row['mse']:.4g}{base}")
    steps = max(by_step)
    if steps not in SUMMARY_STEPS:
        row = by_step[steps]
        base = f" ({baseline_name} {row['mse_baseline']:.4g})" if "mse_baseline" in row else ""
        parts.append(f"@{steps} {row['mse']:.4g}{base}")
    exit_text = "never" if metrics.first_exit is None else f"step {metrics.first_exit} ({metrics.exits} trajectories)"
    nan_text = "never" if metrics.first_nan is None else f"step {metrics.first_nan}"
    return (f"rollout MSE {name}: {', '.join(parts)}; left the box: {exit_text}; NaN: {nan_text}")


def write_metrics_csv(metrics: HorizonMetrics, path: Path) -> Path:
    write_rows(metrics.rows, path)
    return path


# -- plots ------------------------------------------------------------------------------------------


def plot_metrics(metrics: HorizonMetrics, png: Path, *, name: str, baseline_name: str = "Linear",
                 small: bool = False) -> Path:
    """Position MSE per step (model and baseline, log scale) and, when measured, the energy and
    momentum drift (N-body) or RMSD and radius of gyration (MD), against the truth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    rows = metrics.rows
    keys = rows[0].keys()
    panels: list[tuple[str, list[tuple[str, str]], bool]] = [
        ("position MSE", [("mse", name), ("mse_baseline", baseline_name)], True)]
    if not small and "energy_true" in keys:
        panels.append(("total energy", [("energy_true", "truth"), ("energy", name), ("energy_baseline", baseline_name)],
                       False))
        panels.append(("momentum drift |P_k - P_0|, |L_k - L_0|",
                       [("momentum_drift_true", "truth P"), ("momentum_drift", f"{name} P"),
                        ("momentum_drift_baseline", f"{baseline_name} P"),
                        ("angular_momentum_drift_true", "truth L"), ("angular_momentum_drift", f"{name} L"),
                        ("angular_momentum_drift_baseline", f"{baseline_name} L")], False))
    if not small and "rmsd" in keys:
        panels.append(("RMSD after superposition", [("rmsd", name), ("rmsd_baseline", baseline_name)], False))
        panels.append(("radius of gyration", [("rg_true", "truth"), ("rg", name), ("rg_baseline", baseline_name)], False))
    size = (3.6, 2.6) if small else (4.2 * len(panels), 3.4)
    fig, axes = plt.subplots(1, len(panels), figsize=size, squeeze=False)
    steps = [r["step"] for r in rows]
    for ax, (title, series, log) in zip(axes[0], panels):
        for key, label in series:
            if key in keys:
                values = [r[key] for r in rows]
                # one colour per run in every panel: truth black, model blue, baseline orange
                style = {"color": "k" if key.endswith("_true") else "C1" if key.endswith("_baseline") else "C0",
                         "linestyle": "--" if key.startswith("angular") else "-", "marker": ".", "label": label}
                first = 1 if log else 0  # step 0 has zero error: the log plot starts at step 1
                ax.plot(steps[first:], values[first:], **style)
        if log:
            ax.set_yscale("log")
        ax.set_xlabel(f"step (x {rows[1]['frame'] - rows[0]['frame'] if len(rows) > 1 else 1} frames)")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    png.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, png)
    return png
