"""Plain PyTorch engine: one process (CPU or one GPU), or DistributedDataParallel over several ranks.

Several ranks come from torchrun / the deepspeed launcher (env vars) or from Ray Train (process
group already up); see :mod:`scaleq.distributed.process_group`. DDP averages gradients over
ranks, so with equal-sized shards (the N-body sets: equal batch sizes of equal-sized graphs) a
step equals one process's step on the whole batch. With ragged graphs each rank's loss is the
mean over its own nodes and the average of those means weights nodes slightly unevenly, as
every data-parallel trainer that averages per-rank losses does.

Under graph parallelism (R ranks per graph) each rank's loss carries the gradient of its share of
the group's loss; DDP's average over all R x P ranks is then R times too small, so
:meth:`TorchEngine.backward` scales by R and the step equals the single-process step on the
data-parallel groups' batches.

Gradient accumulation (A micro-batches per step, see :mod:`scaleq.distributed.accumulation`):
each micro-batch's loss is weighted 1 / (micro-batches in its window). Under DDP the forward and
backward of every micro-batch but the window's last run in ``no_sync()`` (:meth:`micro_batch`), so
gradients pile up locally and DDP all-reduces their sum once per optimizer step, in the last
backward; averaging is linear, so that equals averaging every micro-batch's gradient. Under graph
parallelism the halo exchange still runs in every backward (it carries a micro-batch's gradient
to the rank that owns the node, within the graph's group: part of computing the gradient, not of
averaging it), and the scale by R above applies to the window's sum as it did to one micro-batch.
"""

from __future__ import annotations

import contextlib
import gc
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from scaleq.digests import atomic_torch_save_with_digest
from scaleq.distributed.accumulation import AccumulationWindow
from scaleq.distributed.engine import Engine
from scaleq.distributed.peer_watch import PEER_TIMEOUT_S
from scaleq.distributed.process_group import join, launched_ranks, leave
from scaleq.safe_load import load_checkpoint_file


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but CUDA is not available here")
    if name == "cuda":
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device(name)


class TorchEngine(Engine):
    def __init__(
        self,
        *,
        device: str = "auto",
        precision: str = "fp32",
        grad_clip: float | None = None,
        gradient_accumulation: int = 1,
        graph_parallel: int = 1,
        socket_ifname: str | None = None,
        peer_timeout_s: float = PEER_TIMEOUT_S,
    ) -> None:
        self.device = pick_device(device, launched_ranks().local_rank)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        ranks, self._owns_group = join(self.device, socket_ifname, peer_timeout_s)
        self.rank, self.world_size = ranks.rank, ranks.world_size
        self.form_groups(graph_parallel)
        self.precision = precision
        self.grad_clip = grad_clip
        self.window = AccumulationWindow(gradient_accumulation)
        self._model: nn.Module | None = None
        self._wrapped: nn.Module | None = None
        self._optimizer: torch.optim.Optimizer | None = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def wrap(self, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> nn.Module:
        self._model = model.to(self.device)
        self._optimizer = optimizer
        if self.distributed:
            # Some parameters get no gradient (e.g. the last layer's feature update when only
            # coordinates are read out), hence find_unused_parameters.
            ids = [self.device.index] if self.device.type == "cuda" else None
            self._wrapped = DistributedDataParallel(self._model, device_ids=ids, find_unused_parameters=True)
        else:
            self._wrapped = self._model
        return self._wrapped

    @property
    def module(self) -> nn.Module:
        assert self._model is not None, "wrap() first"
        return self._model

    def micro_batch(self) -> contextlib.AbstractContextManager[None]:
        """``no_sync()`` around a micro-batch that does not close its window (DDP only)."""
        if isinstance(self._wrapped, DistributedDataParallel) and not self.window.closing:
            return self._wrapped.no_sync()
        return contextlib.nullcontext()

    def backward(self, loss: Tensor) -> None:
        scale = self.graph_parallel / self.window.length  # see the module docstring
        (loss * scale if scale != 1 else loss).backward()

    def step(self) -> bool:
        assert self._optimizer is not None, "wrap() with an optimizer first"
        if not self.window.advance():
            return False
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.grad_clip)
        self._optimizer.step()
        self._optimizer.zero_grad(set_to_none=True)
        return True

    def save(self, path: Path, extra: dict[str, Any]) -> None:
        """Rank 0 writes (every rank holds the same weights); the others wait for it."""
        self.window.require_boundary("save a checkpoint")
        if self.is_main:
            state = {"model": self.module.state_dict(), "extra": extra}
            if self._optimizer is not None:
                state["optimizer"] = self._optimizer.state_dict()
            atomic_torch_save_with_digest(state, path)
        self.barrier()

    def load(self, path: Path) -> dict[str, Any]:
        state = load_checkpoint_file(path, map_location=self.device)  # digest first; data only, never code
        self.module.load_state_dict(state["model"])
        if self._optimizer is not None and "optimizer" in state:
            self._optimizer.load_state_dict(state["optimizer"])
        return state["extra"]

    def all_reduce_sum(self, values: Tensor) -> Tensor:
        if not self.distributed:
            return values
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def broadcast_object(self, value: Any) -> Any:
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        # DDP's reducer holds the process group: freed after destroy_process_group, its gloo
        # destructor joins worker threads while holding the GIL, and a rank can hang at exit.
        self._wrapped = None
        gc.collect()
        if self._owns_group:
            leave()  # an error on its way out (close runs in a finally) stops the other ranks too
            self._owns_group = False
