"""Plain PyTorch engine: one process (CPU or one GPU)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from scaleq.distributed.engine import Engine
from scaleq.train.checkpoint import atomic_torch_save


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but CUDA is not available here")
    return torch.device(name)


class TorchEngine(Engine):
    def __init__(self, *, device: str = "auto", precision: str = "fp32", grad_clip: float | None = None) -> None:
        self.device = pick_device(device)
        self.precision = precision
        self.grad_clip = grad_clip
        self._model: nn.Module | None = None
        self._optimizer: torch.optim.Optimizer | None = None

    def wrap(self, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> nn.Module:
        self._model = model.to(self.device)
        self._optimizer = optimizer
        return self._model

    @property
    def module(self) -> nn.Module:
        assert self._model is not None, "wrap() first"
        return self._model

    def backward(self, loss: Tensor) -> None:
        loss.backward()

    def step(self) -> None:
        assert self._optimizer is not None, "wrap() with an optimizer first"
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.grad_clip)
        self._optimizer.step()
        self._optimizer.zero_grad(set_to_none=True)

    def save(self, path: Path, extra: dict[str, Any]) -> None:
        state = {"model": self.module.state_dict(), "extra": extra}
        if self._optimizer is not None:
            state["optimizer"] = self._optimizer.state_dict()
        atomic_torch_save(state, path)

    def load(self, path: Path) -> dict[str, Any]:
        state = torch.load(path, map_location=self.device, weights_only=False)
        self.module.load_state_dict(state["model"])
        if self._optimizer is not None and "optimizer" in state:
            self._optimizer.load_state_dict(state["optimizer"])
        return state["extra"]
