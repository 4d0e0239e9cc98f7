import pytest
import torch

from scaleq.data.graph import GraphBuilder
from scaleq.models import EGNN
from scaleq.testing.equivariance import check_equivariance
from scaleq.testing.stores import random_batch


def make_batch():
    return GraphBuilder(kind="complete")(random_batch())


def make_model(**kwargs):
    torch.manual_seed(0)
    model = EGNN(in_node_features=2, in_edge_features=2, hidden=16, layers=3, **kwargs)
    # the published coordinate head starts at gain 0.001; scale it up so the check sees real updates
    for layer in model.layers:
        torch.nn.init.normal_(layer.phi_x[-1].weight, std=0.3)
    return model


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("velocity", [True, False])
def test_egnn_is_equivariant(dtype, velocity):
    report = check_equivariance(make_model(velocity=velocity), make_batch(), {"pos": "node_position"}, dtype=dtype)
    assert report.errors["pos"] < (1e-9 if dtype == torch.float64 else 1e-4)


def test_check_catches_a_model_that_is_not_equivariant():
    def broken(batch):
        return {"pos": batch.pos + torch.tensor([1.0, 0.0, 0.0], dtype=batch.pos.dtype) * batch.pos[:, :1]}

    with pytest.raises(AssertionError, match="not equivariant"):
        check_equivariance(broken, make_batch(), {"pos": "node_position"})


def test_gradient_checkpointing_gives_the_same_gradients():
    batch = make_batch()
    grads = []
    for every in (0, 1, 2):
        model = make_model(gradient_checkpointing=every)
        loss = (model(batch)["pos"] - batch.target).pow(2).mean()
        loss.backward()
        # the last layer's feature update feeds nothing (only coordinates are returned): no gradient
        grads.append(torch.cat([torch.zeros(p.numel()) if p.grad is None else p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])
    torch.testing.assert_close(grads[0], grads[2])


def test_bf16_autocast_keeps_coordinates_fp32():
    model = make_model()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(make_batch())["pos"]
    assert out.dtype == torch.float32
