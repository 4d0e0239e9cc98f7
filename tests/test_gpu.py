"""Checks that need CUDA skip themselves elsewhere (CI has no GPU); the bf16 equivariance check
also runs on the CPU, under CPU autocast, so its logic is exercised everywhere."""

import pytest
import torch

from scaleq.graph.builder import GraphBuilder
from scaleq.models import MODELS
from scaleq.testing.equivariance import check_equivariance
from tests.support.stores import random_batch

MODEL_NAMES = ["egnn", "fastegnn", "dusego", "eghn"]
# Under bf16 autocast the invariant MLPs run in bf16; coordinates stay fp32. A rotated or permuted
# input can round a feature to the neighbouring bf16 value (relative 2^-8), so the tolerance is
# looser than fp32's 1e-4, and still far below what a non-equivariant update gives (order 1).
BF16_RTOL = 5e-3


def edge_set(edge_index):
    return set(map(tuple, edge_index.cpu().t().tolist()))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_radius_graph_on_the_device_matches_the_cpu():
    batch = random_batch(nodes=(50, 80, 60))
    builder = GraphBuilder(kind="radius", radius=1.0, max_num_neighbors=200)
    on_cpu = builder(batch.clone())
    on_gpu = builder(batch.clone().to("cuda"))
    assert on_gpu.edge_index.is_cuda
    assert edge_set(on_gpu.edge_index) == edge_set(on_cpu.edge_index)


def check_bf16_equivariance(name: str, device: str) -> None:
    """Run the model under bf16 autocast on ``device`` and check equivariance of what it returns
    under that same autocast (not an fp32 pass outside it)."""
    torch.manual_seed(0)
    model = MODELS[name](in_node_features=2, in_edge_features=2).to(device).eval()
    batch = GraphBuilder(kind="complete", local="knn", local_k=2)(random_batch().to(device))
    linear_dtypes = set()
    first_linear = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
    first_linear.register_forward_hook(lambda module, args, out: linear_dtypes.add(out.dtype))

    def in_bf16(b):
        with torch.autocast(device, dtype=torch.bfloat16):
            return model(b)

    out = in_bf16(batch)["pos"]
    assert linear_dtypes == {torch.bfloat16}  # autocast is on: the MLPs ran in bf16
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert (out - batch.pos).abs().max() > 1e-2  # the model moves the nodes
    check_equivariance(in_bf16, batch, {"pos": "node_position"}, dtype=torch.float32, rtol=BF16_RTOL)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_models_stay_equivariant_under_cpu_bf16_autocast(name):
    check_bf16_equivariance(name, "cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_models_stay_equivariant_under_cuda_bf16_autocast(name):
    check_bf16_equivariance(name, "cuda")
