"""DeepSpeed engine: ZeRO stages 0-3, bf16 autocast, accumulation, clipping, DeepSpeed checkpoints.

The DeepSpeed config is generated from ours (:func:`deepspeed_config`), so one YAML drives both
engines. The optimizer comes from that config (Adam or AdamW with train.lr and
train.weight_decay); the torch optimizer the loop offers to :meth:`DeepSpeedEngine.wrap` is
not used. It is torch's own Adam/AdamW (fused on CUDA), so nothing is compiled on first use
(:mod:`scaleq.distributed.deepspeed_ops` says which DeepSpeed ops remain and when). bf16 is
torch autocast inside DeepSpeed: weights, gradients and optimizer states stay fp32, and so do
the coordinates in the models.

Checkpoints are DeepSpeed's own (every rank writes its ZeRO shards) in ``<name>.ds/<tag>/``
next to a small pointer file ``<name>`` (e.g. ``checkpoints/last.pt``) that rank 0 writes
atomically after every rank has finished. The pointer is the commit: a crash while shards are
written leaves the previous pointer, which names the previous complete tag. DeepSpeed's own
``latest`` file is written the same way (tmp + rename), so its tools (zero_to_fp32.py) work.

Accumulation follows :mod:`scaleq.distributed.accumulation`, as the torch engine does: DeepSpeed
counts micro-steps across epochs and would carry an epoch's leftover micro-batches into the next
epoch's first step, so every micro-batch tells it whether it closes its window
(``set_gradient_accumulation_boundary``), and the epoch's short last window is stepped with each
micro-batch weighted 1 / (its length). DeepSpeed itself exchanges gradients at the boundary only
(ZeRO 0 and 1), or reduce-scatters them every backward (ZeRO 2 and 3 keep only their partition).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

# DeepSpeed guesses its accelerator on import and warns on every rank that it found no GPU; where
# torch sees none, say so (an explicit DS_ACCELERATOR is kept).
if not torch.cuda.is_available():
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
import deepspeed
import torch.distributed as dist
from torch import Tensor, nn

from scaleq.digests import atomic_torch_save_with_digest
from scaleq.distributed.accumulation import AccumulationWindow
from scaleq.distributed.deepspeed_checkpoint import POINTER_FORMAT, check_tag_files, record_tag_digests
from scaleq.distributed.deepspeed_ops import explain_op_build_failures, without_build_notices
from scaleq.distributed.engine import Engine
from scaleq.distributed.peer_watch import PEER_TIMEOUT_S
from scaleq.distributed.process_group import backend_for, join, launched_ranks, leave, single_process_env
from scaleq.distributed.torch_engine import pick_device
from scaleq.io import atomic_write_text
from scaleq.safe_load import load_checkpoint_file, safe_load


def deepspeed_config(
    *,
    micro_batch_size: int,
    zero_stage: int = 0,
    offload_optimizer: bool = False,
    gradient_accumulation: int = 1,
    grad_clip: float | None = None,
    precision: str = "fp32",
    optimizer: str = "adam",
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    device_type: str = "cpu",
) -> dict[str, Any]:
    """The DeepSpeed JSON config for our engine and train settings."""
    zero: dict[str, Any] = {"stage": zero_stage}
    if offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu"}
    params: dict[str, Any] = {
        "lr": lr,
        "weight_decay": weight_decay,
        "betas": [0.9, 0.999],
        "eps": 1e-8,
        # DeepSpeed's "Adam" means AdamW unless told otherwise; ours means Adam with L2 decay.
        "adam_w_mode": optimizer == "adamw",
    }
    if not offload_optimizer:
        # torch's own Adam/AdamW (its fused CUDA kernel ships compiled inside torch), never
        # DeepSpeed's FusedAdam, which DeepSpeed compiles on first use with nvcc from
        # TORCH_CUDA_ARCH_LIST: that needs a CUDA toolkit and fails on entries such as '9.0a'.
        # ZeRO 1-3 partition whatever torch optimizer they are given (torch.optim.Adam/AdamW are
        # on ZeRO's tested list); checkpoints hold its state_dict like any other.
        params["torch_adam"] = True
        params["fused" if device_type == "cuda" else "foreach"] = True
    # else DeepSpeed's CPU Adam: ZeRO-Offload refuses a torch optimizer, and CPU Adam is a C++ op
    # that DeepSpeed compiles on first use (see scaleq.distributed.deepspeed_ops)
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": gradient_accumulation,
        "gradient_clipping": float(grad_clip or 0.0),
        "optimizer": {"type": "AdamW" if optimizer == "adamw" else "Adam", "params": params},
        "zero_optimization": zero,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
    if precision == "bf16":
        config["torch_autocast"] = {"enabled": True, "dtype": "bfloat16"}
    return config


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


class DeepSpeedEngine(Engine):
    def __init__(
        self,
        *,
        micro_batch_size: int,
        device: str = "auto",
        precision: str = "fp32",
        grad_clip: float | None = None,
        gradient_accumulation: int = 1,
        zero_stage: int = 0,
        offload_optimizer: bool = False,
        optimizer: str = "adam",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        config_overrides: dict[str, Any] | None = None,
        graph_parallel: int = 1,
        socket_ifname: str | None = None,
        peer_timeout_s: float = PEER_TIMEOUT_S,
    ) -> None:
        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
        self._owns_group = not dist.is_initialized()
        if self._owns_group:
            single_process_env()  # a lone process still needs RANK/MASTER_* (else DeepSpeed looks for MPI)
        self.device = pick_device(device, launched_ranks().local_rank)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        # several launched ranks: our own group (the interface, the peer watch), which DeepSpeed reuses
        join(self.device, socket_ifname, peer_timeout_s)
        # Reuses an existing process group (Ray Train, torchrun + our own join) or makes one.
        # the CPU accelerator compiles (or loads) its shm op here
        with explain_op_build_failures(self.device.type), without_build_notices():
            deepspeed.init_distributed(dist_backend=backend_for(self.device), verbose=False)
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.form_groups(graph_parallel)
        self.precision = precision
        self.window = AccumulationWindow(gradient_accumulation)
        self.config = _merge(
            deepspeed_config(
                micro_batch_size=micro_batch_size, zero_stage=zero_stage, offload_optimizer=offload_optimizer,
                gradient_accumulation=gradient_accumulation, grad_clip=grad_clip, precision=precision,
                optimizer=optimizer, lr=lr, weight_decay=weight_decay, device_type=self.device.type,
            ),
            config_overrides or {},
        )
        self._ds: Any = None

    def wrap(self, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> nn.Module:
        params = [p for p in model.parameters() if p.requires_grad]
        with explain_op_build_failures(self.device.type):
            self._ds, _, _, _ = deepspeed.initialize(model=model.to(self.device), model_parameters=params, config=self.config)
        return self._ds

    @property
    def module(self) -> nn.Module:
        assert self._ds is not None, "wrap() first"
        return self._ds.module

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self._ds.optimizer

    def micro_batch(self) -> contextlib.AbstractContextManager[None]:
        # DeepSpeed wants the boundary known before the forward pass (ZeRO-3 gathers parameters there)
        self._mark_boundary()
        return contextlib.nullcontext()

    def backward(self, loss: Tensor) -> None:
        # Graph parallelism: each rank holds its share of the group's gradient and DeepSpeed
        # averages over all R x P ranks, so scale by R (as TorchEngine.backward). DeepSpeed divides
        # by gradient_accumulation_steps (A); the epoch's short last window of k needs 1 / k.
        self._mark_boundary()
        scale = self.graph_parallel * self.window.size / self.window.length
        self._ds.backward(loss * scale if scale != 1 else loss)

    def step(self) -> bool:
        """DeepSpeed steps the optimizer only at the boundary set in backward, clips and zeroes."""
        self._ds.step()
        return self.window.advance()

    def _mark_boundary(self) -> None:
        self._ds.set_gradient_accumulation_boundary(self.window.closing)

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        """Nothing to add: the DeepSpeed engine's forward applies its torch_autocast section."""
        return contextlib.nullcontext()

    # -- checkpoints -------------------------------------------------------------------------
    def save(self, path: Path, extra: dict[str, Any]) -> None:
        """Every rank writes its shards into a fresh tag; then rank 0 commits the pointer."""
        self.window.require_boundary("save a checkpoint")
        folder = path.with_name(path.name + ".ds")
        previous = self._pointer(path)
        tag = f"step{self._ds.global_steps}-{os.urandom(3).hex()}"
        tag = self.broadcast_object(tag)
        self._ds.save_checkpoint(str(folder), tag=tag, client_state={"extra": extra}, save_latest=False)
        self.barrier()
        record_tag_digests(folder / tag, self.rank, self.world_size)  # each rank hashes its share
        self.barrier()
        if self.is_main:
            atomic_write_text(folder / "latest", tag)
            atomic_torch_save_with_digest({"format": POINTER_FORMAT, "folder": folder.name, "tag": tag}, path)
            if previous is not None and previous["tag"] != tag:
                shutil.rmtree(folder / previous["tag"], ignore_errors=True)
        self.barrier()

    def load(self, path: Path) -> dict[str, Any]:
        pointer = load_checkpoint_file(path) if path.exists() else None
        if not (isinstance(pointer, dict) and pointer.get("format") == POINTER_FORMAT):
            raise ValueError(f"{path}: not a DeepSpeed checkpoint pointer (written by engine.kind: torch?)")
        folder = path.parent / pointer["folder"]
        check_tag_files(folder / pointer["tag"])  # DeepSpeed unpickles with full pickle: data only past here
        loaded, client = self._ds.load_checkpoint(str(folder), tag=pointer["tag"])
        if loaded is None:
            raise FileNotFoundError(f"{folder / pointer['tag']}: DeepSpeed could not load this checkpoint")
        return client["extra"]

    @staticmethod
    def _pointer(path: Path) -> dict[str, Any] | None:
        if not path.exists():
            return None
        pointer = safe_load(path)
        return pointer if isinstance(pointer, dict) and pointer.get("format") == POINTER_FORMAT else None

    # -- collectives -------------------------------------------------------------------------
    def all_reduce_sum(self, values: Tensor) -> Tensor:
        if self.world_size == 1:
            return values
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def broadcast_object(self, value: Any) -> Any:
        if self.world_size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        if self._ds is not None:
            self._ds.destroy()
        if self._owns_group:
            leave()  # an error on its way out (close runs in a finally) stops the other ranks too
            self._owns_group = False

