import pytest
import torch

from scaleq.config import LossConfig
from scaleq.losses import mmd_virtual, position_mse, sample_per_graph, training_loss
from scaleq.testing.stores import random_batch

SIZES = (4, 11, 7, 25)  # mixed sizes: the first graph has fewer nodes than 3 * C
C = 3


def setup(seed=0):
    g = torch.Generator().manual_seed(seed)
    batch = torch.repeat_interleave(torch.arange(len(SIZES)), torch.tensor(SIZES))
    pos = torch.randn(len(batch), 3, generator=g, dtype=torch.float64)
    virtual = torch.randn(len(SIZES) * C, 3, generator=g, dtype=torch.float64)
    return pos, virtual, batch


def reference_mmd(pos, virtual, batch, chosen, sigma, kind):
    """The published per-graph loop, one graph at a time."""
    values = []
    for b in range(len(SIZES)):
        z = virtual[b * C : (b + 1) * C]
        x = pos[chosen & (batch == b)]
        d_vv, d_rv = torch.cdist(z, z), torch.cdist(x, z)
        if kind == "squared":
            d_vv, d_rv = d_vv**2, d_rv**2
        k_vv = torch.exp(-d_vv / (2 * sigma**2)).mean()
        k_rv = torch.exp(-d_rv / (2 * sigma**2)).mean()
        values.append(k_vv - 2 * k_rv)
    return torch.stack(values).mean()


def test_sample_takes_min_of_count_and_graph_size_per_graph():
    _, _, batch = setup()
    mask = sample_per_graph(batch, len(SIZES), 3 * C, torch.Generator().manual_seed(1))
    assert torch.bincount(batch[mask]).tolist() == [min(9, n) for n in SIZES]
    other = sample_per_graph(batch, len(SIZES), 3 * C, torch.Generator().manual_seed(2))
    assert not torch.equal(mask, other)


@pytest.mark.parametrize("kind", ["plain", "squared"])
@pytest.mark.parametrize("sigma", [1.0, 1.5])
def test_mmd_matches_a_per_graph_reference(kind, sigma):
    pos, virtual, batch = setup()
    chosen = sample_per_graph(batch, len(SIZES), 3 * C, torch.Generator().manual_seed(5))
    value = mmd_virtual(pos, virtual, batch, len(SIZES), sigma=sigma, kind=kind, generator=torch.Generator().manual_seed(5))
    expected = reference_mmd(pos.float(), virtual.float(), batch, chosen, sigma, kind)
    torch.testing.assert_close(value, expected)


def test_mmd_does_not_need_nodes_sorted_by_graph():
    pos, virtual, batch = setup()
    perm = torch.randperm(len(batch), generator=torch.Generator().manual_seed(0))
    everyone = 100  # every node sampled, so the value does not depend on the draw
    a = mmd_virtual(pos, virtual, batch, len(SIZES), sigma=1.0, samples_per_virtual=everyone)
    b = mmd_virtual(pos[perm], virtual, batch[perm], len(SIZES), sigma=1.0, samples_per_virtual=everyone)
    torch.testing.assert_close(a, b)


def test_mmd_gradient_is_finite_when_virtual_nodes_coincide():
    pos, virtual, batch = setup()
    virtual = virtual.view(len(SIZES), C, 3)[:, :1].expand(-1, C, -1).reshape(-1, 3).clone().requires_grad_(True)
    mmd_virtual(pos, virtual, batch, len(SIZES), sigma=1.0).backward()
    assert torch.isfinite(virtual.grad).all()


def test_training_loss_adds_weighted_mmd_and_reports_the_plain_mse():
    data = random_batch(num_graphs=3, nodes=(5, 12, 8))
    pred = data.target + 0.1
    virtual = torch.randn(3 * C, 3)
    out = {"pos": pred, "virtual_pos": virtual}
    loss, parts = training_loss(out, data, LossConfig())
    torch.testing.assert_close(loss, position_mse(pred, data.target))
    assert set(parts) == {"mse"}
    torch.manual_seed(0)
    loss, parts = training_loss(out, data, LossConfig(mmd_weight=0.5, mmd_sigma=1.5))
    torch.testing.assert_close(parts["mse"], position_mse(pred, data.target))
    torch.testing.assert_close(loss, parts["mse"] + 0.5 * parts["mmd"])
    with pytest.raises(ValueError, match="needs a model with virtual nodes"):
        training_loss({"pos": pred}, data, LossConfig(mmd_weight=0.5))
