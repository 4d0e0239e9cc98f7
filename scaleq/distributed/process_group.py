"""Which rank this process is, from its launcher, and the process group that joins the ranks.

torchrun and the deepspeed launcher set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT;
Ray Train creates the process group itself before the training function starts. Both end here:
after :func:`join`, ``torch.distributed`` is initialised whenever there is more than one rank.
"""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from scaleq.distributed.interfaces import IFNAME_VARS, choose_interface, interface_addresses
from scaleq.distributed.peer_watch import PEER_TIMEOUT_S, finish_watch, start_watch


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_ranks() -> Ranks:
    """This process's place: from an existing process group, else from the launcher's env vars."""
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size(), local)
    return Ranks(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")), local)


def backend_for(device: torch.device) -> str:
    """nccl between GPUs, gloo on the CPU."""
    return "nccl" if device.type == "cuda" else "gloo"


def spans_nodes(ranks: Ranks) -> bool:
    """Whether the ranks live on several machines, as far as the launcher says: this node's rank
    count, LOCAL_WORLD_SIZE (torchrun, Ray Train) or LOCAL_SIZE (the deepspeed launcher, which sets
    no LOCAL_WORLD_SIZE), below the world size; unknown means one machine."""
    local = os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("LOCAL_SIZE")
    return local is not None and int(local) < ranks.world_size


def join(device: torch.device, socket_ifname: str | None = None,
         peer_timeout_s: float = PEER_TIMEOUT_S) -> tuple[Ranks, bool]:
    """Initialise the default process group when launched with several ranks.

    The ranks talk over the interface that routes to MASTER_ADDR (:mod:`.interfaces`; the config
    key ``socket_ifname`` or GLOO_SOCKET_IFNAME/NCCL_SOCKET_IFNAME override it), and a rank that
    fails stops the others (:mod:`.peer_watch`). Returns the ranks and whether this call created
    the group (then the caller ends it with :func:`leave`).
    """
    ranks = launched_ranks()
    if not ranks.distributed or dist.is_initialized():
        return ranks, False
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(
            f"WORLD_SIZE={ranks.world_size} but {', '.join(missing)} is not set: start several ranks with "
            "torchrun, the deepspeed launcher or Ray (launch/train.py --launcher ray)"
        )
    backend = backend_for(device)
    interface = use_interface(backend, os.environ["MASTER_ADDR"], spans_nodes=spans_nodes(ranks),
                              configured=socket_ifname, announce=ranks.local_rank == 0)
    timeout = timedelta(minutes=30)  # torch's default; a lost peer is caught by the watch long before
    store, _, _ = next(dist.rendezvous("env://", ranks.rank, ranks.world_size, timeout=timeout))
    store.set_timeout(timeout)
    address = (interface_addresses().get(interface) or ["?"])[0]
    watch = start_watch(ranks.rank, ranks.world_size, address, peer_timeout_s)
    try:
        dist.init_process_group(backend=backend, store=dist.PrefixStore("default_pg", store), rank=ranks.rank,
                                world_size=ranks.world_size, timeout=timeout)
    except BaseException as err:
        watch.report_failure(err)
        raise
    return ranks, True


def use_interface(backend: str, master_addr: str, *, spans_nodes: bool, configured: str | None,
                  announce: bool) -> str:
    """Choose the interface to ``master_addr`` (:func:`.interfaces.choose_interface`) and put it in
    GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME, which gloo / NCCL read when a process group is made;
    ``announce``: print the choice (one line per node, from its first rank)."""
    interface, why = choose_interface(backend, master_addr, spans_nodes=spans_nodes, configured=configured,
                                      environ=dict(os.environ))
    os.environ[IFNAME_VARS[backend]] = interface
    if announce:
        print(f"{backend} on {socket.gethostname()}: interface {interface} ({why})", flush=True)
    return interface


def leave() -> None:
    """End this rank's part in the process group :func:`join` made. Called in a ``finally``: an
    error on its way out is reported to the other ranks (which then stop), else the rank is done."""
    err = sys.exc_info()[1]
    # an exception every rank raises together (a preemption) is no failure of this rank
    finish_watch(None if getattr(err, "stops_all_ranks", False) else err)
    if dist.is_initialized():
        dist.destroy_process_group()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def single_process_env() -> None:
    """The env vars a lone rank needs where a library insists on a process group (DeepSpeed)."""
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))


def graph_parallel_group(ranks: Ranks, graph_parallel: int) -> Any:
    """The graph-parallel group of this rank: ``graph_parallel`` consecutive ranks (so, with ranks
    numbered node by node as torchrun, the deepspeed launcher and Ray's PACK placement do, a
    group sits inside one node and its halo exchange stays on the fast intra-node links).

    Every rank creates every group (``new_group`` is collective), always as a group of its own,
    never the default group: DDP reduces gradients on the default group while the halo exchange
    runs inside the same backward pass. None when ``graph_parallel`` is 1.
    """
    if graph_parallel < 1 or ranks.world_size % graph_parallel:
        raise ValueError(
            f"engine.graph_parallel = {graph_parallel} must be >= 1 and divide the number of ranks "
            f"({ranks.world_size}): ranks = graph_parallel x data-parallel groups"
        )
    if graph_parallel == 1:
        return None
    mine = None
    for first in range(0, ranks.world_size, graph_parallel):
        group = dist.new_group(list(range(first, first + graph_parallel)))
        if first <= ranks.rank < first + graph_parallel:
            mine = group
    return mine


def host_group(device: torch.device, world_size: int) -> Any:
    """A gloo group over all ranks for small host-side collectives, where the default group is NCCL
    (CUDA ranks); None where the default group already is gloo, or there is one rank."""
    if world_size == 1 or backend_for(device) == "gloo":
        return None
    return dist.new_group(backend="gloo")
