"""Ray Train's torch process group, made over the interface that routes to rank 0's node.

Ray Train makes the process group itself, before the training function runs, so
:func:`scaleq.distributed.process_group.join` never gets to choose gloo's or NCCL's interface. Left
to itself gloo advertises the address the machine's hostname resolves to, a loopback address on a
Debian-style host (``127.0.1.1 hostname`` in /etc/hosts), and a worker on another node fails with
``Gloo connectFullMesh failed ... Connection refused``. This backend runs the same choice on every
worker first (GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME, or ``engine.socket_ifname``, win), then lets
Ray make the group as it always does.

Imports Ray at module level: import it only where Ray is used (:func:`scaleq.launchers.ray.make_trainer`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ray.train._internal.utils import get_address_and_port
from ray.train.torch import TorchConfig
from ray.train.torch.config import _TorchBackend

from scaleq.distributed.process_group import use_interface


def _choose(backend: str, master_addr: str, configured: str | None) -> str:
    """On one worker: pick and export the interface (each node's first worker prints it)."""
    import ray.train

    context = ray.train.get_context()
    return use_interface(backend, master_addr, spans_nodes=context.get_local_world_size() < context.get_world_size(),
                         configured=configured, announce=context.get_local_rank() == 0)


class RoutedTorchBackend(_TorchBackend):
    """Ray's torch backend, with the interface chosen on every worker before the group is made."""

    def on_start(self, worker_group: Any, backend_config: RoutedTorchConfig) -> None:
        backend = backend_config.backend
        if backend is None:  # as Ray decides it
            backend = "nccl" if worker_group.get_resources_per_worker().get("GPU", 0) > 0 else "gloo"
        master_addr, _ = worker_group.execute_single(0, get_address_and_port)  # rank 0's node address
        worker_group.execute(_choose, backend="nccl" if "nccl" in backend else "gloo", master_addr=master_addr,
                             configured=backend_config.socket_ifname)
        super().on_start(worker_group, backend_config)


@dataclass
class RoutedTorchConfig(TorchConfig):
    """``TorchConfig`` whose process group talks over the routed interface (``socket_ifname`` overrides)."""

    socket_ifname: str | None = None

    @property
    def backend_cls(self) -> type[_TorchBackend]:
        return RoutedTorchBackend
