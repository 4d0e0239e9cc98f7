"""The only package that imports torch.distributed, deepspeed or ray."""

from scaleq.distributed.engine import Engine
from scaleq.distributed.torch_engine import TorchEngine

__all__ = ["Engine", "TorchEngine", "make_engine"]


def make_engine(kind: str, **options: object) -> Engine:
    """The engine named by ``engine.kind`` in the config."""
    if kind == "torch":
        return TorchEngine(**options)  # type: ignore[arg-type]
    raise ValueError(f"unknown engine kind {kind!r}")
