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
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch_geometric.data import Batch

from scaleq.data.dataset import TrajectoryDataset
from scaleq.graph.builder import GraphBuilder
from scaleq.models.baselines import ConstantVelocity, LinearDynamics
from scaleq.sample_options import first_input_frame
from scaleq.store.format import StoreError

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
    first = first_input_frame(spec.velocity)
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


def linear_baseline(time: float | None = None) -> tuple[nn.Module, str]:
    """The baseline a rollout is compared with, and its name: the papers' Linear x + v * horizon * t
    with the run's fitted t (``summary.json``'s ``linear_time``, see ``scaleq.run``), or
    constant-velocity extrapolation x + v * horizon where no fitted t exists yet (during training)."""
    if time is None:
        return ConstantVelocity(), "constant velocity"
    return LinearDynamics(time=time), f"Linear (t = {time:.3f})"
