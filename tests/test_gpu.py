"""Checks that need CUDA; they skip themselves elsewhere (CI has no GPU)."""

import pytest
import torch

from scaleq.data.graph import GraphBuilder
from scaleq.models import MODELS
from scaleq.testing.equivariance import check_equivariance
from scaleq.testing.stores import random_batch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def edge_set(edge_index):
    return set(map(tuple, edge_index.cpu().t().tolist()))


def test_radius_graph_on_the_device_matches_the_cpu():
    batch = random_batch(nodes=(50, 80, 60))
    builder = GraphBuilder(kind="radius", radius=1.0, max_num_neighbors=200)
    on_cpu = builder(batch.clone())
    on_gpu = builder(batch.clone().to("cuda"))
    assert on_gpu.edge_index.is_cuda
    assert edge_set(on_gpu.edge_index) == edge_set(on_cpu.edge_index)


@pytest.mark.parametrize("name", ["egnn", "fastegnn", "dusego"])
def test_models_run_on_the_device_in_bf16_and_stay_equivariant(name):
    torch.manual_seed(0)
    model = MODELS[name](in_node_features=2, in_edge_features=2).cuda()
    batch = GraphBuilder(kind="complete")(random_batch().to("cuda"))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(batch)["pos"]
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    check_equivariance(model, batch, {"pos": "node_position"}, dtype=torch.float32)
