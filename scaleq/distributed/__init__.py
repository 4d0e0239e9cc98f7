"""Engines (plain torch, DDP, DeepSpeed), graph parallelism and rank start-up. With
``scaleq.launchers`` above it, the only product code that imports torch.distributed, deepspeed or
ray (the tests' multi-rank helpers in tests/support/ do too)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from scaleq.distributed.engine import Engine
from scaleq.distributed.torch_engine import TorchEngine
from scaleq.extras import require

if TYPE_CHECKING:
    from scaleq.config import Config

__all__ = ["Engine", "TorchEngine", "engine_from_config", "make_engine"]


def make_engine(kind: str, **options: object) -> Engine:
    """The engine named by ``engine.kind`` in the config."""
    if kind == "torch":
        return TorchEngine(**options)  # type: ignore[arg-type]
    if kind == "deepspeed":
        require("deepspeed", "engine.kind: deepspeed")
        from scaleq.distributed.deepspeed_engine import DeepSpeedEngine  # imports deepspeed: only when asked

        return DeepSpeedEngine(**options)  # type: ignore[arg-type]
    raise ValueError(f"unknown engine kind {kind!r}")


def engine_from_config(config: Config, device: str | None = None) -> Engine:
    """The engine ``config.engine`` asks for, on ``device`` (default: ``config.train.device``)."""
    train, engine = config.train, config.engine
    options: dict[str, object] = {
        "device": device or train.device,
        "precision": train.precision,
        "grad_clip": train.grad_clip,
        "gradient_accumulation": engine.gradient_accumulation,
        "graph_parallel": engine.graph_parallel,
        "socket_ifname": engine.socket_ifname,
        "peer_timeout_s": engine.peer_timeout_s,
    }
    if engine.kind == "deepspeed":
        options.update(
            zero_stage=engine.zero_stage,
            offload_optimizer=engine.offload_optimizer,
            optimizer=train.optimizer,
            lr=train.lr,
            weight_decay=train.weight_decay,
            micro_batch_size=config.data.batch_size,
        )
    return make_engine(engine.kind, **options)
