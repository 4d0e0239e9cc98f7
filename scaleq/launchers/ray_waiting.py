"""What a Ray Train job waits for after it lost a node: one line in the job's log.

When a worker's node dies, Ray Train (``FailureConfig(max_failures)``) shuts the worker group down
and starts a new one from the last reported checkpoint. If the cluster can no longer place the
group (``STRICT_SPREAD`` with fewer nodes than workers, or too few CPUs/GPUs left), Ray waits for
the placement group and says only ``Attempting to start training worker group of size 2 with the
following resources: [{'CPU': 1.0}] * 2``, then, every RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S
(60 s), that the start timed out "waiting for 2 workers". :class:`SayWhatItWaitsFor`, a callback
of Ray Train's controller, prints instead, each time the group is restarted or rescheduled, what
is missing compared with the nodes alive now::

    scaleq: restarting the worker group, to continue from the last checkpoint: waiting for 1 more
    node with CPU 1 to place the worker group (2 workers with CPU 1 each, STRICT_SPREAD: one per
    node; alive: node1 (10.77.27.11) CPU 2)

The controller runs it inside Ray's controller actor, whose output Ray forwards to the job's log.
Imports Ray at module level: import it only where Ray is used (:func:`scaleq.launchers.ray.make_trainer`).
"""

from __future__ import annotations

import math
from typing import Any

import ray
from ray.train.v2._internal.execution.callback import ControllerCallback
from ray.train.v2._internal.execution.controller.state import ReschedulingState, RestartingState


def missing(workers: int, per_worker: dict[str, float], strategy: str, nodes: list[dict[str, Any]]) -> str | None:
    """What the alive ``nodes`` (``ray.nodes()`` rows, their total resources) lack to place
    ``workers`` workers of ``per_worker`` resources each with ``strategy``; None if nothing."""
    need = {k: v for k, v in per_worker.items() if v > 0}

    def resources(times: int) -> str:
        return ", ".join(f"{k} {v * times:g}" for k, v in need.items())

    # how many workers each alive node can hold
    holds = [min((math.floor(n.get("Resources", {}).get(k, 0) / v) for k, v in need.items()), default=workers)
             for n in nodes if n.get("Alive")]
    if strategy == "STRICT_SPREAD":
        short = workers - sum(1 for h in holds if h >= 1)
        return f"{short} more node{'s' if short > 1 else ''} with {resources(1)}" if short > 0 else None
    if strategy == "STRICT_PACK":
        return None if any(h >= workers for h in holds) else f"a node with {resources(workers)}"
    short = workers - sum(holds)
    return f"a node with {resources(short)}" if short > 0 else None


def describe(nodes: list[dict[str, Any]]) -> str:
    alive = [n for n in nodes if n.get("Alive")]
    return "; ".join(
        f"{n.get('NodeManagerHostname', '?')} ({n.get('NodeManagerAddress', '?')}) "
        + ", ".join(f"{k} {v:g}" for k, v in sorted(n.get("Resources", {}).items()) if k in ("CPU", "GPU"))
        for n in alive
    ) or "none"


class SayWhatItWaitsFor(ControllerCallback):
    """Prints, whenever Ray Train restarts or reschedules the worker group, what the cluster lacks
    to place it (or that it has room, and the group is being started)."""

    def __init__(self, workers: int, per_worker: dict[str, float], strategy: str) -> None:
        self.workers, self.per_worker, self.strategy = workers, dict(per_worker), strategy

    def after_controller_state_update(self, previous_state: Any, current_state: Any) -> None:
        if not isinstance(current_state, RestartingState | ReschedulingState):
            return
        nodes = ray.nodes()
        lacking = missing(self.workers, self.per_worker, self.strategy, nodes)
        wants = ", ".join(f"{k} {v:g}" for k, v in self.per_worker.items() if v > 0)
        group = f"{self.workers} workers with {wants} each, {self.strategy}"
        if self.strategy == "STRICT_SPREAD":
            group += ": one per node"
        what = (f"waiting for {lacking} to place the worker group" if lacking is not None
                else "the alive nodes can hold the worker group; starting it")
        print(f"scaleq: restarting the worker group, to continue from the last checkpoint: {what} ({group}; "
              f"alive: {describe(nodes)})", flush=True)
