"""Autoregressive rollouts: a trained model applied to its own predictions, measured over the horizon.

Start from the store's frame t0 of some trajectories (batched into one PyG batch), predict the
frame t0 + delta, feed it back as the next input, and repeat K times. At every step the graph is
rebuilt on the predicted positions by the run's own GraphBuilder (radius graph, edge dropping,
local graph), so the model sees exactly what training showed it, on its own output.

The input velocity is the one the run was trained with (``data.velocity``), estimated from the
rolled-out positions: a quadratic through the last three positions (delta frames apart; at the
first step the store's frames t0 - delta, t0 and the prediction, or a straight line when t0 -
delta does not exist) is evaluated as the dataset would have: its derivative per unit time for
'store' velocities, p(t) - p(t - 1) for 'backward' and p(t + 1) - p(t) for 'forward'
differences. The estimate is exact for motion with constant acceleration; with delta = 1 the
'backward' estimate is exactly the backward difference of the rolled-out frames. A
forward-difference model cannot see the frame after the one it predicted (that frame is the
next prediction), so its velocity is the forward difference extrapolated from the quadratic. The
invariant |v| in ``h`` follows the new velocity; the static features stay.

The first input (positions, velocity, features, bonds) is the dataset's own sample at t0, so the
first step equals what ``evaluate`` scores when t0 is the run's ``data.input_frame``.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn
from torch_geometric.data import Batch

from scaleq.data.dataset import TrajectoryDataset
from scaleq.data.graph import GraphBuilder
from scaleq.data.nbody import NBodyParams, energy
from scaleq.data.store import StoreError
from scaleq.eval.report import write_rows
from scaleq.models.baselines import LinearDynamics

if TYPE_CHECKING:
    from scaleq.train.trainer import Trainer

SUMMARY_STEPS = (1, 5, 10, 20)


# -- the rollout ------------------------------------------------------------------------------------


@dataclass
class Reference:
    """The true trajectories a rollout is compared with, in the batch's node order.

    Shapes: pos [K+1, N, D] (frames t0 + k delta), rate [K+1, N, D] stored velocities per unit
    time or None, before [N, D] frame t0 - delta or None, batch [N] trajectory of each node.
    """

    start: Batch  # the dataset's samples at t0, one graph per trajectory (CPU)
    pos: Tensor
    rate: Tensor | None
    before: Tensor | None
    batch: Tensor
    trajectories: list[int]
    start_frame: int
    delta: int
    velocity: str
    frame_dt: float  # time between stored frames
    store_kind: str
    charges: Tensor | None  # [N] N-body charges (for the energy), else None
    bounds: Tensor | None  # [D, 2] the store's box, else None
    simulator: dict[str, Any] | None  # N-body simulator constants (attrs.extra["simulator"])

    @property
    def steps(self) -> int:
        return self.pos.shape[0] - 1


@dataclass
class Rollout:
    """What a model did. Shapes: pos [K+1, N, D] (step 0 is the start; NaN once a trajectory
    turned non-finite), rate [K+1, N, D] the velocity per unit time the rollout assumed, labels
    [K+1, N] the cluster of each node (hierarchical models) or None."""

    pos: Tensor
    rate: Tensor
    labels: Tensor | None


def first_start_frame(velocity: str) -> int:
    """The earliest frame a sample can start at: backward differences need the frame before."""
    return 1 if velocity == "backward" else 0


def check_trajectories(dataset: TrajectoryDataset, trajectories: Sequence[int]) -> None:
    """StoreError (one line) unless ``trajectories`` is a non-empty list of the store's trajectory ids."""
    store = dataset.store
    if not trajectories:
        raise StoreError(f"{store.path}: no trajectories asked for")
    for s in trajectories:
        if not 0 <= s < store.num_trajectories:
            raise StoreError(f"{store.path}: trajectory {s} asked for; the store has {store.num_trajectories} (0.."
                             f"{store.num_trajectories - 1})")


