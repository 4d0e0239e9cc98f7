"""Helpers for tests that run a model on every path of the message-passing block (plain torch,
chunked with recomputation, fused Triton kernel) and compare outputs and gradients."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch_geometric.data import Batch

from scaleq.nn import triton_edges

# model options of each path; the plain torch path (edge_chunk=0, kernel="torch") is the reference
PATHS: dict[str, dict[str, object]] = {
    "chunk1": {"edge_chunk": 1},
    "chunk5": {"edge_chunk": 5},
    "chunk-auto": {"edge_chunk": "auto"},  # sized from free memory: one chunk of every edge here
    "triton": {"kernel": "triton"},
    "triton-chunk5": {"kernel": "triton", "edge_chunk": 5},
}


def path_available(name: str, device: torch.device | str = "cpu") -> bool:
    """Triton paths need the triton package, and on a CPU its interpreter (TRITON_INTERPRET=1)."""
    return "triton" not in name or triton_edges.usable_on(torch.device(device))


def with_path(model: nn.Module, options: dict[str, object]) -> nn.Module:
    """A copy of ``model`` (same weights) whose message-passing blocks run with ``options``."""
    out = copy.deepcopy(model)
    for module in out.modules():
        for key, value in options.items():
            if hasattr(module, key) and key in ("edge_chunk", "kernel"):
                setattr(module, key, value)
    return out


def outputs_and_gradients(
    model: nn.Module, batch: Batch, loss: Callable[[dict[str, Tensor]], Tensor]
) -> tuple[dict[str, Tensor], list[Tensor]]:
    """Outputs of ``model(batch)`` and the gradients of ``loss(outputs)`` w.r.t. batch.pos, batch.h
    and every parameter (zeros where a parameter feeds nothing)."""
    batch = batch.clone()
    batch.pos = batch.pos.detach().requires_grad_()
    batch.h = batch.h.detach().requires_grad_()
    out = model(batch)
    inputs = [batch.pos, batch.h, *model.parameters()]
    grads = torch.autograd.grad(loss(out), inputs, allow_unused=True)
    grads = [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads)]
    return {k: v.detach() for k, v in out.items()}, grads


def assert_paths_agree(
    model: nn.Module,
    batch: Batch,
    options: dict[str, object],
    loss: Callable[[dict[str, Tensor]], Tensor],
    *,
    rtol: float,
    atol: float,
) -> None:
    """``model`` with ``options`` gives the outputs and gradients of the plain torch path."""
    reference = with_path(model, {"edge_chunk": 0, "kernel": "torch"})
    expected_out, expected_grads = outputs_and_gradients(reference, batch, loss)
    got_out, got_grads = outputs_and_gradients(with_path(model, options), batch, loss)
    for key in expected_out:
        torch.testing.assert_close(got_out[key], expected_out[key], rtol=rtol, atol=atol, msg=lambda m, k=key: f"{k}: {m}")
    for k, (a, b) in enumerate(zip(got_grads, expected_grads)):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m, k=k: f"gradient {k}: {m}")


def chunk_splits_a_receiver(edge_index: Tensor, chunk: int) -> bool:
    """Whether some boundary between chunks of ``chunk`` receiver-sorted edges falls inside one
    receiver's edges (the case the chunked path must sum across)."""
    target = torch.sort(edge_index[1]).values
    boundaries = torch.arange(chunk, target.numel(), chunk)
    return bool((target[boundaries - 1] == target[boundaries]).any())