def max_steps(dataset: TrajectoryDataset, trajectories: Sequence[int], start_frame: int) -> int:
    """How many steps of ``delta`` frames fit in every one of ``trajectories`` from ``start_frame``."""
    check_trajectories(dataset, trajectories)
    last = min(dataset.store.num_frames(s) for s in trajectories) - 1
    return max((last - start_frame) // dataset.spec.delta, 0)


def reference(dataset: TrajectoryDataset, trajectories: Sequence[int], start_frame: int, steps: int) -> Reference:
    """The start batch and the true frames for a rollout of ``steps`` from ``start_frame``.

    Raises StoreError (one line naming the store and what is missing) when a trajectory does not
    exist or is too short.
    """
    store, spec = dataset.store, dataset.spec
    where = str(store.path)
    check_trajectories(dataset, trajectories)
    first = first_start_frame(spec.velocity)
    if start_frame < first:
        raise StoreError(f"{where}: start frame {start_frame} with {spec.velocity} velocities; the first possible "
                         f"start frame is {first}")
    if steps < 1:
        raise StoreError(f"{where}: steps must be >= 1, got {steps}")
    need = start_frame + steps * spec.delta  # >= start_frame + 1: covers the forward difference at t0 too
    for s in trajectories:
        if store.num_frames(s) - 1 < need:
            fit = max_steps(dataset, trajectories, start_frame)
            raise StoreError(
                f"{where}: trajectory {s} has {store.num_frames(s)} frames; {steps} steps of delta {spec.delta} "
                f"from frame {start_frame} need frames up to {start_frame + steps * spec.delta} "
                f"(at most {fit} steps fit: ask fewer steps or an earlier start frame)"
            )
    starts = copy.copy(dataset)  # the dataset's own samples (features, scaling, bonds) at t0
    starts.index = np.array([[s, start_frame] for s in trajectories], dtype=np.int64)
    start = Batch.from_data_list([starts[i] for i in range(len(trajectories))])

    frames = [start_frame + k * spec.delta for k in range(steps + 1)]
    pos = torch.cat([torch.from_numpy(store.frames(s, frames)) for s in trajectories], dim=1)
    rate = None
    if store.has_velocities:
        rate = torch.cat([torch.from_numpy(store.frames(s, frames, "velocities")) for s in trajectories], dim=1)
    before = None
    if start_frame - spec.delta >= 0:
        before = torch.cat([torch.from_numpy(store.frames(s, [start_frame - spec.delta])[0]) for s in trajectories])
    attrs = store.attrs
    charges = None
    if attrs.kind == "nbody" and "charge" in attrs.feature_names:
        column = attrs.feature_names.index("charge")
        charges = torch.cat([torch.from_numpy(store.node_features(s)[:, column].copy()) for s in trajectories])
    bounds = torch.tensor(attrs.bounds, dtype=torch.float64) if attrs.bounds is not None else None
    return Reference(
        start=start, pos=pos, rate=rate, before=before, batch=start.batch.clone(), trajectories=list(trajectories),
        start_frame=start_frame, delta=spec.delta, velocity=spec.velocity, frame_dt=float(attrs.dt),
        store_kind=attrs.kind, charges=charges, bounds=bounds, simulator=attrs.extra.get("simulator"),
    )


def velocity_estimate(newest: Tensor, previous: Tensor, older: Tensor | None, *, delta: int, velocity: str,
                      frame_dt: float) -> tuple[Tensor, Tensor]:
    """(input velocity in the run's units, velocity per unit time) at the newest of positions
    ``delta`` frames apart, from the quadratic through them (a line when ``older`` is None).

    Shapes:
        newest, previous, older: [N, D] -> ([N, D], [N, D])
    """
    if older is None:
        slope, curvature = (newest - previous) / delta, torch.zeros_like(newest)
    else:  # p(s) = newest + slope s + curvature s^2, s in frames; p(-delta) = previous, p(-2 delta) = older
        slope = (3 * newest - 4 * previous + older) / (2 * delta)
        curvature = (newest - 2 * previous + older) / (2 * delta**2)
    rate = slope / frame_dt
    if velocity == "store":
        return rate, rate
    if velocity == "backward":
        return slope - curvature, rate
    if velocity == "forward":
        return slope + curvature, rate
    raise ValueError(f"velocity must be 'store', 'backward' or 'forward', got {velocity!r}")


@torch.no_grad()
def rollout(model: nn.Module, ref: Reference, graph: GraphBuilder, *, device: torch.device | str = "cpu",
            autocast: Callable[[], contextlib.AbstractContextManager[Any]] | None = None) -> Rollout:
    """Apply ``model`` ``ref.steps`` times from ``ref.start``, all trajectories in one batch.

    A trajectory whose prediction turns non-finite is frozen (the model keeps seeing its last
    finite state, so the other trajectories of the batch are unaffected) and reported as NaN from
    that step on.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    batch = ref.start.clone().to(device)
    node_graph = batch.batch
    num_graphs = batch.num_graphs
    feature_tail = batch.h[:, 1:]  # h = [|v|, static features]: only |v| changes along a rollout
    start_rate = ref.rate[0] if ref.rate is not None else batch.vel.cpu() / (1.0 if ref.velocity == "store"
                                                                            else ref.frame_dt)
    positions, rates, labels = [batch.pos.cpu()], [start_rate.to(batch.pos.dtype)], []
    older = ref.before.to(device, batch.pos.dtype) if ref.before is not None else None
    alive = torch.ones(num_graphs, dtype=torch.bool, device=device)
    for _ in range(ref.steps):
        batch = graph(batch, training=False)
        with autocast() if autocast is not None else contextlib.nullcontext():
            output = model(batch)
        new = output["pos"].to(batch.pos.dtype)
        bad = torch.zeros(num_graphs, dtype=torch.long, device=device)
        alive &= bad.index_add_(0, node_graph, (~torch.isfinite(new).all(-1)).long()) == 0
        keep = alive[node_graph].unsqueeze(-1)
        new = torch.where(keep, new, batch.pos)
        vel, rate = velocity_estimate(new, batch.pos, older, delta=ref.delta, velocity=ref.velocity,
                                      frame_dt=ref.frame_dt)
        vel = torch.where(keep, vel, batch.vel)
        older = batch.pos
        batch.pos, batch.vel = new, vel
        batch.h = torch.cat([vel.norm(dim=-1, keepdim=True).to(feature_tail.dtype), feature_tail], dim=-1)
        dead = ~keep.cpu()
        positions.append(new.cpu().masked_fill(dead, math.nan))
        rates.append(rate.cpu().masked_fill(dead, math.nan))
        if "assignments" in output:
            labels.append(output["assignments"].argmax(-1).cpu())
    model.train(was_training)
    if labels:
        labels.append(labels[-1])  # clusters of the last input frame; the last frame keeps them
    return Rollout(pos=torch.stack(positions), rate=torch.stack(rates), labels=torch.stack(labels) if labels else None)


# -- metrics over the horizon -----------------------------------------------------------------------


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
    """Total energy (the simulator's own :func:`scaleq.data.nbody.energy` and constants), linear
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

    from scaleq.eval.diagnostics import save_figure

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


def linear_baseline() -> nn.Module:
    """The baseline every rollout is compared with: constant-velocity extrapolation x + v * horizon
    (the fixed form; ``scaleq.models.baselines``)."""
    return LinearDynamics()


# -- during training ----------------------------------------------------------------------------------


def rollout_during_training(trainer: Trainer, epoch: int, tensorboard: Any | None, steps: int = 20) -> None:
    """The end-of-epoch hook of ``train.rollout_every``: roll the model out on validation
    trajectory 0 from its earliest start frame (up to ``steps`` steps), and on rank 0 write
    ``rollouts/epoch_<E>.csv`` and a small ``rollouts/epoch_<E>.png`` (MSE over the horizon,
    model against the Linear baseline) and TensorBoard scalars (rollout/mse_step_k) and the figure.
    Every rank runs the model (a sharded engine needs all of them); nothing is trained."""
    dataset = trainer.eval_loaders["valid"].dataset
    start = first_start_frame(dataset.spec.velocity)
    horizon = min(steps, max_steps(dataset, [0], start))
    if horizon < 1:
        return
    ref = reference(dataset, [0], start, horizon)
    engine = trainer.engine
    model_run = rollout(trainer.model, ref, trainer.graph, device=engine.device, autocast=engine.autocast)
    base_run = rollout(linear_baseline(), ref, trainer.graph, device=engine.device)
    if not engine.is_main:
        return
    metrics = horizon_metrics(ref, model_run, base_run)
    folder = trainer.run_dir / "rollouts"
    write_metrics_csv(metrics, folder / f"epoch_{epoch:04d}.csv")
    png = plot_metrics(metrics, folder / f"epoch_{epoch:04d}.png", name=trainer.config.model.name, small=True)
    if tensorboard is not None:
        for row in metrics.rows[1:]:
            if row["step"] in SUMMARY_STEPS or row["step"] == horizon:
                tensorboard.add_scalar(f"rollout/mse_step_{row['step']}", row["mse"], epoch)
        import matplotlib.image

        image = matplotlib.image.imread(png)[..., :3]
        tensorboard.add_image("rollout/valid_0", image, epoch, dataformats="HWC")
